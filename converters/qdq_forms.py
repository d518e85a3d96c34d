"""The ONNX side of the ``qfsdk::FakeQuantize`` activation plugin: its model-local reference function.

The quantizers' export forms (Q/DQ parameters and the torch ops the exporter writes) live in
:mod:`qfsdk.quant.export_forms`; this module adds what only an ONNX file needs: the reference body
that lets ONNX Runtime run a graph holding ``qfsdk::FakeQuantize`` nodes.
"""

from __future__ import annotations

import onnx
from onnx import helper

from qfsdk.quant.export_forms import PLUGIN_DOMAIN, PLUGIN_OP


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
