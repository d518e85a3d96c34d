"""Partial forward passes: run a model only as far as one layer and keep what reached it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from .graph import ModuleGraph


class _Reached(Exception):
    """Raised by the hook of the layer a pass stops at: nothing after it needs computing."""


def _raise_reached(*_args) -> None:
    raise _Reached


def run_until(model: nn.Module, layer: nn.Module | None, batches: Sequence[torch.Tensor], device: torch.device,
              before: bool = False) -> None:
    """No-grad forwards of ``batches`` that stop once ``layer`` ran (``before``: once it was called)."""
    if layer is None:
        stop = None
    elif before:
        stop = layer.register_forward_pre_hook(_raise_reached)
    else:
        stop = layer.register_forward_hook(_raise_reached)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(batch.to(device))
                except _Reached:
                    pass
    finally:
        if stop is not None:
            stop.remove()


def layer_inputs(model: nn.Module, layer: nn.Module, batches: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The first input ``layer`` receives for every image in ``batches``, concatenated (the model runs no further)."""
    seen: list[torch.Tensor] = []
    keep = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        run_until(model, layer, batches, device, before=True)
    finally:
        keep.remove()
    return torch.cat(seen)


def quantized_layers_in_order(model: nn.Module, graph: "ModuleGraph") -> list[tuple[str, nn.Module]]:
    """(name, layer) of every quantized conv/linear, in the order ``graph`` (one forward pass) called them."""
    from .algorithms import weight_quantizers

    modules = dict(model.named_modules())
    quantized = {layer for layer, _ in weight_quantizers(model)}
    return [(name, modules[name]) for name in dict.fromkeys(graph.order) if modules[name] in quantized]
