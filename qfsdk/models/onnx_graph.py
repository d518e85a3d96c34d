"""An ONNX face embedder as a trainable PyTorch module (a ``torch.fx.GraphModule``).

Layers with weights become the torch modules the quantization registry knows (``nn.Conv2d``,
``nn.BatchNorm1d/2d``, ``nn.PReLU``, ``nn.ReLU``, ``nn.Linear``); element-wise ops, reshapes and
pooling become calls, so a residual ``Add`` is a plain ``x + y`` that
:func:`qfsdk.quant.graph.modularize_residual_adds` finds. Only the op set of face embedders is
converted (:data:`CONVERTERS`); :func:`unsupported_ops` names the rest, which import refuses.

Why not onnx2torch: every maintained ONNX-to-PyTorch converter on PyPI requires torchvision, whose
PyPI wheels need a CUDA build of torch (several GB) and do not load beside the CPU torch build the
SDK installs; face embedders need only the few ops below.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn

from qfsdk.errors import ConfigError

from .card import CardedGraphModule


@dataclass
class _Context:
    """The module being built: its root (holding submodules and constants), graph and value table."""

    root: nn.Module
    graph: fx.Graph
    values: dict[str, fx.Node | np.ndarray]  # ONNX value name -> fx node, or a constant
    ranks: dict[str, int]
    count: int = 0

    def add_module(self, kind: str, module: nn.Module) -> str:
        name = f"{kind}_{self.count}"
        self.count += 1
        self.root.add_module(name, module)
        return name

    def tensor(self, name: str) -> fx.Node:
        """An input as a graph node (constants become buffers of the root)."""
        value = self.values[name]
        if isinstance(value, fx.Node):
            return value
        buffer = f"const_{self.count}"
        self.count += 1
        self.root.register_buffer(buffer, _tensor(value))
        node = self.graph.get_attr(buffer)
        self.values[name] = node
        return node

    def constant(self, name: str) -> np.ndarray | None:
        value = self.values.get(name)
        return value if isinstance(value, np.ndarray) else None

    def call(self, target: Callable, *args, **kwargs) -> fx.Node:
        return self.graph.call_function(target, args, kwargs)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A writable torch copy of an initializer's values."""
    return torch.from_numpy(np.array(array, copy=True))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weight(ctx: _Context, name: str, node: onnx.NodeProto) -> np.ndarray:
    value = ctx.constant(name)
    if value is None:
        raise ConfigError(f"node {node.name or node.op_type}: input {name!r} must be a constant (an initializer)")
    return value


def _symmetric_pads(pads: list[int], spatial: int) -> tuple[list[int], list[int] | None]:
    """(the conv's padding, or the F.pad spec for asymmetric pads applied first)."""
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return begin, None
    spec = []
    for b, e in reversed(list(zip(begin, end))):
        spec += [b, e]
    return [0] * spatial, spec


