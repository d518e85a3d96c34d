"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"), a PTQ step.

Quantized weights and inputs shift each layer's output mean; downstream layers see that shift as
signal. Layer by layer in forward order, the step compares the per-channel output mean of the
float model (one pass, quantizers bypassed) with that of the quantized model carrying every
correction made so far, on the calibration images, and moves the difference into the layer's
bias, or, for a conv without a bias, into the running mean of the BatchNorm that alone reads it
(``(y + d - mean) / std`` is ``(y - (mean - d)) / std``). Run it after ``ranges``:
``calibrate(model, data, algorithm=["ranges", "bias_correction"])``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from qfsdk.models.card import card_of

from .algorithms import CalibrationRun, register_algorithm, weight_quantizers
from .graph import ModuleGraph, module_graph
from .modules import bypassed

log = logging.getLogger(__name__)


class _ChannelMeans:
    """Per-channel (dim 1) output means of some layers over every image fed while attached."""

    def __init__(self, layers: Sequence[nn.Module]):
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.counts: dict[nn.Module, int] = {}
        self.hooks = [layer.register_forward_hook(self._record) for layer in layers]

    def _record(self, layer: nn.Module, _args, out: torch.Tensor) -> None:
        flat = out.detach().transpose(0, 1).reshape(out.shape[1], -1).double()
        self.sums[layer] = self.sums.get(layer, 0) + flat.sum(1)
        self.counts[layer] = self.counts.get(layer, 0) + flat.shape[1]

    def mean(self, layer: nn.Module) -> torch.Tensor:
        return (self.sums[layer] / self.counts[layer]).float()

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _means(model: nn.Module, layers: Sequence[nn.Module], batches: list[torch.Tensor], device: torch.device) -> _ChannelMeans:
    means = _ChannelMeans(layers)
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device))
    finally:
        means.close()
    return means


def _target(modules: dict[str, nn.Module], name: str, layer: nn.Module, graph: ModuleGraph) -> tuple[torch.Tensor, int] | None:
    """Where the correction goes: (tensor, sign): the layer's bias (+1), or its BatchNorm's running mean (-1)."""
    if layer.bias is not None:
        return layer.bias.data, 1
    readers = graph.consumers(name)
    if len(readers) == 1 and isinstance(modules[readers[0]], nn.modules.batchnorm._BatchNorm) and graph.producers[readers[0]] == [name]:
        return modules[readers[0]].running_mean, -1
    return None


@register_algorithm("bias_correction", "match every quantized conv/linear's per-channel output mean to the float model's")
def correct_biases(run: CalibrationRun, options: None) -> None:
    model, device = run.model, run.device
    batches = list(run.batches)  # the same images for every layer (a lazy source would make new ones each pass)
    graph = module_graph(model, card_of(model).contract.input_size)
    modules = dict(model.named_modules())
    names = {module: name for name, module in modules.items()}
    targets = [(layer, target) for layer, _ in weight_quantizers(model) if (target := _target(modules, names[layer], layer, graph))]
    with bypassed(model):
        reference = _means(model, [layer for layer, _ in targets], batches, device)
    for layer, (tensor, sign) in targets:
        quantized = _means(model, [layer], batches, device).mean(layer)
        tensor.add_(sign * (reference.mean(layer) - quantized).to(tensor.dtype))
    run.images = max(run.images, sum(len(b) for b in batches))
    log.info("bias correction: %d of %d quantized layers", len(targets), len(list(weight_quantizers(model))))
