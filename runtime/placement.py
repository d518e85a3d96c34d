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
from pathlib import Path

from .metadata import ENGINE_SUFFIXES, ModelFileError, read_onnx_metadata

QUANT_CONFIG_KEY = "qfsdk.quant_config"
# placement scheme -> the backends it is made for (qfsdk.quant.schemes is the registry of schemes)
MADE_FOR: dict[str, tuple[str, ...]] = {
    "tensorrt": ("tensorrt", "openvino"),
    "quantface": ("tensorrt", "openvino"),
    "onnxruntime": ("onnxruntime",),
}
# backend -> (the scheme to calibrate a model for it with, what the wrong placement costs there)
RIGHT_SCHEME: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "ONNX Runtime runs its convs in float between the Q/DQ pairs (slow)"),
    "openvino": ("tensorrt", "OpenVINO runs its extra Q/DQ pairs on conv outputs (slower)"),
    "tensorrt": ("tensorrt", "TensorRT cannot fuse its Q/DQ on conv outputs and into PReLU (slower)"),
}
ZERO_POINTS_ON_TENSORRT = "its activations have zero points (--asymmetric-acts), which TensorRT cannot run"
NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}
INSTALL_HINT = {"openvino": "pip install 'qfsdk[openvino]'", "tensorrt": "a GPU with the tensorrt extra"}


def placement_note(model_path: str | Path, backend: str) -> str | None:
    """One short line for a quantized ONNX file whose placement is made for another backend than
    ``backend``: what it costs there and the two ways out (a backend the file is made for, or the
    flags that make the right file); None when it fits (or is float, or an engine, or carries no
    quantization metadata)."""
    path = Path(model_path)
    if path.suffix.lower() in ENGINE_SUFFIXES or backend not in RIGHT_SCHEME:
        return None
    try:
        config = json.loads(read_onnx_metadata(path)[QUANT_CONFIG_KEY])
        scheme = config["scheme"]
        bits = f"W{int(config['weight_bits'])}A{int(config['act_bits'])}"
    except (ModelFileError, KeyError, TypeError, ValueError):
        return None  # not a qfsdk quantized file: nothing to say (the contract read reports real errors)
    made_for = MADE_FOR.get(scheme)
    asymmetric = config.get("asymmetric_acts") is True  # zero points: not for TensorRT
    if made_for is not None and asymmetric:
        made_for = tuple(b for b in made_for if b != "tensorrt")
    if made_for is None or backend in made_for:
        return None
    right, cost = RIGHT_SCHEME[backend]  # `convert` then defaults to the right target
    if asymmetric and backend == "tensorrt":
        return f"{path}: {bits}: {ZERO_POINTS_ON_TENSORRT}; calibrate it without --asymmetric-acts for TensorRT"
    flag = " --asymmetric-acts" if asymmetric else ""
    other = next((b for b in reversed(made_for) if b != "tensorrt"), made_for[0])
    run_there = f"run it on {NAMES[other]} ({INSTALL_HINT[other]}) or " if backend == "onnxruntime" else ""
    return f"{path}: {bits}, {scheme} placement: {cost}; {run_there}remake it with `calibrate --scheme {right}{flag}`"
