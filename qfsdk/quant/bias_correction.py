"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"), a PTQ step.

Quantized weights and inputs shift each layer's output mean; downstream layers see that shift as
signal. The step compares the per-channel output mean of every quantized conv/linear in the float
model (one pass, quantizers bypassed) with the quantized model's on the calibration images, and
moves the difference into the layer's bias, or, for a conv without a bias, into the running mean
of the BatchNorm that alone reads it (``(y + d - mean) / std`` is ``(y - (mean - d)) / std``).
Layers are corrected one at a time in forward order, each measured with every upstream correction
in place (correcting all at once overshoots in deep nets); each measuring pass stops at its layer.
Run it after ``ranges``:
``calibrate(model, data, algorithm=["ranges", "bias_correction"])``.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from qfsdk.progress import progress_bar

from .algorithms import CalibrationRun, register_algorithm, weight_quantizers
from .capture import quantized_layers_in_order, run_until
from .graph import ModuleGraph, traced_graph
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


def _means(model: nn.Module, layers: Sequence[nn.Module], batches: list[torch.Tensor], device: torch.device,
           stop_at: nn.Module | None = None) -> _ChannelMeans:
    """Per-channel output means of ``layers``; each forward ends at ``stop_at`` when given."""
    means = _ChannelMeans(layers)
    try:
        run_until(model, stop_at, batches, device)
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
    batches = run.batch_list()  # the same images for every layer
    graph = traced_graph(model, "bias_correction")
    modules = dict(model.named_modules())
    targets = [(layer, target) for name, layer in quantized_layers_in_order(model, graph)
               if (target := _target(modules, name, layer, graph))]
    with bypassed(model):
        reference = _means(model, [layer for layer, _ in targets], batches, device)
    for layer, (tensor, sign) in progress_bar(targets, desc="bias correction", disable=not run.progress):  # one pass per layer
        shifted = _means(model, [layer], batches, device, stop_at=layer).mean(layer)
        tensor.add_(sign * (reference.mean(layer) - shifted).to(tensor.dtype))
    log.info("bias correction: %d of %d quantized layers", len(targets), len(list(weight_quantizers(model))))