def _conv(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ConfigError(f"node {node.name or 'Conv'}: auto_pad is not supported; re-export with explicit pads")
    weight = _weight(ctx, node.input[1], node)
    if weight.ndim != 4:
        raise ConfigError(f"node {node.name or 'Conv'}: only 2-D convolutions are supported")
    groups = a.get("group", 1)
    padding, pre_pad = _symmetric_pads(list(a.get("pads", [0, 0, 0, 0])), 2)
    bias = len(node.input) > 2 and node.input[2] != ""
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
                     padding=tuple(padding), dilation=tuple(a.get("dilations", [1, 1])), groups=groups, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(_tensor(weight))
        if bias:
            conv.bias.copy_(_tensor(_weight(ctx, node.input[2], node)))
    x = ctx.tensor(node.input[0])
    if pre_pad is not None:
        x = ctx.call(F.pad, x, pre_pad)
    return ctx.graph.call_module(ctx.add_module("conv", conv), (x,))


def _batchnorm(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    scale, bias, mean, var = (_weight(ctx, name, node) for name in node.input[1:5])
    rank = ctx.ranks.get(node.input[0], 4)
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank)
    if kind is None:
        raise ConfigError(f"node {node.name or 'BatchNormalization'}: inputs of rank {rank} are not supported")
    bn = kind(len(scale), eps=a.get("epsilon", 1e-5), momentum=1 - a.get("momentum", 0.9))
    with torch.no_grad():
        for param, value in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
            param.copy_(_tensor(value))
    return ctx.graph.call_module(ctx.add_module("bn", bn), (ctx.tensor(node.input[0]),))


def _prelu(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    slope = _weight(ctx, node.input[1], node)
    rank = ctx.ranks.get(node.input[0], 4)
    # nn.PReLU scales dimension 1; an ONNX slope broadcasts from the right, so (C, 1, 1) on NCHW, (C,) on
    # (N, C) and a scalar are what it can hold.
    shape = slope.shape[1:] if slope.ndim == rank else (slope.shape if slope.ndim == rank - 1 else None)
    if slope.size > 1 and (shape is None or (slope.ndim == rank and slope.shape[0] != 1) or any(d != 1 for d in shape[1:])):
        raise ConfigError(f"node {node.name or 'PRelu'}: a slope of shape {slope.shape} is not one value per channel")
    prelu = nn.PReLU(slope.size)
    with torch.no_grad():
        prelu.weight.copy_(_tensor(slope.reshape(-1)))
    return ctx.graph.call_module(ctx.add_module("prelu", prelu), (ctx.tensor(node.input[0]),))


def _relu(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    return ctx.graph.call_module(ctx.add_module("relu", nn.ReLU()), (ctx.tensor(node.input[0]),))


def _linear(ctx: _Context, x: str, weight: np.ndarray, bias: np.ndarray | None) -> fx.Node:
    """``x @ weight.T + bias`` as an nn.Linear (weight: (out, in))."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(_tensor(weight))
        if bias is not None:
            linear.bias.copy_(_tensor(np.broadcast_to(bias, (weight.shape[0],))))
    return ctx.graph.call_module(ctx.add_module("linear", linear), (ctx.tensor(x),))


def _gemm(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    if a.get("transA", 0):
        raise ConfigError(f"node {node.name or 'Gemm'}: transA=1 is not supported")
    weight = _weight(ctx, node.input[1], node)
    weight = weight if a.get("transB", 0) else weight.T
    weight = weight * a.get("alpha", 1.0)
    bias = _weight(ctx, node.input[2], node) * a.get("beta", 1.0) if len(node.input) > 2 and node.input[2] else None
    return _linear(ctx, node.input[0], weight.astype(np.float32), None if bias is None else bias.astype(np.float32))


def _matmul(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    weight = ctx.constant(node.input[1])
    if weight is not None and weight.ndim == 2:
        return _linear(ctx, node.input[0], weight.T, None)
    return ctx.call(torch.matmul, ctx.tensor(node.input[0]), ctx.tensor(node.input[1]))


def _binary(op: Callable) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        return ctx.call(op, ctx.tensor(node.input[0]), ctx.tensor(node.input[1]))
    return convert


def onnx_reshape(x: torch.Tensor, shape: torch.Tensor | tuple[int, ...]) -> torch.Tensor:
    """ONNX Reshape: 0 copies the input's dimension, -1 is inferred."""
    dims = [int(d) for d in shape]
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])


def onnx_flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Flatten: a 2-D (prod(dims[:axis]), prod(dims[axis:])) view."""
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)



def _reshape(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    shape = ctx.constant(node.input[1])
    target = tuple(int(d) for d in shape) if shape is not None else ctx.tensor(node.input[1])
    return ctx.call(onnx_reshape, ctx.tensor(node.input[0]), target)


def _flatten(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    axis = _attrs(node).get("axis", 1)
    if axis == 1:
        return ctx.call(torch.flatten, ctx.tensor(node.input[0]), 1)
    return ctx.call(onnx_flatten, ctx.tensor(node.input[0]), axis)


def _pool(kind: str) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        a = _attrs(node)
        padding, pre_pad = _symmetric_pads(list(a.get("pads", [0, 0, 0, 0])), 2)
        if pre_pad is not None:
            raise ConfigError(f"node {node.name or kind}: asymmetric pooling pads are not supported")
        kernel, strides = tuple(a["kernel_shape"]), tuple(a.get("strides", [1, 1]))
        ceil = bool(a.get("ceil_mode", 0))
        if kind == "MaxPool":
            module = nn.MaxPool2d(kernel, strides, tuple(padding), ceil_mode=ceil)
        else:
            module = nn.AvgPool2d(kernel, strides, tuple(padding), ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)))
        return ctx.graph.call_module(ctx.add_module("pool", module), (ctx.tensor(node.input[0]),))
    return convert


def _global_average_pool(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    return ctx.call(F.adaptive_avg_pool2d, ctx.tensor(node.input[0]), 1)


def _transpose(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    x = ctx.tensor(node.input[0])
    perm = _attrs(node).get("perm")
    return ctx.graph.call_method("permute", (x, *perm)) if perm else ctx.graph.call_method("t", (x,))


def _concat(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    return ctx.call(torch.cat, [ctx.tensor(name) for name in node.input], _attrs(node)["axis"])


def _identity(ctx: _Context, node: onnx.NodeProto) -> fx.Node | np.ndarray:
    constant = ctx.constant(node.input[0])
    return constant if constant is not None else ctx.tensor(node.input[0])


def _axes(ctx: _Context, node: onnx.NodeProto) -> list[int]:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, a constant input from 13 on."""
    if len(node.input) > 1:
        return [int(a) for a in _weight(ctx, node.input[1], node)]
    return list(_attrs(node).get("axes", []))


def _unsqueeze(ctx: _Context, node: onnx.NodeProto) -> fx.Node | np.ndarray:
    axes, constant = _axes(ctx, node), ctx.constant(node.input[0])
    if constant is not None:  # e.g. a PReLU slope reshaped to (C, 1, 1) by the exporter
        return np.expand_dims(constant, tuple(axes))
    x = ctx.tensor(node.input[0])
    for axis in sorted(axes):
        x = ctx.call(torch.unsqueeze, x, axis)
    return x


def _squeeze(ctx: _Context, node: onnx.NodeProto) -> fx.Node | np.ndarray:
    axes, constant = _axes(ctx, node), ctx.constant(node.input[0])
    if constant is not None:
        return np.squeeze(constant, tuple(axes) or None)
    if not axes:
        raise ConfigError(f"node {node.name or 'Squeeze'}: a Squeeze without axes is not supported")
    return ctx.call(torch.squeeze, ctx.tensor(node.input[0]), tuple(axes))


def _unary(function: Callable) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        return ctx.call(function, ctx.tensor(node.input[0]))
    return convert


def _clip(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    bounds = [ctx.constant(name) if name else None for name in list(node.input[1:3]) + [""] * (3 - len(node.input))][:2]
    low, high = (None if b is None else float(b) for b in bounds)
    return ctx.call(torch.clamp, ctx.tensor(node.input[0]), low, high)


# ONNX op type -> converter; the single place an op is added.
CONVERTERS: dict[str, Callable[[_Context, onnx.NodeProto], fx.Node]] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "PRelu": _prelu,
    "Relu": _relu,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary(operator.add),
    "Sub": _binary(operator.sub),
    "Mul": _binary(operator.mul),
    "Div": _binary(operator.truediv),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _global_average_pool,
    "Transpose": _transpose,
    "Concat": _concat,
    "Identity": _identity,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Dropout": _identity,
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Clip": _clip,
}
CONSTANT_OPS = ("Constant",)


def unsupported_ops(proto: onnx.ModelProto) -> list[str]:
    """The op types of ``proto`` that cannot be converted, sorted (empty when all can)."""
    return sorted({n.op_type for n in proto.graph.node if n.op_type not in CONVERTERS and n.op_type not in CONSTANT_OPS
                   or n.domain not in ("", "ai.onnx")})


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            ranks[info.name] = len(info.type.tensor_type.shape.dim)
    return ranks


def to_torch(proto: onnx.ModelProto, name: str = "ImportedFaceModel") -> fx.GraphModule:
    """``proto`` (one image input, outputs in graph order) as a GraphModule computing the same outputs."""
    missing = unsupported_ops(proto)
    if missing:
        raise ConfigError(f"op types the SDK cannot represent: {', '.join(missing)}")
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    ctx = _Context(nn.Module(), fx.Graph(), dict(initializers), _ranks(proto))
    for info in inputs:
        ctx.values[info.name] = ctx.graph.placeholder(info.name.replace(".", "_").replace(":", "_") or "input")
    for node in proto.graph.node:
        if node.op_type == "Constant":
            ctx.values[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
            continue
        ctx.values[node.output[0]] = CONVERTERS[node.op_type](ctx, node)
    outputs = [ctx.tensor(o.name) for o in proto.graph.output]
    ctx.graph.output(outputs[0] if len(outputs) == 1 else tuple(outputs))
    module = CardedGraphModule(ctx.root, ctx.graph, class_name=name)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module.eval()
