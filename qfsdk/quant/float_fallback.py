"""Keep the layers whose quantization costs most in float, a PTQ step (``keep_float``).

On trained MobileFaceNets a few conv inputs hold per-channel ranges that no per-tensor int8 grid
serves: fr_feature's ``conv_33`` input alone costs min cosine 0.982 on real faces at W8A8, while
most other layers cost under 0.006. The step ranks every quantized layer by the minimum cosine, on
the calibration images, between the float model and the model with only that layer quantized, and
returns the ``layers`` worst to float: their quantizers go, and the model card's config gains
``LayerOverride(name, enabled=False)`` for each, so the checkpoint, ``qfsdk convert`` and the
export keep them float. Its cost is speed: the step logs the share of the model's
multiply-accumulates that now runs in float. Run it after ``ranges`` (the ranking needs them) and
before ``bias_correction``: ``equalize,ranges,keep_float,bias_correction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from qfsdk.errors import ConfigError
from qfsdk.models.card import card_of

from .algorithms import CalibrationRun, register_algorithm
from .api import quantizable_layers
from .config import LayerOverride
from .modules import Quantizer, QuantModule, bypassed, unconvert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeepFloatOptions:
    """``layers``: how many of the most costly quantized layers to keep in float; ``images``: how many
    calibration images rank them (one forward of them per quantized layer)."""

    layers: int = 1
    images: int = 16

    def __post_init__(self) -> None:
        for name in ("layers", "images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"keep_float: {name} must be a positive integer, got {value!r}")


def _own_quantizers(module: nn.Module) -> list[Quantizer]:
    return [child for child in module.children() if isinstance(child, Quantizer)]


def _min_cosine(model: nn.Module, batches: list[torch.Tensor], reference: list[torch.Tensor], device: torch.device) -> float:
    with torch.no_grad():
        return min(float(torch.nn.functional.cosine_similarity(model(batch.to(device)), ref).min())
                   for batch, ref in zip(batches, reference))


def layer_costs(model: nn.Module, batches: list[torch.Tensor], device: torch.device) -> list[tuple[float, str]]:
    """(min cosine vs float with only this layer quantized, name) for every quantized layer, worst first."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantModule) and _own_quantizers(m)]
    with bypassed(model), torch.no_grad():
        reference = [model(batch.to(device)) for batch in batches]
        costs = []
        for name, layer in layers:
            for quantizer in _own_quantizers(layer):
                quantizer.bypass = False
            costs.append((_min_cosine(model, batches, reference, device), name))
            for quantizer in _own_quantizers(layer):
                quantizer.bypass = True
    return sorted(costs)


def multiply_accumulates(model: nn.Module, image: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per conv/linear for one image (``image``: a (1, 3, H, W) batch)."""
    macs: dict[str, int] = {}

    def count(name: str):
        def hook(module: nn.Module, _args, out: torch.Tensor) -> None:
            per_output = module.weight[0].numel()  # in/groups x kernel, or in_features
            macs[name] = macs.get(name, 0) + out[0].numel() * per_output
        return hook

    hooks = [m.register_forward_hook(count(name)) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with bypassed(model), torch.no_grad():
            model(image)
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def float_layers(model: nn.Module) -> list[str]:
    """The layers the quantized model's config keeps in float (``enabled=False`` overrides), in model order."""
    config = card_of(model).quant_config
    return [name for name, _ in quantizable_layers(model, config.scheme) if not config.bits_for(name)[2]]


def float_share(model: nn.Module, image: torch.Tensor) -> float:
    """The share of the model's conv/linear multiply-accumulates that runs in float (``image``: a (1, 3, H, W) batch)."""
    macs = multiply_accumulates(model, image)
    return sum(macs.get(name, 0) for name in float_layers(model)) / max(sum(macs.values()), 1)


@register_algorithm("keep_float", "keep the quantized layers that cost most on the calibration images in float "
                                  "(layers=N, default 1, ranked on images=16 of them; logs their share of the MACs)", KeepFloatOptions)
def keep_float(run: CalibrationRun, options: KeepFloatOptions) -> None:
    model, device = run.model, run.device
    batches = [torch.cat(run.batch_list())[:options.images]]
    modules = dict(model.named_modules())
    chosen: list[tuple[float, str]] = []
    for cost, name in layer_costs(model, batches, device):
        if len(chosen) < options.layers and unconvert(modules[name]):
            chosen.append((cost, name))
    card = card_of(model)
    card.quant_config = card.quant_config.with_overrides(*(LayerOverride(name, enabled=False) for _, name in chosen))
    run.config = card.quant_config
    log.info("kept in float: %s (now %.2f%% of the multiply-accumulates in float)",
             ", ".join(f"{name} (alone {cost:.5f})" for cost, name in chosen), 100 * float_share(model, batches[0][:1].to(device)))
