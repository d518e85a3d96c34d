"""Quantizer placement schemes: one registry of what each scheme is and which target it is made for."""

from __future__ import annotations

from dataclasses import dataclass

from qfsdk.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Scheme:
    """A placement: where quantizers go (the module registry's rules name their schemes), how they
    quantize (``symmetric``: int8 with zero point 0) and the deployment target it is made for."""

    name: str
    symmetric: bool
    target: str
    description: str


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("tensorrt", True, "tensorrt",
               "Conv/Gemm inputs and residual skip inputs, symmetric int8 (TensorRT; also what OpenVINO runs fastest)"),
        Scheme("onnxruntime", True, "onnxruntime",
               "tensorrt's placement plus the output of every BatchNorm/affine that finishes a conv (ONNX Runtime QLinearConv)"),
        Scheme("quantface", False, "tensorrt",
               "the paper's asymmetric quantizer after every PReLU and residual add (reproducing QuantFace)"),
    )
}


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``, or a ConfigError that names the choices."""
    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}{did_you_mean(name, SCHEMES)}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
