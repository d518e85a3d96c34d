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
import logging
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import onnx
import torch
from torch import nn

from qfsdk.errors import QfsdkError
from qfsdk.quant.api import quant_config_of
from qfsdk.quant.fake_quant import fake_quant_asymmetric
from qfsdk.quant.modules import ActQuantizer, QuantPReLU, WeightQuantizer
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
from .qdq_forms import (
    ActForm,
    FloatConstant,
    WeightDQ,
    act_plugin,
    act_qdq,
    asymmetric_act_form,
    asymmetric_weight_form,
    attach_plugin_reference,
    symmetric_weight_form,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What a deployment backend can run."""

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


# The target a placement scheme is made for, where it is not tensorrt.
SCHEME_TARGETS = {"onnxruntime": "onnxruntime"}


def default_target(model: nn.Module) -> str:
    """``onnxruntime`` for a model quantized with the onnxruntime placement, else ``tensorrt``."""
    config = getattr(model, "quant_config", None)
    return SCHEME_TARGETS.get(config.scheme, "tensorrt") if config is not None else "tensorrt"


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


def act_form(quantizer: ActQuantizer) -> ActForm:
    """The Q/DQ parameters (scale, zero point, integer range) of a calibrated activation quantizer."""
    if not bool(quantizer.has_range):
        raise QfsdkError("an activation quantizer has no range: calibrate the model (qfsdk calibrate) before exporting")
    if quantizer.symmetric:
        qmin, qmax = quantizer.levels()
        return ActForm(scale=float(quantizer.scale()), zero_point=0, qmin=qmin, qmax=qmax)
    return asymmetric_act_form(float(quantizer.x_min), float(quantizer.x_max), quantizer.bits)


def _act_export_forward(self: ActQuantizer, x: torch.Tensor) -> torch.Tensor:
    return act_qdq(x, act_form(self))


def _act_plugin_export_forward(self: ActQuantizer, x: torch.Tensor) -> torch.Tensor:
    """Sub-8-bit: one ``qfsdk::FakeQuantize`` node; 8-bit keeps its Q/DQ pair."""
    form = act_form(self)
    return act_plugin(x, form) if self.bits < 8 else act_qdq(x, form)


def _weight_export_forward(self: WeightQuantizer, weight: torch.Tensor) -> torch.Tensor:
    form = symmetric_weight_form(weight, self.bits) if self.symmetric else asymmetric_weight_form(weight, self.bits)
    if form is None:
        log.info("a %s weight has a channel of one sign: its QuantFace values are stored as float", tuple(weight.shape))
        return FloatConstant.apply(weight, WeightQuantizer.forward(self, weight).detach().numpy())
    return WeightDQ.apply(weight, form)


def _prelu_export_forward(self: QuantPReLU, x: torch.Tensor) -> torch.Tensor:
    # The slope is a constant: bake its fake-quantized value; the output keeps its quantizer.
    slope = self.weight.detach()
    slope = fake_quant_asymmetric(slope, slope.min(), slope.max(), self.slope_bits)
    return self.output_quantizer(torch.nn.functional.prelu(x, slope))


EXPORT_FORWARDS: dict[type, Callable] = {
    ActQuantizer: _act_export_forward,
    WeightQuantizer: _weight_export_forward,
    QuantPReLU: _prelu_export_forward,
}


@contextlib.contextmanager
def export_mode(model: nn.Module, act_plugin: bool = False) -> Iterator[nn.Module]:
    """Route every quantizer through its Q/DQ (or, with ``act_plugin``, FakeQuantize) form during an export."""
    forwards = {**EXPORT_FORWARDS, ActQuantizer: _act_plugin_export_forward} if act_plugin else EXPORT_FORWARDS
    patched = []
    for module in model.modules():
        forward = forwards.get(type(module))
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward


def export_quantized(
    model: nn.Module,
    path: str | Path,
    *,
    target: str = "tensorrt",
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
    (see the module docstring).
    """
    spec = get_target(target)
    quant_config_of(model)  # a clear error for a model that was never quantized
    contract = contract or getattr(model, "contract", None)
    architecture = architecture or getattr(model, "arch", None) or type(model).__name__
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
        "qfsdk.quant_config": config.to_json(),
        "qfsdk.layer_bits": json.dumps(layers, sort_keys=True),
        "qfsdk.calibration": json.dumps(getattr(model, "calibration", None), sort_keys=True),
    }
