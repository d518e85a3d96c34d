"""`qfsdk check` on hand-made graphs: each TensorRT rule fails with its own message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from qfsdk.cli import main


def build_graph(path: Path, *, zp_dtype=np.int8, zp_value=0, act_scale=(0.02,), prelu_after_dq=False,
                computed_scale=False, batch="N") -> Path:
    """Input -> Q/DQ -> Conv (int8 weights -> DQ axis 0) -> PRelu -> output, with one defect switched on."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8), "w_codes"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
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
    axis = {"axis": 1} if len(act_scale) > 1 else {}
    nodes += [
        helper.make_node("QuantizeLinear", ["x", scale, "a_zp"], ["xq"], name="input_q", **axis),
        helper.make_node("DequantizeLinear", ["xq", scale, "a_zp"], ["xdq"], name="input_dq", **axis),
        helper.make_node("DequantizeLinear", ["w_codes", "w_scale", "w_zp"], ["w"], name="weight_dq", axis=0),
    ]
    if prelu_after_dq:
        nodes += [helper.make_node("PRelu", ["xdq", "slope3"], ["xp"], name="prelu_in"),
                  helper.make_node("Conv", ["xp", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
        inits.append(numpy_helper.from_array(np.full((3, 1, 1), 0.25, np.float32), "slope3"))
    else:
        nodes.append(helper.make_node("Conv", ["xdq", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("PRelu", ["y", "slope"], ["out"], name="prelu"))
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def run_check(path: Path):
    return CliRunner().invoke(main, ["check", str(path)])


def test_conforming_graph_passes(tmp_path):
    result = run_check(build_graph(tmp_path / "good.onnx"))
    assert result.exit_code == 0, result.output
    assert "ready for TensorRT" in result.output


@pytest.mark.parametrize(
    "defect, rule, node",
    [
        ({"zp_dtype": np.uint8}, "int8-zero-point", "input_q"),
        ({"zp_value": 3}, "zero-point-0", "input_q"),
        ({"act_scale": (0.02, 0.03, 0.04)}, "per-tensor-activation", "input_q"),
        ({"prelu_after_dq": True}, "prelu-float", "prelu_in"),
        ({"computed_scale": True}, "constant-scale", "input_q"),
        ({"batch": 1}, "dynamic-batch", "x"),
    ],
    ids=["uint8-zero-point", "nonzero-zero-point", "per-channel-activation", "qdq-into-prelu", "computed-scale", "fixed-batch"],
)
def test_each_defect_is_reported(tmp_path, defect, rule, node):
    result = run_check(build_graph(tmp_path / "bad.onnx", **defect))
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if f"[{rule}]" in line]
    assert lines and lines[0].startswith(f"{node}:"), result.output


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a protobuf at all \x00\xff")
    result = run_check(path)
    assert result.exit_code == 1 and "not a readable ONNX model" in result.output and str(path) in result.output
