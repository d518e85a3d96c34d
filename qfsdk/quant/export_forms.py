"""Quantizers' export forms: the exact integer parameters of a calibrated quantizer and the torch ops
that the TorchScript exporter writes as ONNX QuantizeLinear/DequantizeLinear (or ``qfsdk::FakeQuantize``).

Activations go through ``torch.fake_quantize_per_tensor_affine`` (written as Q/DQ with constant
scales); weights through a small autograd Function whose ``symbolic`` emits int8 codes followed by
``DequantizeLinear(axis=0)``. Sub-8-bit activations clip to their sub-range first, so the int8 codes
stay on the k-bit grid; alternatively (``act_plugin``) a sub-8-bit activation quantizer is one custom
node ``qfsdk::FakeQuantize`` with the TensorRT plugin attributes (the converters attach its ONNX
reference body). The quantizers build these forms themselves (:mod:`qfsdk.quant.modules`), so what
PyTorch computes and what the file stores come from one formula.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.onnx import register_custom_op_symbolic, symbolic_helper

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
