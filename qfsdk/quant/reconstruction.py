"""Learned weight rounding with activation quantization in the loop (AdaRound, Nagel et al. 2020), a PTQ step.

Nearest rounding minimises each weight's own error, not the layer's output error. Layer by layer
in forward order, this step learns for every weight whether it rounds down or up from
``floor(w / step)``: a soft rounding ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``,
started at the nearest-rounding fraction, minimises the layer's output error, while a regulariser
``sum(1 - |2 h - 1|^beta)`` (beta annealed from 20 to 2 after a warm-up) drives every ``h`` to 0 or 1.

The layer's input is what the quantized model feeds it (every upstream layer already rounded, its
own input quantizer on); the target is the float layer's output on the float model's input. So
each layer also absorbs the error that reaches it (AdaRound's asymmetric reconstruction). With
``ranges`` the layer's input quantizer learns its clipping range jointly (the LSQ gradient).
The result is the weight quantizer's fixed ``step`` and ``rounding``, which the export writes as
int8 codes. Run it after ``ranges``:
``calibrate(model, data, algorithm=["ranges", "reconstruct"])``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from qfsdk.errors import ConfigError
from qfsdk.progress import progress_bar

from .algorithms import CalibrationRun, register_algorithm
from .capture import layer_inputs, quantized_layers_in_order
from .graph import traced_graph
from .modules import ActQuantizer, WeightQuantizer, bypassed

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch: h reaches 0 and 1 exactly
BETA_START, BETA_END = 20.0, 2.0


@dataclass
class ReconstructionOptions:
    """``iterations`` per layer on random ``batch_size`` images, Adam at ``learning_rate``;
    ``regularization``: weight of the rounding regulariser, off for the first ``warmup`` share of the
    iterations; ``ranges``: the layer's input quantizer learns its range too."""

    iterations: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-2
    regularization: float = 0.01
    warmup: float = 0.2
    ranges: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"reconstruct: {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("learning_rate", "regularization"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"reconstruct: {name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.warmup, (int, float)) or not 0 <= self.warmup < 1:
            raise ConfigError(f"reconstruct: warmup must be in [0, 1), got {self.warmup!r}")


def soft_rounding(v: torch.Tensor) -> torch.Tensor:
    """h(V): the rectified sigmoid, in [0, 1] with both ends reachable."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """V with h(V) equal to ``fraction`` (the nearest-rounding start)."""
    fraction = fraction.clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (fraction - GAMMA) - 1)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """sum(1 - |2h - 1|^beta): 0 when every h is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def _beta(iteration: int, options: ReconstructionOptions) -> float | None:
    """The regulariser's exponent at ``iteration``; None during the warm-up."""
    start = int(options.warmup * options.iterations)
    if iteration < start:
        return None
    progress = (iteration - start) / max(1, options.iterations - start)
    return BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * progress))


def output_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels, averaged over images and positions."""
    return (output - target).pow(2).sum(1).mean()


class _LearnedRange:
    """The input quantizer's range as ``gain`` times the calibrated one while learning; fixed on ``finish``."""

    def __init__(self, quantizer: ActQuantizer):
        self.quantizer = quantizer
        self.low, self.high = quantizer.x_min.clone(), quantizer.x_max.clone()
        self.gain = nn.Parameter(torch.ones(()))

    def apply(self) -> None:
        self.quantizer.x_min = self.low * self.gain
        self.quantizer.x_max = self.high * self.gain

    def finish(self) -> None:
        gain = float(self.gain.detach().clamp_min(1e-3))
        self.quantizer.x_min, self.quantizer.x_max = self.low.clone(), self.high.clone()
        self.quantizer.set_range(float(self.low) * gain, float(self.high) * gain)


def reconstruct_layer(layer: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                      options: ReconstructionOptions) -> tuple[float, float]:
    """Learn ``layer``'s weight rounding (and its input range) so that ``layer(inputs)`` approaches
    ``target``; fixes them in its weight quantizer. Returns the error (nearest, learned)."""
    quantizer: WeightQuantizer = layer.weight_quantizer
    weight = layer.weight.detach()
    quantizer.set_step(quantizer.step_size(weight))
    scaled = weight / quantizer.step
    v = nn.Parameter(_initial_v(scaled - torch.floor(scaled)))
    learned_range = None
    if options.ranges and isinstance(layer.input_quantizer, ActQuantizer) and bool(layer.input_quantizer.has_range):
        learned_range = _LearnedRange(layer.input_quantizer)
    parameters = [v] + ([learned_range.gain] if learned_range else [])
    optimizer = torch.optim.Adam(parameters, lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    requires_grad = [p.requires_grad for p in layer.parameters()]
    for p in layer.parameters():
        p.requires_grad_(False)

    def error(rounding: torch.Tensor, batch: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        quantizer.rounding = rounding
        if learned_range:
            learned_range.apply()
        return output_error(layer(inputs[batch]), target[batch])

    try:
        with torch.no_grad():
            nearest = float(error(torch.round(scaled) - torch.floor(scaled)))
        for iteration in range(options.iterations):
            batch = torch.randint(len(inputs), (min(options.batch_size, len(inputs)),), generator=generator)
            h = soft_rounding(v)
            loss = error(h, batch)
            beta = _beta(iteration, options)
            if beta is not None:
                loss = loss + options.regularization * rounding_regularizer(h, beta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if learned_range:
            learned_range.finish()
        quantizer.rounding = None
        quantizer.set_rounding((soft_rounding(v.detach()) >= 0.5).to(torch.int8))
        with torch.no_grad():
            learned = float(output_error(layer(inputs), target))
    finally:
        for p, flag in zip(layer.parameters(), requires_grad):
            p.requires_grad_(flag)
    return nearest, learned


@register_algorithm("reconstruct", "learned weight rounding per layer (AdaRound), input ranges learned with it",
                    ReconstructionOptions)
def reconstruct(run: CalibrationRun, options: ReconstructionOptions | None) -> None:
    options = options or ReconstructionOptions()
    model, device = run.model, run.device
    batches = run.batch_list()
    layers = [(name, layer) for name, layer in quantized_layers_in_order(model, traced_graph(model, "reconstruct"))
              if layer.weight_quantizer.symmetric]
    errors = []
    for name, layer in progress_bar(layers, desc="reconstruct", disable=not run.progress):
        with bypassed(model):
            float_inputs = layer_inputs(model, layer, batches, device)
            with torch.no_grad():
                target = layer(float_inputs)
        del float_inputs
        inputs = layer_inputs(model, layer, batches, device)
        errors.append(reconstruct_layer(layer, inputs, target, options))
        log.debug("reconstruct %s: output error %.4g -> %.4g", name, *errors[-1])
    if errors:
        better = sum(learned < nearest for nearest, learned in errors)
        log.info("reconstruct: %d layers, output error lower than nearest rounding in %d", len(errors), better)
