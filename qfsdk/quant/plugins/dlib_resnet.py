"""dlib_resnet's quantization layers: its affine finishes its convs as a BatchNorm does, so the
onnxruntime placement quantizes its output (folded into the conv on export). Its padded residual
add is a ResidualAdd already."""

from __future__ import annotations

from qfsdk.models.dlib_resnet import Affine

from ..modules import OutputQuantMixin
from ..registry import register_quant_module


def register() -> None:
    register_quant_module(Affine, OutputQuantMixin, ("onnxruntime",), after_conv_only=True)
