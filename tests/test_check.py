"""`qfsdk check` on hand-made graphs: each TensorRT rule fails with its own message."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qfsdk.cli import main
from qfsdk.converters import graph_check
from qfsdk.converters.graph_check import check_model


def build_graph(path: Path, *, zp_dtype=np.int8, zp_value=0, act_scale=(0.02,), prelu_after_dq=False,
                computed_scale=False, batch="N", opset=17, weight_dtype=np.int8, weight_axis=0, input_zero_point=True,
                computed_zero_point=False, shared_dq=False, plugin=None, weight_transpose=False) -> Path:
    """Input -> Q/DQ -> Conv (int8 weights -> DQ axis 0) -> [qfsdk::FakeQuantize with ``plugin``'s attributes]
    -> PRelu -> output, with one defect switched on."""
    rng = np.random.default_rng(0)
    weight_channels = (4, 3, 3, 3)[weight_axis]
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(weight_dtype), "w_codes"),
        numpy_helper.from_array(np.full(weight_channels, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(weight_channels, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(act_scale, np.float32) if len(act_scale) > 1 else np.float32(act_scale[0]), "a_scale"),
        numpy_helper.from_array(np.array([zp_value] * len(act_scale), zp_dtype) if len(act_scale) > 1 else zp_dtype(zp_value), "a_zp"),
        numpy_helper.from_array(np.full((4, 1, 1), 0.25, np.float32), "slope"),
        numpy_helper.from_array(np.float32(127.0), "levels"),
    ]
    nodes = []
    scale = "a_scale"
    if computed_scale:
        nodes += [helper.make_node("Abs", ["x"], ["absx"], name="abs"),
                  helper.make_node("ReduceMax", ["absx"], ["amax"], name="amax", keepdims=0),
                  helper.make_node("Div", ["amax", "levels"], ["dyn_scale"], name="scale")]
        scale = "dyn_scale"
    zero_point = ["a_zp"] if input_zero_point else []
    if computed_zero_point:
        nodes.append(helper.make_node("Cast", ["zp_float"], ["dyn_zp"], name="zp", to=TensorProto.INT8))
        inits.append(numpy_helper.from_array(np.float32(0), "zp_float"))
        zero_point = ["dyn_zp"]
    axis = {"axis": 1} if len(act_scale) > 1 else {}
    weight_zero_point = ["w_zp"] if weight_dtype == np.int8 else []  # int32 codes take an int32 zero point or none
    nodes += [
        helper.make_node("QuantizeLinear", ["x", scale, *zero_point], ["xq"], name="input_q", **axis),
        helper.make_node("DequantizeLinear", ["xq", scale, *zero_point], ["xdq"], name="input_dq", **axis),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", *weight_zero_point], ["w"], name="weight_dq",
                         axis=weight_axis),
    ]
    if weight_transpose:  # int8 -> DequantizeLinear -> Transpose -> op: what a bias-free Linear exported as
        nodes.append(helper.make_node("Transpose", ["w"], ["w_t"], name="weight_t", perm=[0, 1, 2, 3]))
    weight = "w_t" if weight_transpose else "w"
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, 8, 8])]
    if shared_dq:
        nodes.append(helper.make_node("Relu", ["xdq"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [batch, 3, 8, 8]))
    if prelu_after_dq:
        nodes += [helper.make_node("PRelu", ["xdq", "slope3"], ["xp"], name="prelu_in"),
                  helper.make_node("Conv", ["xp", weight], ["y"], name="conv", pads=[1, 1, 1, 1])]
        inits.append(numpy_helper.from_array(np.full((3, 1, 1), 0.25, np.float32), "slope3"))
    else:
        nodes.append(helper.make_node("Conv", ["xdq", weight], ["y"], name="conv", pads=[1, 1, 1, 1]))
    opsets = [helper.make_opsetid("", opset)]
    if plugin is not None:
        nodes.append(helper.make_node("FakeQuantize", ["y"], ["yf"], name="fake_quant", domain="qfsdk", **plugin))
        opsets.append(helper.make_opsetid("qfsdk", 1))
    nodes.append(helper.make_node("PRelu", ["yf" if plugin is not None else "y", "slope"], ["out"], name="prelu"))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_check(path: Path):
    return CliRunner().invoke(main, ["check", str(path)])


PLUGIN = {"plugin_namespace": "qfsdk", "plugin_version": "1", "scale": 0.05}  # what `convert --int6-plugin` writes


@pytest.mark.parametrize("options", [{}, {"plugin": PLUGIN}], ids=["qdq", "with-plugin-node"])
def test_conforming_graph_passes(tmp_path, options):
    path = build_graph(tmp_path / "good.onnx", **options)
    assert check_model(path) == []
    result = run_check(path)
    assert result.exit_code == 0, result.output
    assert "ready for TensorRT" in result.output


DEFECTS = [
    pytest.param({"zp_dtype": np.uint8}, "int8-zero-point", "input_q", id="uint8-zero-point"),
    pytest.param({"zp_value": 3}, "zero-point-0", "input_q", id="nonzero-zero-point"),
    pytest.param({"act_scale": (0.02, 0.03, 0.04)}, "per-tensor-activation", "input_q", id="per-channel-activation"),
    pytest.param({"prelu_after_dq": True}, "prelu-float", "prelu_in", id="qdq-into-prelu"),
    pytest.param({"computed_scale": True}, "constant-scale", "input_q", id="computed-scale"),
    pytest.param({"batch": 1}, "dynamic-batch", "x", id="fixed-batch"),
    pytest.param({"opset": 16}, "opset", "model", id="opset-16"),
    pytest.param({"act_scale": (-0.02,)}, "positive-scale", "input_q", id="negative-scale"),
    pytest.param({"act_scale": (float("nan"),)}, "finite-scale", "input_q", id="nan-scale"),
    pytest.param({"computed_zero_point": True}, "constant-zero-point", "input_q", id="computed-zero-point"),
    pytest.param({"input_zero_point": False}, "int8-zero-point", "input_q", id="no-zero-point"),
    pytest.param({"weight_dtype": np.int32}, "int8-weights", "weight_dq", id="int32-weights"),
    pytest.param({"weight_axis": 1}, "weight-axis", "weight_dq", id="weight-scale-on-axis-1"),
    pytest.param({"shared_dq": True}, "one-dq-per-consumer", "input_dq", id="shared-dequantize"),
    pytest.param({"weight_transpose": True}, "weight-into-op", "weight_dq", id="weight-dq-into-transpose"),
    pytest.param({"plugin": {"scale": 0.05}}, "plugin-attributes", "fake_quant", id="plugin-without-attributes"),
    pytest.param({"plugin": {**PLUGIN, "scale": 0.0}}, "positive-scale", "fake_quant", id="plugin-zero-scale"),
]


@pytest.mark.parametrize("defect, rule, node", DEFECTS)
def test_each_defect_is_reported(tmp_path, defect, rule, node):
    path = build_graph(tmp_path / "bad.onnx", **defect)
    assert {violation.rule for violation in check_model(path)} == {rule}  # that rule, and only that one
    result = run_check(path)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if f"[{rule}]" in line]
    assert lines and lines[0].startswith(f"{node}:"), result.output
    assert all(line.endswith(f"[{rule}]") for line in result.output.splitlines()), result.output


def test_every_rule_id_has_a_defect_above():
    rule_ids = set(re.findall(r'Violation\(\s*[^,]+,\s*"([a-z0-9-]+)"', Path(graph_check.__file__).read_text()))
    assert rule_ids == {defect.values[1] for defect in DEFECTS}


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf at all \x00\xff")
    result = run_check(path)
    assert result.exit_code == 1 and "not an ONNX model" in result.output and str(path) in result.output


def test_a_bias_free_linear_exports_with_its_weight_feeding_gemm(tmp_path):
    """MobileFaceNet's ``output_layer.linear`` has no bias: its int8 weight's DequantizeLinear feeds a Gemm
    (transB), not a Transpose -> MatMul that TensorRT cannot fuse; the export passes check."""
    import torch

    import qfsdk
    from qfsdk.converters import export_quantized
    from qfsdk.models import create

    model = create("mobilefacenet", seed=0)
    assert model.output_layer.linear.bias is None
    quantized = qfsdk.calibrate(qfsdk.quantize(model, "w8a8"), torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)))
    path = export_quantized(quantized, tmp_path / "mfn.onnx")
    graph = onnx.load(path).graph
    index = graph_check.GraphIndex.build(onnx.load(path))
    weight_dqs = [n for n in graph.node if n.op_type == "DequantizeLinear" and index.constant(n.input[0]) is not None]
    assert {c.op_type for n in weight_dqs for c in index.consumers[n.output[0]]} == {"Conv", "Gemm"}
    assert check_model(path) == []
