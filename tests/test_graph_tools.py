"""Each graph pass of converters/graph_tools.py on a tiny hand-built graph: the edit it makes, and
ONNX Runtime's outputs before and after it (equal, or within float rounding where it folds)."""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qfsdk.converters.graph_tools import (
    bypass_identities,
    constants_to_initializers,
    fold_affine_into_weights,
    node_links,
    remove_unused_initializers,
    split_shared_qdq,
    unshare_prelu_slopes,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
STEP = 0.01  # the activation quantizer's scale in the folding graphs


def tensor(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def init(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def make_model(nodes: list, outputs: list[str], initializers: list = (), inputs: list | None = None,
               output_shape: list = ("N", 3, 8, 8)) -> onnx.ModelProto:  # fmt: skip
    """A graph reading ``x`` (N, 3, 8, 8) unless ``inputs`` say otherwise, every output ``output_shape``."""
    graph = helper.make_graph(nodes, "g", inputs or [tensor("x", ["N", 3, 8, 8])],
                              [tensor(name, list(output_shape)) for name in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every supported onnxruntime reads
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs on ONNX Runtime's CPU provider, without its own graph rewrites."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def edited(model: onnx.ModelProto, graph_pass: Callable[[onnx.ModelProto], object]) -> tuple[onnx.ModelProto, object]:
    """A copy of ``model`` after ``graph_pass`` (still a valid model), and what the pass returned."""
    result = copy.deepcopy(model)
    returned = graph_pass(result)
    onnx.checker.check_model(result)
    return result, returned


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict | None = None) -> None:
    feeds = feeds or {"x": IMAGE}
    for old, new in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_array_equal(new, old)


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


# ---- node_links -----------------------------------------------------------------------------------------------------


def test_node_links_maps_each_tensor_to_its_producer_and_readers():
    relu = helper.make_node("Relu", ["x"], ["r"], name="relu")
    add = helper.make_node("Add", ["r", "x"], ["y"], name="add")
    producers, consumers = node_links(make_model([relu, add], ["y"]).graph)
    assert {name: node.name for name, node in producers.items()} == {"r": "relu", "y": "add"}
    assert {name: [node.name for node in nodes] for name, nodes in consumers.items()} == {"x": ["relu", "add"], "r": ["add"]}


# ---- constants_to_initializers --------------------------------------------------------------------------------------


def test_constants_to_initializers_moves_tensor_constants_only():
    weights = RNG.standard_normal((1, 3, 1, 1)).astype(np.float32)
    model = make_model([
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(weights)),
        helper.make_node("Constant", [], ["two"], value_float=2.0),  # not a tensor attribute: stays a node
        helper.make_node("Mul", ["x", "c"], ["m"]),
        helper.make_node("Add", ["m", "two"], ["y"]),
    ], ["y"])  # fmt: skip
    after, _ = edited(model, constants_to_initializers)
    assert ops(after) == ["Constant", "Mul", "Add"]
    assert [i.name for i in after.graph.initializer] == ["c"]
    np.testing.assert_array_equal(initializer(after, "c"), weights)
    assert_same_outputs(model, after)


# ---- bypass_identities ----------------------------------------------------------------------------------------------


def test_bypass_identities_reconnects_readers_and_keeps_identities_that_make_graph_outputs():
    model = make_model([
        helper.make_node("Identity", ["b"], ["b1"]),
        helper.make_node("Identity", ["b1"], ["b2"]),
        helper.make_node("Add", ["x", "b2"], ["s"]),
        helper.make_node("Identity", ["s"], ["y"]),  # produces a graph output: must stay
    ], ["y"], [init("b", RNG.standard_normal((1, 3, 1, 1)).astype(np.float32))])  # fmt: skip
    after, _ = edited(model, bypass_identities)
    assert ops(after) == ["Add", "Identity"]
    assert list(after.graph.node[0].input) == ["x", "b"]
    assert_same_outputs(model, after)


# ---- remove_unused_initializers -------------------------------------------------------------------------------------


def test_remove_unused_initializers_drops_them_from_initializers_and_inputs():
    used = init("w", RNG.standard_normal((1, 3, 1, 1)).astype(np.float32))
    unused = init("stale", np.ones(4, np.float32))
    inputs = [tensor("x", ["N", 3, 8, 8]), tensor("stale", [4])]  # an initializer listed as an input (old exporters)
    model = make_model([helper.make_node("Mul", ["x", "w"], ["y"])], ["y"], [used, unused], inputs)
    after, _ = edited(model, remove_unused_initializers)
    assert [i.name for i in after.graph.initializer] == ["w"]
    assert [v.name for v in after.graph.input] == ["x"]
    assert_same_outputs(model, after)


# ---- unshare_prelu_slopes -------------------------------------------------------------------------------------------


def test_unshare_prelu_slopes_gives_each_prelu_its_own_slope():
    slope = np.full((3, 1, 1), 0.25, np.float32)
    model = make_model([
        helper.make_node("PRelu", ["x", "shared"], ["a"], name="p1"),
        helper.make_node("PRelu", ["a", "shared"], ["b"], name="p2"),
        helper.make_node("Neg", ["b"], ["c"]),
        helper.make_node("PRelu", ["c", "own"], ["y"], name="p3"),
    ], ["y"], [init("shared", slope), init("own", np.full((3, 1, 1), 0.5, np.float32))])  # fmt: skip
    after, copies = edited(model, unshare_prelu_slopes)
    assert copies == 1
    slopes = {node.name: node.input[1] for node in after.graph.node if node.op_type == "PRelu"}
    assert slopes == {"p1": "shared", "p2": "p2_slope", "p3": "own"}
    np.testing.assert_array_equal(initializer(after, "p2_slope"), slope)
    assert unshare_prelu_slopes(after) == 0  # nothing left to unshare
    assert_same_outputs(model, after)


# ---- split_shared_qdq -----------------------------------------------------------------------------------------------


def _act_qdq_initializers() -> list[onnx.TensorProto]:
    return [init("s", np.float32(0.02)), init("zp", np.int8(0))]


def test_split_shared_qdq_gives_each_consumer_its_own_pair():
    model = make_model([
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"], name="dq"),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Add", ["d", "r"], ["y"], name="add"),
    ], ["y"], _act_qdq_initializers())  # fmt: skip
    after, _ = edited(model, split_shared_qdq)
    assert sorted(ops(after)) == sorted(["QuantizeLinear", "DequantizeLinear"] * 2 + ["Relu", "Add"])
    _, consumers = node_links(after.graph)
    dequantized = [node.output[0] for node in after.graph.node if node.op_type == "DequantizeLinear"]
    assert [[c.name for c in consumers[name]] for name in dequantized] == [["relu"], ["add"]]
    quantizers = [node for node in after.graph.node if node.op_type == "QuantizeLinear"]
    assert all(list(q.input) == ["x", "s", "zp"] for q in quantizers)
    assert_same_outputs(model, after)


def test_split_shared_qdq_leaves_a_weight_dequantize_alone():
    codes = init("codes", RNG.integers(-127, 128, (1, 3, 1, 1)).astype(np.int8))
    model = make_model([
        helper.make_node("DequantizeLinear", ["codes", "s", "zp"], ["w"]),
        helper.make_node("Add", ["x", "w"], ["a"]),
        helper.make_node("Mul", ["a", "w"], ["y"]),
    ], ["y"], [codes, *_act_qdq_initializers()])  # fmt: skip
    after, _ = edited(model, split_shared_qdq)
    assert after.graph == model.graph
    assert_same_outputs(model, after)


# ---- fold_affine_into_weights ---------------------------------------------------------------------------------------

CODES = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
WEIGHT_SCALE = np.full(4, 0.01, np.float32)
FACTOR = np.array([2.0, -0.5, 1.5, -3.0], np.float32)  # two negative: those channels' codes change sign
SHIFT = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def _conv(weight_zero_point: int = 0) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Conv(x, DQ(int8 codes, per-channel scale, axis 0), bias) -> ``c``."""
    nodes = [helper.make_node("DequantizeLinear", ["codes", "w_scale", "w_zp"], ["w"], name="weight_dq", axis=0),
             helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    inits = [init("codes", CODES), init("w_scale", WEIGHT_SCALE), init("w_zp", np.full(4, weight_zero_point, np.int8)),
             init("bias", np.linspace(-0.5, 0.5, 4).astype(np.float32))]
    return nodes, inits


def _quantized_output(source: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``source`` -> Q/DQ -> ``y``."""
    nodes = [helper.make_node("QuantizeLinear", [source, "s", "zp"], ["yq"], name="out_q"),
             helper.make_node("DequantizeLinear", ["yq", "s", "zp"], ["y"], name="out_dq")]
    return nodes, [init("s", np.float32(STEP)), init("zp", np.int8(0))]


def _affine_model(kind: str, weight_zero_point: int = 0, quantized: bool = True) -> onnx.ModelProto:
    """Conv -> (BatchNormalization | Mul -> Add) -> ``n`` -> Q/DQ -> ``y``; ``n`` is an output too.

    ``quantized=False`` reads ``n`` with a Relu instead of a QuantizeLinear.
    """
    nodes, inits = _conv(weight_zero_point)
    if kind == "batchnorm":
        nodes.append(helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn"))
        inits += [init("gamma", FACTOR), init("beta", SHIFT), init("mean", np.linspace(-1, 1, 4).astype(np.float32)),
                  init("var", np.linspace(0.5, 2, 4).astype(np.float32))]
    else:
        nodes += [helper.make_node("Mul", ["c", "factor"], ["m"], name="mul"),
                  helper.make_node("Add", ["m", "shift"], ["n"], name="add")]
        inits += [init("factor", FACTOR.reshape(1, 4, 1, 1)), init("shift", SHIFT.reshape(4, 1, 1))]
    reader = _quantized_output("n") if quantized else ([helper.make_node("Relu", ["n"], ["y"])], [])
    return make_model(nodes + reader[0], ["y", "n"], inits + reader[1], output_shape=["N", 4, 8, 8])


def _assert_folded_outputs_match(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The float output within float rounding; the quantized one on the same grid, a step apart at most."""
    (old_y, old_n), (new_y, new_n) = run(before, {"x": IMAGE}), run(after, {"x": IMAGE})
    np.testing.assert_allclose(new_n, old_n, rtol=1e-5, atol=1e-5)
    assert np.abs(new_y - old_y).max() <= STEP * 1.001 and np.mean(new_y == old_y) > 0.99


@pytest.mark.parametrize("kind", ["batchnorm", "mul-add"])
def test_fold_affine_into_weights_folds_the_scale_and_shift_into_the_codes_and_bias(kind):
    model = _affine_model(kind)
    after, folded = edited(model, fold_affine_into_weights)
    assert folded == 1
    assert ops(after) == ["DequantizeLinear", "Conv", "QuantizeLinear", "DequantizeLinear"]
    conv = after.graph.node[1]
    assert conv.output[0] == "n" and conv.input[2] == "conv_folded_bias"
    if kind == "batchnorm":
        factor = FACTOR / np.sqrt(np.linspace(0.5, 2, 4) + 1e-5)
    else:
        factor = FACTOR.astype(np.float64)
    np.testing.assert_array_equal(initializer(after, "codes"), CODES * np.sign(factor).astype(np.int8).reshape(4, 1, 1, 1))
    np.testing.assert_allclose(initializer(after, "w_scale"), WEIGHT_SCALE * np.abs(factor), rtol=1e-6)
    _assert_folded_outputs_match(model, after)


def test_fold_affine_into_weights_folds_a_gemm_with_transposed_weights():
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    nodes = [helper.make_node("DequantizeLinear", ["codes", "w_scale", "w_zp"], ["w"], axis=0),
             helper.make_node("Gemm", ["x", "w"], ["c"], name="fc", transB=1),
             helper.make_node("Mul", ["c", "factor"], ["n"])]
    inits = [init("codes", RNG.integers(-127, 128, (4, 6)).astype(np.int8)), init("w_scale", WEIGHT_SCALE),
             init("w_zp", np.zeros(4, np.int8)), init("factor", FACTOR)]
    reader, reader_inits = _quantized_output("n")
    model = make_model(nodes + reader, ["y", "n"], inits + reader_inits, [tensor("x", ["N", 6])], ["N", 4])
    after, folded = edited(model, fold_affine_into_weights)
    assert folded == 1 and ops(after) == ["DequantizeLinear", "Gemm", "QuantizeLinear", "DequantizeLinear"]
    (old_y, old_n), (new_y, new_n) = run(model, {"x": x}), run(after, {"x": x})
    np.testing.assert_allclose(new_n, old_n, rtol=1e-5, atol=1e-5)
    assert np.abs(new_y - old_y).max() <= STEP * 1.001


@pytest.mark.parametrize(
    "model",
    [_affine_model("mul-add", quantized=False), _affine_model("batchnorm", weight_zero_point=1)],
    ids=["no-quantizer-reads-it", "nonzero-weight-zero-point"],
)
def test_fold_affine_into_weights_leaves_what_it_cannot_fold_exactly(model):
    after, folded = edited(model, fold_affine_into_weights)
    assert folded == 0 and after.graph == model.graph
    assert_same_outputs(model, after)
