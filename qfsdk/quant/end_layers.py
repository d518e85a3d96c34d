"""Keep the first and last quantized layers at 8 bits, a PTQ step (``ends_8bit``).

The image stem and the embedding layer are where low bit widths cost most and save least: the stem
sees the raw image through 3 input channels, the embedding layer writes the output directly, and
both hold a small share of the multiply-accumulates. The low-bit PTQ literature keeps both at 8
bits (AdaRound, BRECQ, QDrop all report W4 that way). On every backend qfsdk targets a 4- or 6-bit
layer runs int8 kernels anyway (its codes live inside int8), so an 8-bit end layer costs neither
speed nor size. On dlib_resnet W4A8 it is the difference between min cosine 0.986 and 0.995 with
``reconstruct`` (see the README's PTQ recipes).

The step gives the ``first`` and ``last`` quantized conv/linear layers, in forward order, fresh
8-bit weight and input quantizers and adds ``LayerOverride(name, 8, 8)`` for each to the model
card's config, so the checkpoint, QAT and the export keep them at 8 bits. It replaces quantizers,
so it runs before ``ranges``: ``ends_8bit,ranges,reconstruct``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from qfsdk.errors import ConfigError
from qfsdk.models.card import card_of

from .algorithms import CalibrationRun, act_quantizers, register_algorithm
from .api import configure_act_quantizers, quantizable_layers
from .capture import quantized_layers_in_order
from .config import LayerOverride
from .graph import traced_graph
from .schemes import get_scheme

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndsOptions:
    """How many quantized conv/linear layers to keep at 8 bits from the input end (``first``) and the output end (``last``)."""

    first: int = 1
    last: int = 1

    def __post_init__(self) -> None:
        for name in ("first", "last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"ends_8bit: {name} must be an integer >= 0, got {value!r}")


def end_layers(model: nn.Module, options: EndsOptions) -> list[tuple[str, nn.Module]]:
    """The ``first`` and ``last`` quantized conv/linear layers of ``model`` in forward order (no layer twice)."""
    layers = quantized_layers_in_order(model, traced_graph(model, "ends_8bit"))
    return layers[:options.first] + layers[max(options.first, len(layers) - options.last):]


def raised_layers(model: nn.Module) -> list[tuple[str, int, int]]:
    """(name, weight bits, activation bits) of the quantized layers that the config holds above its
    preset's bit widths (``ends_8bit``, ``--keep-8bit``), in model order."""
    config = card_of(model).quant_config
    raised = []
    for name, _ in quantizable_layers(model, config.scheme):
        weight_bits, act_bits, enabled = config.bits_for(name)
        above = weight_bits >= config.weight_bits and act_bits >= config.act_bits
        if enabled and above and (weight_bits, act_bits) != (config.weight_bits, config.act_bits):
            raised.append((name, weight_bits, act_bits))
    return raised


def raised_text(model: nn.Module) -> str | None:
    """``stem.conv (8/8-bit), fc (8/8-bit)``: :func:`raised_layers` for a summary line; None when there are none."""
    raised = raised_layers(model)
    return ", ".join(f"{name} ({w}/{a}-bit)" for name, w, a in raised) if raised else None


@register_algorithm("ends_8bit", "the first and last quantized layers (image stem, embedding layer) at W8A8, free on "
                                 "int8 backends (first=N, last=N, default 1 each; before ranges)", EndsOptions,
                    precedes=("ranges",))
def ends_8bit(run: CalibrationRun, options: EndsOptions | None) -> None:
    options = options or EndsOptions()
    model, config = run.model, run.config
    if any(bool(quantizer.has_range) for _, quantizer in act_quantizers(model)):
        raise ConfigError("ends_8bit replaces the end layers' quantizers, so it runs on a model without activation "
                          "ranges: quantize the float model and put ends_8bit first in the recipe (ends_8bit,ranges,...)")
    symmetric = get_scheme(config.scheme).symmetric
    raised = [(name, layer) for name, layer in end_layers(model, options) if config.bits_for(name)[:2] != (8, 8)]
    for _, layer in raised:
        layer.setup(weight_bits=8, act_bits=8, symmetric=symmetric)
        configure_act_quantizers(layer, config)
    card = card_of(model)
    card.quant_config = run.config = config.with_overrides(*(LayerOverride(name, 8, 8) for name, _ in raised))
    log.info("at 8 bits (ends_8bit): %s", ", ".join(name for name, _ in raised) or "none (the end layers are 8-bit already)")
