"""Small, exact ONNX graph edits (no constant folding: Q/DQ and int8 initializers survive)."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def constants_to_initializers(proto: onnx.ModelProto) -> None:
    """Move tensor-valued Constant nodes into initializers, named after their output."""
    graph = proto.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t), node.output[0])
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def remove_unused_initializers(proto: onnx.ModelProto) -> None:
    """Drop initializers no node reads (e.g. float weights replaced by int8 codes)."""
    graph = proto.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    removed = {init.name for init in graph.initializer if init.name not in used}
    kept = [init for init in graph.initializer if init.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs = [value for value in graph.input if value.name not in removed]
    del graph.input[:]
    graph.input.extend(inputs)


def bypass_identities(proto: onnx.ModelProto) -> None:
    """Remove Identity nodes (the exporter adds them for deduplicated initializers)."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.output[0] not in outputs}

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    del graph.node[:]
    graph.node.extend(kept)


def split_shared_qdq(proto: onnx.ModelProto) -> None:
    """Give every consumer of a shared ``QuantizeLinear -> DequantizeLinear`` pair its own copy.

    The TorchScript exporter merges identical Q/DQ chains (e.g. a residual block's input feeding
    both its first conv and its skip add); TensorRT and ONNX Runtime want one DQ per consumer.
    """
    graph = proto.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        if node.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(node.input[0])
        users = consumers.get(node.output[0], [])
        if quantize is None or quantize.op_type != "QuantizeLinear" or len(users) < 2:
            continue
        for k, user in enumerate(users[1:], start=1):
            q_copy = onnx.helper.make_node("QuantizeLinear", list(quantize.input), [f"{quantize.output[0]}_c{k}"], name=f"{quantize.name}_c{k}")
            dq_inputs = [q_copy.output[0], *node.input[1:]]
            dq_copy = onnx.helper.make_node("DequantizeLinear", dq_inputs, [f"{node.output[0]}_c{k}"], name=f"{node.name}_c{k}")
            new_nodes.extend([q_copy, dq_copy])
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = dq_copy.output[0]
    del graph.node[:]
    graph.node.extend(new_nodes)
