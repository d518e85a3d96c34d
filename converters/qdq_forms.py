"""Quantizers as ONNX QuantizeLinear/DequantizeLinear: exact integer forms of qfsdk's fake-quant.

Activations go through ``torch.fake_quantize_per_tensor_affine``, which the TorchScript exporter
writes as Q/DQ; weights through a small autograd Function whose ``symbolic`` emits int8 codes.
Every scale and zero point is a constant.

Activations (per tensor): ``[Clip] -> QuantizeLinear(int8) -> DequantizeLinear``. Sub-8-bit
activations clip to their sub-range first, so the int8 codes stay on the k-bit grid. Alternatively
(``act_plugin``) a sub-8-bit activation quantizer is one custom node ``qfsdk::FakeQuantize`` with the
TensorRT plugin attributes; a model-local ONNX function of the same name gives ONNX Runtime its
reference body, so the file runs unchanged on CPU (simulation only: TensorRT cannot fuse it).
Weights (per output channel): the integer codes are computed here and stored as an int8
initializer followed by ``DequantizeLinear(axis=0)``.

The QuantFace reference quantizer maps onto the same ops: its ``scale`` multiplies, so
``y_scale = 1 / scale`` and ``y_zero_point = -zero_point``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper
from torch.onnx import register_custom_op_symbolic, symbolic_helper

from qfsdk.quant.fake_quant import asymmetric_params, per_channel_amax, per_channel_min_max, signed_range, symmetric_scale

INT8_MIN, INT8_MAX = -128, 127
PLUGIN_DOMAIN = "qfsdk"  # ONNX domain and TensorRT plugin namespace
PLUGIN_OP = "FakeQuantize"
PLUGIN_VERSION = "1"


@dataclass(frozen=True)
class ActForm:
    """Per-tensor activation quantization: ``q = clamp(round(x / scale) + zero_point, qmin, qmax)``."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @property
    def needs_clip(self) -> bool:
        return (self.qmin, self.qmax) != (INT8_MIN, INT8_MAX)

    @property
    def clip_bounds(self) -> tuple[float, float]:
        """The float range whose codes are exactly [qmin, qmax] (before rounding)."""
        return (self.qmin - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale


@dataclass(frozen=True)
class WeightForm:
    """Per-output-channel weight codes with their DequantizeLinear parameters."""

    codes: np.ndarray  # int8, the weight's shape
    scale: np.ndarray  # float32, (out_channels,)
    zero_point: np.ndarray  # int8, (out_channels,)

    def dequantized(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        codes = self.codes.astype(np.float32) - self.zero_point.astype(np.float32).reshape(shape)
        return torch.from_numpy(codes * self.scale.reshape(shape))


def asymmetric_act_form(x_min: float, x_max: float, bits: int) -> ActForm:
    """The QuantFace quantizer; its range always contains 0, so the zero point fits int8."""
    scale, zero_point = asymmetric_params(torch.tensor(x_min), torch.tensor(x_max), bits)
    half = 2 ** (bits - 1)
    return ActForm(scale=float(1.0 / scale), zero_point=int(-zero_point), qmin=-half, qmax=half - 1)


def symmetric_weight_form(weight: torch.Tensor, bits: int) -> WeightForm:
    qmin, qmax = signed_range(bits, narrow=True)
    scale = symmetric_scale(per_channel_amax(weight), bits, narrow=True)
    codes = torch.clamp(torch.round(weight.detach() / scale), qmin, qmax)
    return WeightForm(
        codes=codes.to(torch.int8).numpy(),
        scale=scale.flatten().float().numpy(),
        zero_point=np.zeros(weight.shape[0], np.int8),
    )


def asymmetric_weight_form(weight: torch.Tensor, bits: int) -> WeightForm | None:
    """The QuantFace weight quantizer; ``None`` when a channel's zero point leaves int8
    (a channel whose weights all share one sign), which int8 DequantizeLinear cannot express."""
    w_min, w_max = per_channel_min_max(weight)
    scale, zero_point = asymmetric_params(w_min, w_max, bits)
    half = 2 ** (bits - 1)
    onnx_zero_point = -zero_point.flatten()
    if onnx_zero_point.min() < INT8_MIN or onnx_zero_point.max() > INT8_MAX:
        return None
    codes = torch.clamp(torch.round(scale * weight.detach() - zero_point), -half, half - 1)
    return WeightForm(
        codes=codes.to(torch.int8).numpy(),
        scale=(1.0 / scale).flatten().float().numpy(),
        zero_point=onnx_zero_point.to(torch.int8).numpy(),
    )


def _const(g, value: np.ndarray | float | int, dtype: torch.dtype):
    return g.op("Constant", value_t=torch.tensor(np.asarray(value), dtype=dtype))


def act_qdq(x: torch.Tensor, form: ActForm) -> torch.Tensor:
    """``[Clip] -> QuantizeLinear -> DequantizeLinear`` as torch's exporter writes them (constant scale)."""
    if form.needs_clip:
        low, high = form.clip_bounds
        x = torch.clamp(x, low, high)
    return torch.fake_quantize_per_tensor_affine(x, form.scale, form.zero_point, INT8_MIN, INT8_MAX)


class WeightDQ(torch.autograd.Function):
    """int8 weight codes -> ``DequantizeLinear(axis=0)``; the float weight input is ignored."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, form: WeightForm) -> torch.Tensor:
        return form.dequantized().to(weight.dtype)

    @staticmethod
    def symbolic(g, weight, form: WeightForm):
        codes = _const(g, form.codes, torch.int8)
        scale = _const(g, form.scale, torch.float32)
        zero_point = _const(g, form.zero_point, torch.int8)
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=0)


class FloatConstant(torch.autograd.Function):
    """A precomputed float array in place of ``weight`` (stored as an initializer)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(value.copy()).to(weight.dtype)

    @staticmethod
    def symbolic(g, weight, value: np.ndarray):
        return g.op("Constant", value_t=torch.from_numpy(value.copy()))


@torch.library.custom_op("qfsdk::fake_quantize", mutates_args=())
def fake_quantize(x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``, rounding half to even."""
    return (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale


@symbolic_helper.parse_args("v", "f", "i", "i", "i")
def _fake_quantize_symbolic(g, x, scale: float, zero_point: int, qmin: int, qmax: int):
    return g.op(
        f"{PLUGIN_DOMAIN}::{PLUGIN_OP}", x, scale_f=scale, zero_point_i=zero_point, qmin_i=qmin, qmax_i=qmax,
        plugin_namespace_s=PLUGIN_DOMAIN, plugin_version_s=PLUGIN_VERSION,
    ).setType(x.type())


# A torch.library op plus a registered symbolic: an autograd Function with a symbolic crashes the
# TorchScript exporter's peephole pass ("Argument passed to at() was not in the map").
register_custom_op_symbolic("qfsdk::fake_quantize", _fake_quantize_symbolic, 1)


def act_plugin(x: torch.Tensor, form: ActForm) -> torch.Tensor:
    """One ``qfsdk::FakeQuantize`` node (exact k-bit fake quantization) in the exported graph."""
    return torch.ops.qfsdk.fake_quantize(x, form.scale, form.zero_point, form.qmin, form.qmax)


def fake_quantize_function(opset: int) -> onnx.FunctionProto:
    """The reference body of ``qfsdk::FakeQuantize`` as a model-local function (Div/Round/Add/Clip/Sub/Mul)."""

    def attribute_constant(output: str, attribute: str, kind: str, type_: int) -> onnx.NodeProto:
        node = helper.make_node("Constant", [], [output])
        node.attribute.append(onnx.AttributeProto(name=kind, ref_attr_name=attribute, type=type_))
        return node

    nodes = [
        attribute_constant("scale_f", "scale", "value_float", onnx.AttributeProto.FLOAT),
        attribute_constant("zero_point_i", "zero_point", "value_int", onnx.AttributeProto.INT),
        attribute_constant("qmin_i", "qmin", "value_int", onnx.AttributeProto.INT),
        attribute_constant("qmax_i", "qmax", "value_int", onnx.AttributeProto.INT),
        helper.make_node("CastLike", ["scale_f", "x"], ["scale"]),
        helper.make_node("CastLike", ["zero_point_i", "x"], ["zero_point"]),
        helper.make_node("CastLike", ["qmin_i", "x"], ["qmin"]),
        helper.make_node("CastLike", ["qmax_i", "x"], ["qmax"]),
        helper.make_node("Div", ["x", "scale"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Add", ["rounded", "zero_point"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "qmin", "qmax"], ["codes"]),
        helper.make_node("Sub", ["codes", "zero_point"], ["centred"]),
        helper.make_node("Mul", ["centred", "scale"], ["y"]),
    ]
    return helper.make_function(
        PLUGIN_DOMAIN, PLUGIN_OP, ["x"], ["y"], nodes, [helper.make_opsetid("", opset)],
        attributes=["scale", "zero_point", "qmin", "qmax", "plugin_namespace", "plugin_version"],
    )


def is_plugin_node(node: onnx.NodeProto) -> bool:
    return node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN


def attach_plugin_reference(proto: onnx.ModelProto, opset: int) -> None:
    """Give ``proto`` the FakeQuantize reference function (and the ``qfsdk`` opset) if it uses the op."""
    if any(is_plugin_node(n) for n in proto.graph.node):
        proto.functions.append(fake_quantize_function(opset))
        if not any(o.domain == PLUGIN_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
