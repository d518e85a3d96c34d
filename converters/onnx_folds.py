"""Exact graph rewrites ``qfsdk import`` makes before conversion (the import then verifies the whole graph).

* :func:`fold_constants`: a node computed from initializers only (or a Shape of a tensor whose shape
  is static) becomes an initializer, evaluated by ONNX's reference implementation: exporters compute
  PReLU slopes, weights and Reshape targets so.
* :func:`fold_prelus`: the PReLU decompositions TensorFlow and Keras converters emit become one PRelu,
  so it quantizes as one ``nn.PReLU``: ``Relu(x) + k * (x - Abs(x))`` (slope ``2k``, TFLite and
  sirius-ai's MobileFaceNet), ``Relu(x) - k * Relu(Neg(x))`` (slope ``k``) and
  ``Relu(x) + k * Relu(Neg(x))`` (slope ``-k``, Keras' ``PReLU`` layer), ``k`` a product of constant
  multipliers. It fires only where every intermediate value has that one consumer and the slope
  broadcasts onto ``x`` without growing it.
* :func:`hoist_prelus`: a PRelu whose slope runs along a Transpose's output axis other than 1 (an NHWC
  slope of shape (C,)) moves in front of the Transpose, slope permuted, where it is per channel.
* :func:`cancel_transposes`: ``Transpose(p)`` followed by ``Transpose(inverse of p)`` is removed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .graph_tools import node_links

SHAPE_OPS = ("Shape", "Size")  # their output depends on the input's shape only


def _static_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> its inferred dims (None where symbolic or unknown)."""
    inferred = shape_inference.infer_shapes(proto)
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim)
    return shapes


def fold_constants(proto: onnx.ModelProto) -> int:
    """Replace every node whose value is known before run time by initializers, shapes inferred anew
    after each sweep (a Reshape whose target folded has a static shape next); returns the number folded."""
    total = 0
    while folded := _fold_sweep(proto):
        total += folded
    return total


def _fold_sweep(proto: onnx.ModelProto) -> int:
    graph = proto.graph
    shapes = _static_shapes(proto)
    initializers = {init.name: init for init in graph.initializer}
    kept, folded = [], 0
    for node in graph.node:
        feeds = _known_inputs(node, initializers, shapes)
        if feeds is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, _evaluate(node, feeds, proto.opset_import)):
            graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            initializers[name] = graph.initializer[-1]
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    return folded


def _evaluate(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opsets: Iterable[onnx.OperatorSetIdProto]) -> list[np.ndarray]:
    """``node``'s outputs on ``feeds`` under the model's opsets (a lone NodeProto would get the newest)."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in feeds.items()]
    graph = helper.make_graph([node], "fold", inputs, [helper.make_empty_tensor_value_info(n) for n in node.output])
    return ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets)).run(None, feeds)


def _known_inputs(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], shapes: dict) -> dict[str, np.ndarray] | None:
    """The inputs to evaluate ``node`` with, or None when its value is only known at run time."""
    if node.domain not in ("", "ai.onnx") or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    if node.op_type in SHAPE_OPS:
        shape = shapes.get(node.input[0])
        return {node.input[0]: np.zeros(shape, np.float32)} if shape is not None and None not in shape else None
    names = [name for name in node.input if name]
    if not names and node.op_type != "Constant":  # e.g. RandomNormal: no inputs, yet not a constant
        return None
    return {name: numpy_helper.to_array(initializers[name]) for name in names} if all(n in initializers for n in names) else None


class _View:
    """A graph's links and constants, for matching (initializers converted when first asked for)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producers, self.consumers = node_links(graph)
        self.outputs = {o.name for o in graph.output}
        self._initializers = {init.name: init for init in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}

    def constant(self, name: str) -> np.ndarray | None:
        if name not in self._arrays and name in self._initializers:
            self._arrays[name] = numpy_helper.to_array(self._initializers[name])
        return self._arrays.get(name)

    def made_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def private(self, node: onnx.NodeProto) -> bool:
        """Whether ``node``'s one output has a single reader and is no graph output."""
        return len(node.output) == 1 and len(self.consumers.get(node.output[0], [])) == 1 and node.output[0] not in self.outputs


def _negative_part(view: _View, name: str, x: str) -> tuple[np.ndarray, list[onnx.NodeProto]] | None:
    """(c, nodes) where ``name`` is ``c * min(x, 0)`` computed by ``nodes``: constant Muls down to
    ``x - Abs(x)`` (= 2 min(x, 0)) or ``Relu(Neg(x))`` (= -min(x, 0))."""
    scale, nodes = np.float32(1), []
    node = view.producers.get(name)
    while node is not None and node.op_type == "Mul":
        constant = [i for i, n in enumerate(node.input) if view.constant(n) is not None]
        if len(constant) != 1:
            return None
        scale = scale * view.constant(node.input[constant[0]])
        nodes.append(node)
        node = view.producers.get(node.input[1 - constant[0]])
    if node is None:
        return None
    if node.op_type == "Sub" and node.input[0] == x and (absolute := view.made_by(node.input[1], "Abs")) and absolute.input[0] == x:
        return scale * 2, [*nodes, node, absolute]
    if node.op_type == "Relu" and (negated := view.made_by(node.input[0], "Neg")) and negated.input[0] == x:
        return -scale, [*nodes, node, negated]
    return None


