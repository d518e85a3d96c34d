"""Cross-layer equalization (Nagel et al. 2019), a PTQ step that runs before ``ranges``.

Between a layer ``A`` (a conv, or the BatchNorm that finishes it) and the conv ``B`` that alone
reads its output, through at most one positively homogeneous activation (PReLU, ReLU), scaling
channel ``c`` of ``A``'s output by ``1 / s_c`` and ``B``'s input channel ``c`` by ``s_c`` leaves the
float function unchanged. Folded-BatchNorm MobileFaceNets have per-channel activation ranges that
differ by orders of magnitude, which a per-tensor int8 activation grid cannot hold. The default,
``by="weights"`` (data-free, as the paper), chooses ``s_c = sqrt(r_c / w_c)`` (``r_c``: max |A's
effective weights| on output channel ``c``, ``w_c``: max |B's weights| on that input channel), so
that both become ``sqrt(r_c w_c)``: a channel's activation range grows with what it contributes to
``B``'s output (``r_c w_c``), which spends the activation grid where its noise costs most.
``by="activations"`` puts the channel's range on the calibration images in place of ``r_c``; on
synthetic images it fits their per-channel ranges, which real faces do not share (W8A8 min cosine
on real crops, fr_feature: 0.983 vs 0.986 by weights; SFace 0.982 vs 0.988). The model's output
must be the same afterwards, or the step undoes itself and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from qfsdk.errors import ConfigError

from .algorithms import CalibrationRun, register_algorithm
from .graph import ModuleGraph, traced_graph

log = logging.getLogger(__name__)

HOMOGENEOUS = (nn.PReLU, nn.ReLU)  # f(s x) = s f(x) per channel for s > 0
MIN_RANGE = 1e-8
MAX_SCALE = 1e4
MIN_COSINE = 0.99999


@dataclass(frozen=True)
class EqualizationOptions:
    by: str = "weights"  # or "activations"
    iterations: int = 2

    def __post_init__(self) -> None:
        if self.by not in ("activations", "weights"):
            raise ConfigError(f"equalize: by must be 'activations' or 'weights', got {self.by!r}")
        if self.iterations < 1:
            raise ConfigError(f"equalize: iterations must be at least 1, got {self.iterations}")


@dataclass
class _Pair:
    first: nn.Module  # the conv or BatchNorm whose output channels are scaled down
    conv: nn.Conv2d | None  # the conv under a BatchNorm ``first`` (its weights give the data-free range)
    activation: nn.Module | None
    second: nn.Conv2d  # the conv whose input channels are scaled up
    probe: nn.Module  # the module whose output is ``second``'s input (ranges are measured there)


def _single_reader(graph: ModuleGraph, name: str) -> str | None:
    readers = graph.consumers(name)
    return readers[0] if len(readers) == 1 and graph.producers.get(readers[0]) == [name] else None


def _pairs(model: nn.Module, graph: ModuleGraph) -> list[_Pair]:
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        if not isinstance(module, nn.Conv2d):
            continue
        first, conv, cursor = module, None, name
        reader = _single_reader(graph, cursor)
        if reader is not None and isinstance(modules[reader], nn.BatchNorm2d):
            first, conv, cursor = modules[reader], module, reader
            reader = _single_reader(graph, cursor)
        activation = None
        if reader is not None and isinstance(modules[reader], HOMOGENEOUS):
            activation, cursor = modules[reader], reader
            reader = _single_reader(graph, cursor)
        if reader is None or not isinstance(modules[reader], nn.Conv2d):
            continue
        second = modules[reader]
        if second.groups not in (1, second.in_channels) or second.in_channels != _channels(first):
            continue
        found.append(_Pair(first, conv, activation, second, modules[cursor]))
    return found


def _channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.num_features


def _first_ranges(pair: _Pair) -> torch.Tensor:
    """max |effective weight| per output channel of the first layer (BatchNorm folded in)."""
    if pair.conv is None:
        return pair.first.weight.detach().abs().flatten(1).amax(1)
    bn = pair.first
    gain = (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).abs()
    return pair.conv.weight.detach().abs().flatten(1).amax(1) * gain


def _second_ranges(conv: nn.Conv2d) -> torch.Tensor:
    """max |weight| per input channel of ``conv`` (groups 1 or depthwise)."""
    weight = conv.weight.detach().abs()
    return weight.flatten(1).amax(1) if conv.groups == conv.in_channels else weight.transpose(0, 1).flatten(1).amax(1)


def _activation_ranges(model: nn.Module, probes: list[nn.Module], batches: list[torch.Tensor], device) -> dict[nn.Module, torch.Tensor]:
    """max |x| per channel of each probe's output over the calibration images."""
    ranges: dict[nn.Module, torch.Tensor] = {}

    def record(module, _args, out):
        top = out.detach().abs().transpose(0, 1).flatten(1).amax(1)
        ranges[module] = torch.maximum(ranges[module], top) if module in ranges else top

    hooks = [probe.register_forward_hook(record) for probe in probes]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def _scale(pair: _Pair, scale: torch.Tensor) -> None:
    """Channel c of the first layer's output / s_c, the second conv's input channel c * s_c."""
    view = (-1,) + (1,) * 3
    with torch.no_grad():
        if pair.conv is None:
            pair.first.weight.div_(scale.view(view))
            if pair.first.bias is not None:
                pair.first.bias.div_(scale)
        else:
            pair.first.weight.div_(scale)
            pair.first.bias.div_(scale)
        if pair.second.groups == pair.second.in_channels:
            pair.second.weight.mul_(scale.view(view))
        else:
            pair.second.weight.mul_(scale.view(1, -1, 1, 1))


