"""Recognise an imported ONNX graph as one of the zoo's architectures (an insightface iresnet export).

The weighted layers of the graph (Conv, BatchNormalization, PRelu, Gemm, in node order) are paired
with the zoo model's weighted modules in the order its forward calls them; when every pair has the
same kind and shapes, the initializers become the zoo model's state dict, loaded with strict key
matching, and the result must compute what the graph computes. Then every zoo feature (layer
names for overrides, the zoo's residual modules) applies to the imported weights.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .registry import get_spec

log = logging.getLogger(__name__)

CANDIDATES = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet")
KINDS: dict[str, tuple[type, ...]] = {
    "Conv": (nn.Conv2d,),
    "BatchNormalization": (nn.BatchNorm1d, nn.BatchNorm2d),
    "PRelu": (nn.PReLU,),
    "Gemm": (nn.Linear,),
}
WEIGHTED = tuple(t for kinds in KINDS.values() for t in kinds)


def _call_order(model: nn.Module, input_size: tuple[int, int]) -> list[tuple[str, nn.Module]]:
    """The weighted leaf modules in the order a forward pass calls them (on the meta device: no compute)."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_pre_hook(lambda module, _args, name=name: order.append((name, module)))
             for name, m in model.named_modules() if isinstance(m, WEIGHTED)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *input_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _layer_state(node: onnx.NodeProto, name: str, module: nn.Module, values: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The zoo state-dict entries of one paired layer, or None when the shapes do not fit."""
    inputs = [values.get(i) for i in node.input[1:]]
    if any(v is None for v in inputs):
        return None
    if node.op_type == "Conv":
        state = {"weight": inputs[0]} | ({"bias": inputs[1]} if len(inputs) > 1 else {})
    elif node.op_type == "BatchNormalization":
        state = dict(zip(("weight", "bias", "running_mean", "running_var"), inputs[:4]))
    elif node.op_type == "PRelu":
        state = {"weight": inputs[0].reshape(-1)}
    else:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        state = {"weight": inputs[0] if attrs.get("transB", 0) else inputs[0].T} | ({"bias": inputs[1]} if len(inputs) > 1 else {})
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k != "num_batches_tracked"}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        return None
    return {f"{name}.{k}": v for k, v in state.items()}


def match_zoo(proto: onnx.ModelProto, input_size: tuple[int, int]) -> tuple[str, dict[str, torch.Tensor]] | None:
    """(zoo name, its strict state dict) when ``proto`` is that architecture layer for layer, else None."""
    layers = [n for n in proto.graph.node if n.op_type in KINDS]
    values = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for name in CANDIDATES:
        spec = get_spec(name)
        if tuple(spec.contract.input_size) != tuple(input_size):
            continue
        with torch.device("meta"):
            model = spec.build()
        order = _call_order(model, input_size)
        if len(order) != len(layers):
            continue
        state: dict[str, np.ndarray] = {}
        for node, (module_name, module) in zip(layers, order):
            entries = _layer_state(node, module_name, module, values) if isinstance(module, KINDS[node.op_type]) else None
            if entries is None:
                break
            state.update(entries)
        else:
            return name, {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in state.items()}
    return None


def zoo_model(proto: onnx.ModelProto, input_size: tuple[int, int], reference: nn.Module) -> tuple[str, nn.Module] | None:
    """The zoo model ``proto`` is (weights loaded strictly), if it computes what ``reference`` (the graph
    converted op by op) computes on seeded noise; else None."""
    matched = match_zoo(proto, input_size)
    if matched is None:
        return None
    name, state = matched
    model = get_spec(name).build().eval()
    missing = model.load_state_dict(state, strict=False)
    if missing.unexpected_keys or [k for k in missing.missing_keys if not k.endswith("num_batches_tracked")]:
        return None
    x = torch.randn(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = model(x), reference.eval()(x)
    cosine = float(nn.functional.cosine_similarity(got.flatten(1), expected.flatten(1)).min())
    if cosine < 0.99999:
        log.warning("the graph has %s's layers but computes something else (cosine %.6f): imported as a generic graph", name, cosine)
        return None
    return name, model
