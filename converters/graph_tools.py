"""Small, exact ONNX graph edits (no constant folding: Q/DQ and int8 initializers survive)."""

from __future__ import annotations

import numpy as np
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


def unshare_prelu_slopes(proto: onnx.ModelProto) -> int:
    """Give every PRelu its own slope initializer; returns the number of copies made.

    The TorchScript exporter stores identical tensors once (a freshly initialised network's slopes
    are all 0.25), and OpenVINO fuses a PRelu into the convolution before it only when no other node
    reads its slope: a shared slope leaves it a separate pass over the activations (iresnet50 W8A8
    on OpenVINO, 2 cores: 43 -> 54 images/s).
    """
    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    _, consumers = node_links(graph)
    copies = 0
    for node in graph.node:
        slope = node.input[1] if node.op_type == "PRelu" and len(node.input) > 1 else None
        if slope not in inits or len(consumers[slope]) < 2 or consumers[slope][0] is node:
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[slope])
        copy.name = f"{node.name or node.output[0]}_slope"
        graph.initializer.append(copy)
        node.input[1] = copy.name
        copies += 1
    return copies


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


def _per_channel(values: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``values`` as a (channels,) float64 vector if it broadcasts along axis 1 of a rank-``rank`` tensor."""
    if values is None or values.size != channels or values.ndim > rank:
        return None
    shape = (1,) * (rank - values.ndim) + values.shape
    return values.astype(np.float64).reshape(-1) if shape[:2] == (1, channels) and set(shape[2:]) <= {1} else None


def _scale_shift_after(layer: onnx.NodeProto, consumers: dict, array, channels: int, rank: int):
    """(factor, shift, nodes) of the per-channel ``x * factor + shift`` that alone reads ``layer``'s
    output: a BatchNormalization, or a Mul by a constant optionally followed by an Add of one."""
    users = consumers.get(layer.output[0], [])
    if len(users) != 1 or len(users[0].output) != 1:
        return None
    node = users[0]
    if node.op_type == "BatchNormalization":
        stats = [array(name) for name in node.input[1:5]]
        if any(s is None or s.size != channels for s in stats):
            return None
        gamma, beta, mean, var = (s.astype(np.float64).reshape(-1) for s in stats)
        factor = gamma / np.sqrt(var + next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
        return factor, beta - mean * factor, [node]

    def constant_operand(op: onnx.NodeProto, data: str) -> np.ndarray | None:
        others = [name for name in op.input if name != data]
        return _per_channel(array(others[0]), channels, rank) if len(op.input) == 2 and len(others) == 1 else None

    factor = constant_operand(node, layer.output[0]) if node.op_type == "Mul" else None
    if factor is None:
        return None
    chain, shift = [node], np.zeros(channels)
    after = consumers.get(node.output[0], [])
    if len(after) == 1 and after[0].op_type == "Add":
        added = constant_operand(after[0], node.output[0])
        if added is not None:
            chain, shift = [node, after[0]], added
    # Only where a quantizer reads the result (DQ -> Conv -> Q is what ONNX Runtime fuses): elsewhere
    # backends fuse the scale/shift themselves, and folding moves float rounding where a dlib
    # affine's shift nearly cancels the scaled output.
    readers = consumers.get(chain[-1].output[0], [])
    return (factor, shift, chain) if readers and all(r.op_type == "QuantizeLinear" for r in readers) else None


def fold_affine_into_weights(proto: onnx.ModelProto) -> int:
    """Fold the per-channel scale/shift that follows a Conv/Gemm with int8 per-channel symmetric
    weights into that layer: a ``BatchNormalization``, or ``Mul``[``-> Add``] by constants (dlib's
    affine layers) that a QuantizeLinear reads.

    ``a (conv(x, q * s) + b) + c = conv(x, sign(a) q * |a| s) + a b + c`` (a BatchNorm has
    ``a = gamma / sqrt(var + eps)``, ``c = beta - a mean``): the int8 codes only change sign, so the
    weights stay on their grid and the result is exact up to float rounding. Returns the number folded.
    """
    graph = proto.graph
    inits = {init.name: init for init in graph.initializer}
    producers, consumers = node_links(graph)

    def array(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    removed: set[int] = set()
    folded = 0
    for layer in list(graph.node):
        if layer.op_type not in ("Conv", "Gemm"):
            continue
        if layer.op_type == "Gemm" and any(a.name == "transB" and a.i != 1 for a in layer.attribute):
            continue
        dq = producers.get(layer.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or len(consumers.get(dq.output[0], [])) != 1:
            continue
        codes, scale = array(dq.input[0]), array(dq.input[1])
        zero_point = array(dq.input[2]) if len(dq.input) > 2 else None
        if codes is None or scale is None or (zero_point is not None and zero_point.any()):
            continue
        if scale.size != codes.shape[0] or len(consumers.get(dq.input[0], [])) != 1:
            continue
        found = _scale_shift_after(layer, consumers, array, codes.shape[0], codes.ndim if layer.op_type == "Conv" else 2)
        if found is None:
            continue
        factor, shift, chain = found
        sign = np.where(factor < 0, -1, 1).astype(np.int8).reshape((-1,) + (1,) * (codes.ndim - 1))
        bias = array(layer.input[2]).astype(np.float64) if len(layer.input) > 2 and layer.input[2] else np.zeros_like(factor)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((codes * sign).astype(np.int8), dq.input[0]))
        inits[dq.input[1]].CopyFrom(numpy_helper.from_array((scale * np.abs(factor)).astype(np.float32), dq.input[1]))
        bias_name = f"{layer.name or layer.output[0]}_folded_bias"
        graph.initializer.append(numpy_helper.from_array((bias * factor + shift).astype(np.float32), bias_name))
        inits[bias_name] = graph.initializer[-1]
        if len(layer.input) > 2:
            layer.input[2] = bias_name
        else:
            layer.input.append(bias_name)
        layer.output[0] = chain[-1].output[0]
        removed.update(id(node) for node in chain)
        folded += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    return folded
