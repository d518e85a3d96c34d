"""Whether a quantized model's Q/DQ placement suits the backend it runs on.

A placement made for another backend gives the same embeddings, only slower: ONNX Runtime's CPU
kernels run a conv in int8 only when its output is quantized too (the ``onnxruntime`` placement),
so a ``tensorrt``-placement file there runs float convs between Q/DQ pairs, often slower than the
float model; OpenVINO and TensorRT run the ``tensorrt`` placement fastest. The placement is the
``scheme`` of the ``qfsdk.quant_config`` metadata that ``qfsdk convert`` writes; activations with zero
points (``asymmetric_acts``) are for the CPU backends only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .metadata import ENGINE_SUFFIXES, QUANT_CONFIG_KEY, ModelFileError, read_onnx_metadata

NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}


@dataclass(frozen=True)
class Placement:
    """A quantizer placement scheme: where quantizers go (the quantization module registry's rules name
    these schemes), how they quantize (``symmetric``: int8 with zero point 0) and the backends that run
    it fastest (``made_for``; the first is ``qfsdk convert``'s default target)."""

    name: str
    symmetric: bool
    made_for: tuple[str, ...]
    description: str

    @property
    def target(self) -> str:
        """The deployment target a model with this placement converts for by default."""
        return self.made_for[0]


# The one table of which placement suits which backend (qfsdk.quant.schemes and convert read it too).
PLACEMENTS: dict[str, Placement] = {
    p.name: p
    for p in (
        Placement("tensorrt", True, ("tensorrt", "openvino"),
                  "Conv/Gemm inputs and residual skip inputs, symmetric int8 (TensorRT; also what OpenVINO runs fastest)"),
        Placement("onnxruntime", True, ("onnxruntime",),
                  "tensorrt's placement plus the output of every BatchNorm/affine that finishes a conv (ONNX Runtime QLinearConv)"),
        Placement("quantface", False, ("tensorrt", "openvino"),
                  "the paper's asymmetric quantizer after every PReLU and residual add (reproducing QuantFace)"),
    )
}
# backend -> (the scheme to calibrate a model for it with, what another placement costs there)
RIGHT_SCHEME: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "ONNX Runtime runs its convs in float between the Q/DQ pairs (slow)"),
    "openvino": ("tensorrt", "OpenVINO runs its extra Q/DQ pairs on conv outputs (slower)"),
    "tensorrt": ("tensorrt", "TensorRT cannot fuse its Q/DQ on conv outputs and into PReLU (slower)"),
}
ZERO_POINTS_ON_TENSORRT = "its activations have zero points (--asymmetric-acts), which TensorRT cannot run"
INSTALL_HINT = {"openvino": "pip install 'qfsdk[openvino]'", "tensorrt": "a GPU with the tensorrt extra"}


def made_for(scheme: str, asymmetric: bool = False) -> tuple[str, ...]:
    """The backends a placement runs fastest on; zero-point activations rule TensorRT out."""
    backends = PLACEMENTS[scheme].made_for
    return tuple(b for b in backends if b != "tensorrt") if asymmetric else backends


def mismatch(scheme: str, asymmetric: bool, backend: str) -> str | None:
    """What a ``scheme`` placement (``asymmetric``: with zero-point activations) costs on ``backend`` and
    the ways out, in words; None when it is made for that backend (or either is unknown)."""
    if scheme not in PLACEMENTS or backend not in RIGHT_SCHEME:
        return None
    fits = made_for(scheme, asymmetric)
    if backend in fits:
        return None
    if asymmetric and backend == "tensorrt":
        return f"{ZERO_POINTS_ON_TENSORRT}; calibrate it without --asymmetric-acts for TensorRT"
    right, cost = RIGHT_SCHEME[backend]  # `convert` then defaults to the right target
    flag = " --asymmetric-acts" if asymmetric else ""
    other = next((b for b in reversed(fits) if b != "tensorrt"), fits[0])
    run_there = f"run it on {NAMES[other]} ({INSTALL_HINT[other]}) or " if backend == "onnxruntime" else ""
    return f"{scheme} placement: {cost}; {run_there}remake it with `calibrate --scheme {right}{flag}`"


def placement_note(model_path: str | Path, backend: str) -> str | None:
    """One short line for a quantized ONNX file whose placement is made for another backend than
    ``backend`` (:func:`mismatch`); None when it fits (or is float, or an engine, or carries no
    quantization metadata)."""
    path = Path(model_path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return None
    try:
        config = json.loads(read_onnx_metadata(path)[QUANT_CONFIG_KEY])
        note = mismatch(config["scheme"], config.get("asymmetric_acts") is True, backend)
        bits = f"W{int(config['weight_bits'])}A{int(config['act_bits'])}"
    except (ModelFileError, KeyError, TypeError, ValueError):
        return None  # not a qfsdk quantized file: nothing to say (the contract read reports real errors)
    return f"{path}: {bits}, {note}" if note else None
