"""TensorRT-readiness lint for Q/DQ ONNX graphs (the rules of explicit quantization).

Each rule is a function ``(GraphIndex) -> Iterator[Violation]`` in ``RULES``; ``check_model``
runs them all. The rules follow NVIDIA's guidance (see DEPLOY_NOTES.md): opset >= 17; activation
Q/DQ per tensor with an int8 zero point of 0 and a constant positive scale; weights as int8
initializers -> DequantizeLinear(axis=0); no Q/DQ feeding PReLU; one DequantizeLinear per consumer;
a dynamic batch dimension. Custom-domain nodes (``qfsdk::FakeQuantize`` from ``convert --int6-plugin``)
are accepted as TensorRT plugin layers when they carry ``plugin_namespace`` and ``plugin_version``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from qfsdk.errors import QfsdkError

from .graph_tools import node_links

MIN_OPSET = 17
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
STANDARD_DOMAINS = ("", "ai.onnx")
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")  # how TensorRT's ONNX parser finds a plugin
WEIGHTED_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> index of the weight input


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node."""

    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message} [{self.rule}]"


@dataclass
class GraphIndex:
    """Lookups over one ONNX graph: producers, consumers, constants."""

    model: onnx.ModelProto
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto) -> "GraphIndex":
        producers, consumers = node_links(model.graph)
        index = cls(model, producers, consumers)
        for init in model.graph.initializer:
            index.constants[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                index.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        return index

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or a Constant output (through Identity)."""
        while name not in self.constants:
            producer = self.producers.get(name)
            if producer is None or producer.op_type != "Identity":
                return None
            name = producer.input[0]
        return self.constants[name]

    def producer_op(self, name: str) -> str | None:
        producer = self.producers.get(name)
        return producer.op_type if producer is not None else None


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return attr.i
    return 1


def rule_opset(index: GraphIndex) -> Iterator[Violation]:
    for opset in index.model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < MIN_OPSET:
            yield Violation("model", "opset", f"opset {opset.version} < {MIN_OPSET}; re-export with opset >= {MIN_OPSET}")


def rule_qdq_parameters(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.op_type not in QDQ_OPS:
            continue
        scale = index.constant(node.input[1])
        if scale is None:
            yield Violation(_name(node), "constant-scale", f"scale '{node.input[1]}' is computed in the graph; TensorRT needs a constant")
        elif not np.all(np.isfinite(scale)):
            yield Violation(_name(node), "finite-scale", "scale holds NaN or infinity: recalibrate the model")
        elif np.any(scale <= 0):
            yield Violation(_name(node), "positive-scale", "scale has values <= 0")
        if len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: uint8 by default for Q; flagged below as a type problem
        zero_point = index.constant(node.input[2])
        if zero_point is None:
            yield Violation(_name(node), "constant-zero-point", f"zero point '{node.input[2]}' is computed in the graph")
            continue
        if zero_point.dtype != np.int8:
            yield Violation(_name(node), "int8-zero-point", f"zero point is {zero_point.dtype}; TensorRT runs signed int8 (S8S8) only")
        if np.any(zero_point != 0):
            yield Violation(_name(node), "zero-point-0", "nonzero zero point; TensorRT supports symmetric quantization only")


def rule_missing_zero_point(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
            yield Violation(_name(node), "int8-zero-point", "QuantizeLinear without a zero point quantizes to uint8; give an int8 zero point of 0")


def _is_weight_dq(index: GraphIndex, node: onnx.NodeProto) -> bool:
    return node.op_type == "DequantizeLinear" and index.constant(node.input[0]) is not None


def rule_per_tensor_activations(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.op_type not in QDQ_OPS or _is_weight_dq(index, node):
            continue
        scale = index.constant(node.input[1])
        if scale is not None and scale.size > 1:
            yield Violation(_name(node), "per-tensor-activation", f"activation scale has {scale.size} values; activations must be quantized per tensor")


def rule_weights(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if not _is_weight_dq(index, node):
            continue
        codes = index.constant(node.input[0])
        if codes.dtype != np.int8:
            yield Violation(_name(node), "int8-weights", f"weight codes are {codes.dtype}; store them as int8")
        scale = index.constant(node.input[1])
        if scale is not None and scale.size > 1 and _axis(node) != 0:
            consumer_ops = {c.op_type for c in index.consumers.get(node.output[0], [])}
            if consumer_ops & {"Conv", "Gemm", "MatMul", "Transpose"}:
                yield Violation(_name(node), "weight-axis", f"per-channel weight scale on axis {_axis(node)}; use axis 0 (output channels)")


WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def rule_weight_feeds_its_op(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if not _is_weight_dq(index, node):
            continue
        others = sorted({c.op_type for c in index.consumers.get(node.output[0], [])} - WEIGHT_OPS)
        if others:
            yield Violation(_name(node), "weight-into-op",
                            f"the weight's DequantizeLinear feeds {', '.join(others)}; TensorRT fuses int8 weights only "
                            "when it feeds the Conv/Gemm/MatMul itself: store the codes in the layout the op reads")


def rule_no_qdq_into_prelu(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.op_type == "PRelu" and index.producer_op(node.input[0]) == "DequantizeLinear":
            yield Violation(_name(node), "prelu-float", "Q/DQ on the PReLU input; TensorRT runs PReLU in float: quantize the next Conv's input instead")


def rule_one_dq_per_consumer(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.op_type == "DequantizeLinear":
            consumers = index.consumers.get(node.output[0], [])
            if len(consumers) > 1:
                names = ", ".join(_name(c) for c in consumers)
                yield Violation(_name(node), "one-dq-per-consumer", f"feeds {len(consumers)} nodes ({names}); give each consumer its own DequantizeLinear")


def rule_dynamic_batch(index: GraphIndex) -> Iterator[Violation]:
    initializers = {init.name for init in index.model.graph.initializer}
    for value in index.model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            yield Violation(value.name, "dynamic-batch", f"input '{value.name}' has a fixed batch size {dims[0].dim_value}; export with a dynamic batch axis")


def rule_plugin_nodes(index: GraphIndex) -> Iterator[Violation]:
    for node in index.nodes:
        if node.domain in STANDARD_DOMAINS:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        missing = [name for name in PLUGIN_ATTRIBUTES if not attributes.get(name)]
        if missing:
            yield Violation(_name(node), "plugin-attributes",
                            f"custom op {node.domain}::{node.op_type} lacks {' and '.join(missing)}; TensorRT looks "
                            "plugins up by op type, plugin_namespace and plugin_version")
        if node.op_type == "FakeQuantize" and not attributes.get("scale", 0) > 0:
            yield Violation(_name(node), "positive-scale", "FakeQuantize scale is missing or <= 0")


RULES: dict[str, Callable[[GraphIndex], Iterator[Violation]]] = {
    "opset": rule_opset,
    "qdq-parameters": rule_qdq_parameters,
    "missing-zero-point": rule_missing_zero_point,
    "per-tensor-activations": rule_per_tensor_activations,
    "weights": rule_weights,
    "weight-into-op": rule_weight_feeds_its_op,
    "prelu": rule_no_qdq_into_prelu,
    "one-dq-per-consumer": rule_one_dq_per_consumer,
    "dynamic-batch": rule_dynamic_batch,
    "plugin-nodes": rule_plugin_nodes,
}


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise QfsdkError(f"{path}: no such file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError/ValueError variants
        raise QfsdkError(f"{path}: not a readable ONNX model ({type(exc).__name__}); export one with `qfsdk convert`") from None


def check_model(model: onnx.ModelProto | str | Path) -> list[Violation]:
    """Every TensorRT-readiness violation in ``model`` (empty when it conforms)."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    index = GraphIndex.build(model)
    return [violation for rule in RULES.values() for violation in rule(index)]