def _snapshot(pairs: list[_Pair]) -> list[torch.Tensor]:
    return [p.detach().clone() for pair in pairs for m in (pair.first, pair.second) for p in m.parameters(recurse=False)]


def _restore(pairs: list[_Pair], saved: list[torch.Tensor]) -> None:
    params = [p for pair in pairs for m in (pair.first, pair.second) for p in m.parameters(recurse=False)]
    with torch.no_grad():
        for param, value in zip(params, saved):
            param.copy_(value)


@register_algorithm("equalize", "cross-layer equalization of conv -> (BatchNorm) -> PReLU/ReLU -> conv channel ranges",
                    EqualizationOptions)
def equalize(run: CalibrationRun, options: EqualizationOptions | None) -> None:
    from .modules import bypassed

    options = options or EqualizationOptions()
    model, device = run.model, run.device
    pairs = _pairs(model, traced_graph(model, "equalize"))
    if not pairs:
        log.info("equalize: no conv -> activation -> conv pairs")
        return
    batches = run.batch_list()
    saved = _snapshot(pairs)
    with bypassed(model), torch.no_grad():
        before = [model(b.to(device)) for b in batches[:1]]
        for _ in range(options.iterations):
            ranges = _activation_ranges(model, [p.probe for p in pairs], batches, device) if options.by == "activations" else {}
            for pair in pairs:
                first = ranges[pair.probe] if options.by == "activations" else _first_ranges(pair)
                second = _second_ranges(pair.second)
                scale = torch.sqrt(first.clamp_min(MIN_RANGE) / second.clamp_min(MIN_RANGE)).clamp(1 / MAX_SCALE, MAX_SCALE)
                _scale(pair, scale)
        after = [model(b.to(device)) for b in batches[:1]]
    cosine = min(float(nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()) for a, b in zip(after, before))
    if cosine < MIN_COSINE:
        _restore(pairs, saved)
        log.warning("equalize changed the float model's output (cosine %.6f): undone", cosine)
        return
    log.info("equalize: %d layer pairs (%s), float output kept (cosine %.7f)", len(pairs), options.by, cosine)
