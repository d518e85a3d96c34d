"""Small, exact ONNX graph edits (no constant folding: Q/DQ and int8 initializers survive)."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def node_links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """(tensor name -> the node producing it, tensor name -> the nodes reading it)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    return producers, consumers


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
    producers, consumers = node_links(graph)
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


def fold_batchnorm_into_weights(proto: onnx.ModelProto) -> int:
    """Fold ``BatchNormalization`` that follows a Conv/Gemm with int8 per-channel symmetric weights.

    ``bn(conv(x, q * s) + b) = conv(x, sign(a) q * |a| s) + (b - mean) a + beta`` with
    ``a = gamma / sqrt(var + eps)``: the int8 codes only change sign, so the weights stay on
    their grid and the result is exact up to float rounding. Returns the number folded.
    """
    import numpy as np

    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    producers, consumers = node_links(graph)

    def array(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    removed: set[int] = set()
    folded = 0
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        layer = producers.get(bn.input[0])
        if layer is None or layer.op_type not in ("Conv", "Gemm") or len(consumers.get(layer.output[0], [])) != 1:
            continue
        if layer.op_type == "Gemm" and any(a.name == "transB" and a.i != 1 for a in layer.attribute):
            continue
        dq = producers.get(layer.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(consumers.get(dq.output[0], [])) != 1:
            continue
        codes, scale = array(dq.input[0]), array(dq.input[1])
        zero_point = array(dq.input[2]) if len(dq.input) > 2 else None
        stats = [array(name) for name in bn.input[1:5]]
        if codes is None or scale is None or any(s is None for s in stats) or (zero_point is not None and zero_point.any()):
            continue
        if scale.size != codes.shape[0] or len(consumers.get(dq.input[0], [])) != 1:
            continue
        gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + eps)
        sign = np.where(factor < 0, -1, 1).astype(np.int8).reshape((-1,) + (1,) * (codes.ndim - 1))
        bias = array(layer.input[2]).astype(np.float64) if len(layer.input) > 2 and layer.input[2] else np.zeros_like(mean)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((codes * sign).astype(np.int8), dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array((scale * np.abs(factor)).astype(np.float32), dq.input[1]))
        bias_name = f"{layer.name or layer.output[0]}_folded_bias"
        graph.initializer.append(numpy_helper.from_array(((bias - mean) * factor + beta).astype(np.float32), bias_name))
        inits[bias_name] = graph.initializer[-1]
        if len(layer.input) > 2:
            layer.input[2] = bias_name
        else:
            layer.input.append(bias_name)
        layer.output[0] = bn.output[0]
        removed.add(id(bn))
        folded += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return folded
