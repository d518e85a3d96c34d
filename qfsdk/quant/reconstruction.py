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
With ``drop`` > 0 each element of the layer's quantized input takes its unquantized value with that
probability while learning (QDrop, Wei et al. 2022): the rounding is fit to a neighbourhood of the
activation noise rather than to one draw of it, which generalises from synthetic to real images.
With ``blocks`` the layers of each block (the smallest module holding two or more quantized layers
and taking one tensor: a residual block) learn their rounding together against the block's output
(BRECQ, Li et al. 2021), so that one layer's rounding can make up for another's; layers outside any
block, and every layer of a flat (imported) graph, are reconstructed alone.
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
    iterations; ``ranges``: the activation quantizers of the layer (its input) or block learn their ranges too; ``drop``: the share of
    input elements left unquantized while learning (QDrop; 0 quantizes them all); ``blocks``: the layers
    of a residual block learn together against the block's output (BRECQ)."""

    iterations: int = 400
    batch_size: int = 16
    learning_rate: float = 1e-2
    regularization: float = 0.01
    warmup: float = 0.2
    ranges: bool = True
    drop: float = 0.0
    blocks: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"reconstruct: {name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("learning_rate", "regularization"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"reconstruct: {name} must be a finite number >= 0, got {value!r}")
        for name in ("warmup", "drop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"reconstruct: {name} must be in [0, 1), got {value!r}")


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


class LearnedRange:
    """An activation quantizer's range as ``gain`` times the calibrated one while learning; fixed on ``finish``."""

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


def _dropping_quantization(quantizer: nn.Module, share: float, generator: torch.Generator):
    """A forward hook on ``quantizer``: each output element keeps its unquantized input with probability ``share``."""

    def hook(_module, args, output):
        keep = torch.rand(output.shape, generator=generator).to(output.device) < share
        return torch.where(keep, args[0], output)

    return quantizer.register_forward_hook(hook)


class _LearnedRounding:
    """One layer's soft rounding ``h(V)`` while learning; fixed as int8 up/down codes on ``finish``."""

    def __init__(self, layer: nn.Module):
        self.quantizer: WeightQuantizer = layer.weight_quantizer
        weight = layer.weight.detach()
        self.quantizer.set_step(self.quantizer.step_size(weight))
        self.scaled = weight / self.quantizer.step
        self.v = nn.Parameter(_initial_v(self.scaled - torch.floor(self.scaled)))

    def nearest(self) -> None:
        self.quantizer.rounding = torch.round(self.scaled) - torch.floor(self.scaled)

    def soft(self) -> torch.Tensor:
        self.quantizer.rounding = h = soft_rounding(self.v)
        return h

    def finish(self) -> None:
        self.quantizer.rounding = None
        self.quantizer.set_rounding((soft_rounding(self.v.detach()) >= 0.5).to(torch.int8))


def reconstruct_unit(unit: nn.Module, layers: list[nn.Module], inputs: torch.Tensor, target: torch.Tensor,
                     options: ReconstructionOptions) -> tuple[float, float]:
    """Learn the weight rounding of ``layers`` (all inside ``unit``: one layer, or a block of them) and the
    ranges of ``unit``'s activation quantizers so that ``unit(inputs)`` approaches ``target``; fixes them
    in the quantizers. Returns the output error (nearest rounding, learned)."""
    roundings = [_LearnedRounding(layer) for layer in layers]
    act_quantizers = [m for m in unit.modules() if isinstance(m, ActQuantizer) and bool(m.has_range)]
    learned_ranges = [LearnedRange(q) for q in act_quantizers] if options.ranges else []
    optimizer = torch.optim.Adam([r.v for r in roundings] + [r.gain for r in learned_ranges], lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    frozen = [(p, p.requires_grad) for p in unit.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)

    def error(batch: slice | torch.Tensor = slice(None)) -> torch.Tensor:
        for learned_range in learned_ranges:
            learned_range.apply()
        return output_error(unit(inputs[batch]), target[batch])

    dropping = []
    try:
        with torch.no_grad():
            for rounding in roundings:
                rounding.nearest()
            nearest = float(error())
        if options.drop > 0:
            dropping = [_dropping_quantization(q, options.drop, generator) for q in act_quantizers]
        for iteration in range(options.iterations):
            batch = torch.randint(len(inputs), (min(options.batch_size, len(inputs)),), generator=generator)
            soft = [rounding.soft() for rounding in roundings]
            loss = error(batch)
            beta = _beta(iteration, options)
            if beta is not None:
                loss = loss + options.regularization * sum(rounding_regularizer(h, beta) for h in soft)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for hook in dropping:
            hook.remove()
        dropping = []
        for learned in (*learned_ranges, *roundings):
            learned.finish()
        with torch.no_grad():
            learned_error = float(output_error(unit(inputs), target))
    finally:
        for hook in dropping:
            hook.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    return nearest, learned_error


def reconstruction_units(model: nn.Module, layers: list[tuple[str, nn.Module]], blocks: bool,
                         probe: torch.Tensor) -> list[tuple[str, nn.Module, list[nn.Module]]]:
    """(name, module to reconstruct, its quantized layers) in forward order: each layer alone, or with
    ``blocks`` the smallest modules that hold two or more of them and that the forward of ``probe`` calls
    once with one tensor (residual blocks) as one unit each, the layers outside such a block alone."""
    position = {layer: i for i, (_, layer) in enumerate(layers)}
    units = []
    if blocks:
        for name, module in model.named_modules():
            held = [m for m in module.modules() if m in position]
            if name and len(held) >= 2 and all(sum(m in position for m in child.modules()) < 2 for child in module.children()):
                units.append((name, module, sorted(held, key=position.get)))
        called = _called_once_with_one_tensor(model, [module for _, module, _ in units], probe)
        units = [unit for unit in units if unit[1] in called]
    claimed = {layer for _, _, held in units for layer in held}
    units += [(name, layer, [layer]) for name, layer in layers if layer not in claimed]
    return sorted(units, key=lambda unit: position[unit[2][0]])


def _called_once_with_one_tensor(model: nn.Module, modules: list[nn.Module], probe: torch.Tensor) -> set[nn.Module]:
    """Those of ``modules`` that one forward of ``probe`` calls exactly once, with a single tensor
    (a traced graph calls a block's layers directly and never the block)."""
    calls: dict[nn.Module, list[int]] = {module: [] for module in modules}

    def count(module, args):
        calls[module].append(len(args) == 1 and isinstance(args[0], torch.Tensor))

    hooks = [module.register_forward_pre_hook(count) for module in modules]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return {module for module, seen in calls.items() if seen == [True]}


@register_algorithm("reconstruct", "learned weight rounding per layer (AdaRound) or per block (blocks=true, BRECQ), "
                    "input ranges learned with it", ReconstructionOptions)
def reconstruct(run: CalibrationRun, options: ReconstructionOptions | None) -> None:
    options = options or ReconstructionOptions()
    model, device = run.model, run.device
    batches = run.batch_list()
    layers = [(name, layer) for name, layer in quantized_layers_in_order(model, traced_graph(model, "reconstruct"))
              if layer.weight_quantizer.symmetric]
    errors = []
    units = reconstruction_units(model, layers, options.blocks, batches[0][:1].to(device))
    for name, unit, held in progress_bar(units, desc="reconstruct", disable=not run.progress):
        with bypassed(model):
            float_inputs = layer_inputs(model, unit, batches, device)
            with torch.no_grad():
                target = unit(float_inputs)
        del float_inputs
        inputs = layer_inputs(model, unit, batches, device)
        errors.append(reconstruct_unit(unit, held, inputs, target, options))
        log.debug("reconstruct %s (%d layers): output error %.4g -> %.4g", name, len(held), *errors[-1])
    if errors:
        better = sum(learned < nearest for nearest, learned in errors)
        log.info("reconstruct: %d units of %d layers, output error lower than nearest rounding in %d",
                 len(errors), len(layers), better)
