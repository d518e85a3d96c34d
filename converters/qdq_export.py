"""Export a calibrated qfsdk quantized model to ONNX with QuantizeLinear/DequantizeLinear nodes.

The placement is the model's own (its quantizers); the target decides the quantizer form:
``tensorrt`` needs symmetric int8 (zero point 0), so asymmetric (QuantFace) quantizers are
widened to symmetric ones first; ``onnxruntime`` and ``openvino`` run nonzero zero points, so
QuantFace models export exactly.

``act_plugin`` writes each sub-8-bit activation quantizer as one ``qfsdk::FakeQuantize`` node
(TensorRT plugin attributes, plus a model-local ONNX function so ONNX Runtime runs it) instead of
Clip + int8 Q/DQ: exact k-bit semantics for accuracy studies, at the cost of TensorRT's Q/DQ fusion.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import onnx
import torch
from torch import nn

from qfsdk.errors import QfsdkError
from qfsdk.models.card import card_of
from qfsdk.quant.api import quant_config_of
from qfsdk.quant.modules import ActQuantizer, WeightQuantizer, exporting
from qfsdk.quant.schemes import get_scheme
from qfsdk.runtime.metadata import QUANT_CONFIG_KEY
from qfsdk.runtime.placement import made_for
from qfsdk.runtime.files import atomic_output

from .graph_tools import (
    bypass_identities,
    constants_to_initializers,
    fold_affine_into_weights,
    remove_unused_initializers,
    split_shared_qdq,
    unshare_prelu_slopes,
)
from .onnx_export import DEFAULT_OPSET, add_metadata, torchscript_export
from .qdq_forms import attach_plugin_reference


@dataclass(frozen=True)
class Target:
    """What a deployment backend can run (which placement suits it: :mod:`qfsdk.runtime.placement`)."""

    name: str
    symmetric_only: bool
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("tensorrt", True, "TensorRT explicit quantization: symmetric int8, zero point 0"),
        Target("onnxruntime", False, "ONNX Runtime CPU/GPU: int8 Q/DQ, nonzero zero points allowed"),
        Target("openvino", False, "OpenVINO CPU/iGPU: int8 Q/DQ, nonzero zero points allowed"),
    )
}


def default_target(model: nn.Module) -> str:
    """The first backend the model's placement is made for (:func:`qfsdk.runtime.placement.made_for`:
    ``onnxruntime`` for that scheme, ``tensorrt`` for the others, ``openvino`` for their placement with
    asymmetric activations); ``tensorrt`` for float models."""
    card = card_of(model, required=False)
    config = card.quant_config if card is not None else None
    if config is None:
        return "tensorrt"
    get_scheme(config.scheme)  # an unknown scheme fails here, named
    return made_for(config.scheme, config.asymmetric_acts)[0]


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise QfsdkError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def to_symmetric(model: nn.Module) -> nn.Module:
    """A copy whose asymmetric (QuantFace) quantizers are symmetric: each activation range is
    widened to ``[-amax, amax]`` (about one bit of resolution lost; below 8 bits a range that
    starts at 0 keeps it on the unsigned grid) and weights use max |w|."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (ActQuantizer, WeightQuantizer)):
            module.symmetric = True
    return model


def is_symmetric(model: nn.Module) -> bool:
    return all(m.symmetric for m in model.modules() if isinstance(m, (ActQuantizer, WeightQuantizer)))


@contextlib.contextmanager
def export_mode(model: nn.Module, act_plugin: bool = False) -> Iterator[nn.Module]:
    """Every quantizer emits its Q/DQ form (with ``act_plugin``, FakeQuantize below 8 bits) during an export."""
    with exporting(model, "plugin" if act_plugin else "qdq"):
        yield model


def export_quantized(
    model: nn.Module,
    path: str | Path,
    *,
    target: str | None = None,
    contract=None,
    architecture: str | None = None,
    opset: int = DEFAULT_OPSET,
    extra_metadata: dict[str, str] | None = None,
    act_plugin: bool = False,
) -> Path:
    """Write a calibrated quantized model to ``path`` as a Q/DQ ONNX graph for ``target``; atomic.

    The graph has a dynamic batch dimension, per-channel int8 weight initializers and constant
    per-tensor activation scales; the model contract and quantization settings are stored in its
    metadata. ``act_plugin``: sub-8-bit activation quantizers become ``qfsdk::FakeQuantize`` nodes
    (see the module docstring). ``target``: default, the one the model is made for (:func:`default_target`).
    """
    quant_config_of(model)  # a clear error for a model that was never quantized
    spec = get_target(target or default_target(model))
    card = card_of(model)
    contract = contract or card.contract
    architecture = architecture or card.architecture
    if contract is None:
        raise QfsdkError("the model has no preprocessing contract; pass contract=FaceContract(...)")
    if spec.symmetric_only and not is_symmetric(model):
        model = to_symmetric(model)
    was_training = model.training
    model.eval()
    example = torch.zeros(1, 3, *contract.input_size)
    path = Path(path)
    try:
        with atomic_output(path) as tmp, export_mode(model, act_plugin):
            proto = torchscript_export(model, example, tmp, opset)
            constants_to_initializers(proto)
            bypass_identities(proto)
            unshare_prelu_slopes(proto)
            split_shared_qdq(proto)
            fold_affine_into_weights(proto)
            remove_unused_initializers(proto)
            attach_plugin_reference(proto, opset)
            metadata = {"qfsdk.target": spec.name, **quantization_metadata(model), **(extra_metadata or {})}
            add_metadata(proto, contract, architecture, metadata)
            onnx.checker.check_model(proto)
            onnx.save(proto, str(tmp))
    finally:
        model.train(was_training)
    return path


def quantization_metadata(model: nn.Module) -> dict[str, str]:
    """The config, per-layer bit widths and calibration source, as metadata strings."""
    config = quant_config_of(model)
    layers = {}
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if isinstance(quantizer, WeightQuantizer):
            act = getattr(module, "input_quantizer", None)
            layers[name] = {"weight_bits": quantizer.bits, "act_bits": act.bits if act is not None else None}
    return {
        QUANT_CONFIG_KEY: config.to_json(),
        "qfsdk.layer_bits": json.dumps(layers, sort_keys=True),
        "qfsdk.calibration": json.dumps(card_of(model).calibration, sort_keys=True),
    }