def _broadcasts_onto(slope: np.ndarray, shape: tuple[int | None, ...] | None) -> bool:
    """Whether ``slope`` broadcasts onto a tensor of ``shape`` without changing it (ONNX PRelu's rule)."""
    if shape is None or slope.ndim > len(shape):
        return False
    return all(s == 1 or s == d for s, d in zip(slope.shape[::-1], shape[::-1]))


def _match_prelu(view: _View, node: onnx.NodeProto, shapes: dict) -> tuple[str, np.ndarray, list[onnx.NodeProto]] | None:
    """(x, slope, the nodes replaced) when ``node`` (an Add or Sub) ends a decomposed PReLU of x."""
    orders = {"Add": ((0, 1), (1, 0)), "Sub": ((0, 1),)}.get(node.op_type, ())
    for positive, negative in orders:
        relu = view.made_by(node.input[positive], "Relu")
        found = _negative_part(view, node.input[negative], relu.input[0]) if relu is not None else None
        if found is None:
            continue
        scale, nodes = found
        slope = (scale if node.op_type == "Add" else -scale).astype(np.float32)
        chain = [relu, *nodes]
        if all(view.private(n) for n in chain) and _broadcasts_onto(slope, shapes.get(relu.input[0])):
            return relu.input[0], _drop_leading_ones(slope), chain
    return None


def _drop_leading_ones(slope: np.ndarray) -> np.ndarray:
    """(1, C, 1, 1) -> (C, 1, 1), the form PyTorch exports; all ones -> a scalar."""
    first = next((i for i, d in enumerate(slope.shape) if d != 1), slope.ndim)
    return slope.reshape(slope.shape[first:])


def fold_prelus(proto: onnx.ModelProto) -> int:
    """Rewrite each decomposed PReLU (module docstring) into one PRelu node; returns the number folded."""
    graph = proto.graph
    view, shapes = _View(graph), _static_shapes(proto)
    replaced: dict[str, onnx.NodeProto | None] = {}  # a node's first output -> its replacement (None: removed)
    for node in graph.node:
        match = _match_prelu(view, node, shapes) if node.output[0] not in replaced else None
        if match is None or any(n.output[0] in replaced for n in match[2]):
            continue
        x, slope, chain = match
        name = node.name or node.output[0]
        graph.initializer.append(numpy_helper.from_array(slope, f"{name}_prelu_slope"))
        replaced.update({n.output[0]: None for n in chain})
        replaced[node.output[0]] = helper.make_node("PRelu", [x, graph.initializer[-1].name], [node.output[0]], name=f"{name}_prelu")
    nodes = [replaced.get(n.output[0], n) if n.output else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in nodes if n is not None)
    return sum(1 for n in replaced.values() if n is not None)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _per_channel(slope: np.ndarray, rank: int) -> bool:
    """Whether a PRelu slope holds one value per channel of axis 1 (or one value), as nn.PReLU does."""
    full = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)
    return slope.size == 1 or (rank > 1 and all(d == 1 for i, d in enumerate(full.shape) if i != 1))


def hoist_prelus(proto: onnx.ModelProto) -> int:
    """``PRelu(Transpose(y, p), s)`` -> ``Transpose(PRelu(y, s'), p)`` where only that moves the slope
    onto axis 1 and the Transpose feeds only the PRelu; returns the number moved."""
    graph = proto.graph
    moved, view = 0, _View(graph)
    for j in range(len(graph.node)):
        prelu = graph.node[j]
        transpose = view.made_by(prelu.input[0], "Transpose") if prelu.op_type == "PRelu" else None
        perm = _perm(transpose) if transpose is not None else None
        slope = view.constant(prelu.input[1]) if perm is not None else None
        if slope is None or not view.private(transpose) or slope.ndim > len(perm) or _per_channel(slope, len(perm)):
            continue
        full = slope.reshape((1,) * (len(perm) - slope.ndim) + slope.shape)
        hoisted = _drop_leading_ones(np.ascontiguousarray(full.transpose(np.argsort(perm))))
        if not _per_channel(hoisted, len(perm)):
            continue
        graph.initializer.append(numpy_helper.from_array(hoisted, f"{prelu.name or prelu.output[0]}_hoisted_slope"))
        y, middle, out = transpose.input[0], transpose.output[0], prelu.output[0]
        i = next(k for k, n in enumerate(graph.node) if middle in n.output)
        prelu.input[:] = [y, graph.initializer[-1].name]
        prelu.output[0] = middle
        transpose.input[0], transpose.output[0] = middle, out
        earlier = onnx.NodeProto()  # the PRelu now runs where the Transpose did, and the Transpose after it
        earlier.CopyFrom(prelu)
        prelu.CopyFrom(transpose)
        graph.node[i].CopyFrom(earlier)
        moved, view = moved + 1, _View(graph)
    return moved


def cancel_transposes(proto: onnx.ModelProto) -> int:
    """Remove ``Transpose(Transpose(y, p), q)`` where q undoes p (readers take y); returns the number removed."""
    graph = proto.graph
    view = _View(graph)
    alias: dict[str, str] = {}
    for node in graph.node:
        first = view.made_by(node.input[0], "Transpose") if node.op_type == "Transpose" else None
        p, q = (_perm(first), _perm(node)) if first is not None else (None, None)
        if p is None or q is None or len(p) != len(q) or node.output[0] in view.outputs:
            continue
        if all(p[q[i]] == i for i in range(len(q))):
            alias[node.output[0]] = alias.get(first.input[0], first.input[0])
    for node in graph.node:
        node.input[:] = [alias.get(name, name) for name in node.input]
    prune(graph)
    return len(alias)


def prune(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read (ONNX ops have no side effects)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
