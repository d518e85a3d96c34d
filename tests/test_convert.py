"""ONNX Q/DQ export through `qfsdk convert`, checked with real ONNX Runtime and `qfsdk check`."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import qfsdk
from face_photos import face_chips
from qfsdk.cli import main
from qfsdk.converters.parity import export_parity
from qfsdk.models import create

PARITY = 0.9999
CASES = [
    ("dlib_resnet", "w8a8"),
    ("dlib_resnet", "w6a6"),
    ("dlib_resnet", "w4a4"),
    ("mobilefacenet", "w8a8"),
    ("mobilefacenet", "w6a6"),
    ("mobilefacenet", "w4a4"),
    ("iresnet18", "w8a8"),
    ("iresnet18", "w6a6"),
    ("iresnet18", "w4a4"),
    ("iresnet50", "w8a8"),
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_ort(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": batch})[0]


def probe_inputs(model: torch.nn.Module) -> torch.Tensor:
    """Real face chips for the pretrained dlib model; seeded noise for random-weight models."""
    if model.arch == "dlib_resnet":
        return torch.from_numpy(model.contract.preprocess(np.stack(face_chips()[:8])))
    return torch.randn(4, 3, *model.contract.input_size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each case calibrated, saved as a qfsdk checkpoint and converted with the CLI (default target)."""
    root = tmp_path_factory.mktemp("convert")
    results = {}
    runner = CliRunner()
    for arch, bits in CASES:
        torch.manual_seed(0)
        model = create(arch)
        x = probe_inputs(model)
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), bits), x, method="minmax")
        checkpoint = qfsdk.save_quantized(quantized, root / f"{arch}_{bits}.safetensors")
        output = root / f"{arch}_{bits}.onnx"
        result = runner.invoke(main, ["convert", str(checkpoint), "-o", str(output)])
        assert result.exit_code == 0, result.output
        parity = export_parity(quantized, output, x)
        with torch.no_grad():
            float_out = model(x).numpy()
        results[arch, bits] = {
            "onnx": output,
            "checkpoint": checkpoint,
            "summary": result.output,
            "parity": parity,
            "torch_vs_float": cosines(quantized(x).detach().numpy(), float_out).mean(),
            "onnx_vs_float": cosines(run_ort(output, x.numpy()), float_out).mean(),
        }
    return results


@pytest.mark.parametrize("case", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_onnx_runtime_matches_pytorch_quantized_model(exports, case):
    """Exact up to float32 rounding ties: per-sample cosine >= 0.9999 once both take the same rounding decisions.

    A conv that sums in another order moves an activation within ~1e-5 of a step across a rounding
    tie, and a low-bit network amplifies that one flipped code (random-weight MobileFaceNet W6A6:
    6 of 14 million codes give a worst sample of 0.978). So the export is also run with PyTorch forced
    onto ONNX Runtime's values at every quantizer: it must then match, and every code that differed
    must sit next to a tie. Where no code differs, plain parity must hold too.
    """
    result = exports[case]
    parity = result["parity"]
    assert "qfsdk check:  passes" in result["summary"]
    # the summary keeps the two apart: the export is exact, the quantization costs what it costs
    assert "export:       exact: ONNX Runtime vs the PyTorch quantized model" in result["summary"], result["summary"]
    source = "the float model it was made from" if case[0] == "dlib_resnet" else "its own weights without quantizers"
    assert f"quantization: vs {source}: min cosine" in result["summary"], result["summary"]
    assert parity.forced_cosine.min() >= PARITY, parity.summary()
    assert parity.max_tie_distance < 1e-3, parity.summary()
    assert parity.differing_codes < 1e-5 * parity.codes, parity.summary()
    if parity.differing_codes == 0:
        assert parity.cosine.min() >= PARITY, parity.summary()
    assert result["onnx_vs_float"] >= result["torch_vs_float"] - 0.01  # fidelity to the float model is kept


def test_parity_check_catches_a_wrong_scale(exports, tmp_path):
    """The forced comparison is not vacuous: one activation scale 10 % off gives codes far from any tie."""
    arch, bits = "dlib_resnet", "w8a8"
    proto = onnx.load(str(exports[arch, bits]["onnx"]))
    quantize = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and "layers.3" in n.name)
    scale = next(i for i in proto.graph.initializer if i.name == quantize.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(1.1), scale.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    model = qfsdk.load(exports[arch, bits]["checkpoint"])
    parity = export_parity(model, broken, probe_inputs(model))
    assert parity.max_tie_distance > 0.1 and parity.differing_codes > 1000, parity.summary()


def test_exported_graph_follows_tensorrt_rules(exports):
    proto = onnx.load(str(exports["iresnet18", "w6a6"]["onnx"]))
    graph = proto.graph
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("Clip") == ops.count("QuantizeLinear")  # 6-bit: Clip + int8 Q
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert weight_dq and all(initializers[n.input[0]].dtype == np.int8 for n in weight_dq)
    assert all(np.abs(initializers[n.input[0]]).max() <= 31 for n in weight_dq)  # the 6-bit grid inside int8
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["qfsdk.quant_config"])["weight_bits"] == 6
    assert json.loads(metadata["qfsdk.contract"])["embedding_size"] == 512
    assert metadata["qfsdk.target"] == "tensorrt"


def test_unsigned_six_bit_activations_export_as_clip_from_zero(exports):
    """dlib W6A6: post-ReLU quantizers are Clip(0, 63 s) -> int8 Q(s, 0) -> DQ; the stem stays signed."""
    proto = onnx.load(str(exports["dlib_resnet", "w6a6"]["onnx"]))
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    bounds = []
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and producers.get(node.input[0], node).op_type == "Clip":
            clip = producers[node.input[0]]
            low, high = (float(initializers[name]) for name in clip.input[1:3])
            scale = float(initializers[node.input[1]])
            assert int(initializers[node.input[2]]) == 0
            bounds.append((round(low / scale), round(high / scale)))
    assert bounds.count((0, 63)) == len(bounds) - 1 and bounds.count((-32, 31)) == 1


def test_w8a8_file_is_a_quarter_of_float(exports, tmp_path):
    float_path = tmp_path / "iresnet50_fp32.onnx"
    result = CliRunner().invoke(main, ["convert", "iresnet50", "--fp32", "-o", str(float_path)])
    assert result.exit_code == 0, result.output
    ratio = exports["iresnet50", "w8a8"]["onnx"].stat().st_size / float_path.stat().st_size
    assert ratio <= 0.26, ratio


def test_float_export_matches_pytorch(dlib_fp32_onnx):
    model = create("dlib_resnet")
    x = torch.from_numpy(model.contract.preprocess(np.stack(face_chips())))
    with torch.no_grad():
        expected = model(x).numpy()
    assert cosines(expected, run_ort(dlib_fp32_onnx, x.numpy())).min() >= 0.99999


def test_fp16_export_runs_in_the_runtime(tmp_path, dlib_fp32_onnx):
    output = tmp_path / "dlib_fp16.onnx"
    result = CliRunner().invoke(main, ["convert", "dlib_resnet", "--fp16", "-o", str(output)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    assert "min cosine 0.999" in result.output or "min cosine 1.000" in result.output
    from qfsdk.runtime import Embedder

    chips = np.stack(face_chips()[:4])
    with Embedder(dlib_fp32_onnx, "onnxruntime") as fp32, Embedder(output, "onnxruntime") as fp16:
        assert cosines(fp32.embed(chips), fp16.embed(chips)).min() >= 0.9999


def test_simplified_float_export_is_smaller_and_identical(tmp_path, dlib_fp32_onnx):
    pytest.importorskip("onnxsim")
    output = tmp_path / "dlib_simplified.onnx"
    result = CliRunner().invoke(main, ["convert", "dlib_resnet", "--fp32", "--simplify", "-o", str(output)])
    assert result.exit_code == 0, result.output
    plain, simplified = onnx.load(str(dlib_fp32_onnx)), onnx.load(str(output))
    assert len(simplified.graph.node) < len(plain.graph.node) / 2
    assert simplified.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # still a dynamic batch
    assert {p.key for p in simplified.metadata_props} == {p.key for p in plain.metadata_props}
    x = np.random.default_rng(0).standard_normal((3, 3, 150, 150)).astype(np.float32)
    np.testing.assert_allclose(run_ort(output, x), run_ort(dlib_fp32_onnx, x), atol=1e-5)


def test_simplify_refuses_q_dq_graphs(exports, tmp_path):
    checkpoint = exports["mobilefacenet", "w8a8"]["onnx"].with_suffix(".safetensors")
    result = CliRunner().invoke(main, ["convert", str(checkpoint), "--simplify", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "folds int8 weights back to float" in result.output


def test_triton_repository(exports, tmp_path):
    checkpoint_onnx = exports["mobilefacenet", "w8a8"]["onnx"]
    result = CliRunner().invoke(main, ["convert", "mobilefacenet", "--fp32", "-o", str(tmp_path / "mfn.onnx"),
                                       "--triton-repo", str(tmp_path / "repo"), "--max-batch", "32"])
    assert result.exit_code == 0, result.output
    config = (tmp_path / "repo" / "mfn" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 32" in config
    assert "dims: [ 3, 112, 112 ]" in config and "dims: [ 128 ]" in config and "dynamic_batching" in config
    assert (tmp_path / "repo" / "mfn" / "1" / "model.onnx").is_file()
    assert checkpoint_onnx.is_file()


def test_failed_conversion_leaves_no_file(tmp_path):
    model = qfsdk.quantize(create("mobilefacenet"), "w8a8")  # never calibrated: no activation ranges
    checkpoint = qfsdk.save_quantized(model, tmp_path / "uncalibrated.safetensors")
    output = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["convert", str(checkpoint), "-o", str(output)])
    assert result.exit_code == 1 and "calibrate" in result.output
    assert list(tmp_path.iterdir()) == [checkpoint]


def test_bad_input_is_one_clear_line(tmp_path, dlib_fp32_onnx):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(dlib_fp32_onnx), "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "is an ONNX model, not a quantized checkpoint" in result.output
    result = runner.invoke(main, ["convert", "dlib_resnet", "-o", str(tmp_path / "x.onnx")])
    assert result.exit_code == 1 and "--fp32" in result.output
    assert not (tmp_path / "x.onnx").exists()


def openvino_standalone_prelus(path: Path) -> int:
    """PRelu layers OpenVINO's CPU plugin runs as their own pass instead of fusing them into a conv."""
    ov = pytest.importorskip("openvino")
    layers = [op.get_rt_info() for op in ov.Core().compile_model(str(path), "CPU").get_runtime_model().get_ordered_ops()]
    return sum(info["layerType"].astype(str) == "Eltwise" and "prelu" in info["originalLayersNames"].astype(str).lower()
               for info in layers)


def test_every_prelu_has_its_own_slope_so_openvino_fuses_it(exports, tmp_path):
    """The exporter stores identical slopes once; OpenVINO then leaves those PRelus unfused."""
    float_path = tmp_path / "mobilefacenet_fp32.onnx"
    result = CliRunner().invoke(main, ["convert", "mobilefacenet", "--fp32", "-o", str(float_path)])
    assert result.exit_code == 0, result.output
    for path in (exports["mobilefacenet", "w8a8"]["onnx"], float_path):
        graph = onnx.load(str(path)).graph
        slopes = [n.input[1] for n in graph.node if n.op_type == "PRelu"]
        readers = [sum(name in n.input for n in graph.node) for name in slopes]
        assert len(slopes) > 10 and readers == [1] * len(slopes), path.name
        assert openvino_standalone_prelus(path) == 0, path.name


def test_onnxruntime_placement_runs_every_conv_in_int8_on_onnx_runtime(tmp_path):
    """``--scheme onnxruntime`` checkpoints convert for ONNX Runtime by default, which then fuses each
    conv into QLinearConv; TensorRT is refused with the fix named."""
    torch.manual_seed(0)
    model = create("iresnet18")
    x = probe_inputs(model)
    config = {"preset": "w8a8", "scheme": "onnxruntime"}
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), config), x, method="minmax")
    checkpoint = qfsdk.save_quantized(quantized, tmp_path / "iresnet18_ort.safetensors")
    output = tmp_path / "iresnet18_ort.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(checkpoint), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert "target:       onnxruntime" in result.output and "onnxruntime placement" in result.output
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 21 and "Conv" not in ops
    assert export_parity(quantized, output, x).forced_cosine.min() >= PARITY

    refused = tmp_path / "iresnet18_trt.onnx"
    result = runner.invoke(main, ["convert", str(checkpoint), "-o", str(refused), "--target", "tensorrt"])
    assert result.exit_code != 0 and "--scheme tensorrt" in result.output and not refused.exists()


def test_onnxruntime_target_of_the_tensorrt_placement_says_how_to_get_int8_convs(exports, tmp_path):
    output = tmp_path / "mfn_for_ort.onnx"
    result = CliRunner().invoke(main, ["convert", str(exports["mobilefacenet", "w8a8"]["checkpoint"]), "-o", str(output),
                                       "--target", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "tensorrt placement: ONNX Runtime runs its convs in float" in result.output, result.output
    assert "remake it with `calibrate --scheme onnxruntime`" in result.output and "qfsdk check:  not run" in result.output


def test_asymmetric_activations_run_on_the_cpu_backends_and_are_refused_for_tensorrt(tmp_path):
    """``asymmetric_acts``: zero-point activations over [min, max] (weights stay symmetric) export
    exactly, convert for OpenVINO by default, and ONNX Runtime fuses the onnxruntime placement's convs
    into QLinearConv with them; TensorRT, which runs zero point 0 only, is refused with the fix named."""
    import openvino as ov

    from qfsdk.quant.algorithms import act_quantizers, weight_quantizers

    model = create("dlib_resnet")
    x = probe_inputs(model)  # real face chips
    runner = CliRunner()
    for scheme, target, fused in (("tensorrt", "openvino", False), ("onnxruntime", "onnxruntime", True)):
        config = {"preset": "w8a8", "scheme": scheme, "asymmetric_acts": True}
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), config), x)
        assert quantized.calibration["method"] == "minmax"
        assert not any(q.symmetric for _, q in act_quantizers(quantized))
        assert all(q.symmetric for _, q in weight_quantizers(quantized))
        checkpoint = qfsdk.save_quantized(quantized, tmp_path / f"{scheme}.safetensors")
        output = tmp_path / f"{scheme}.onnx"
        result = runner.invoke(main, ["convert", str(checkpoint), "-o", str(output)])
        assert result.exit_code == 0, result.output
        assert f"target:       {target}" in result.output and "asymmetric activations" in result.output
        graph = onnx.load(str(output)).graph
        constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        zero_points = [constants[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
        assert sum(bool(np.any(z != 0)) for z in zero_points) > len(zero_points) // 2
        assert export_parity(quantized, output, x).forced_cosine.min() >= PARITY
        on_openvino = ov.Core().compile_model(str(output), "CPU")(x.numpy())[0]
        assert cosines(on_openvino, run_ort(output, x.numpy())).min() >= 0.9995
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{scheme}_optimized.onnx")
        ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert ("QLinearConv" in ops) == fused  # as many as with symmetric activations (dlib: 19 of 29)

        refused = tmp_path / f"{scheme}_trt.onnx"
        result = runner.invoke(main, ["convert", str(checkpoint), "-o", str(refused), "--target", "tensorrt"])
        assert result.exit_code == 1 and "zero points" in result.output and "--asymmetric-acts" in result.output
        assert not refused.exists()


def test_asymmetric_activations_halve_the_step_of_one_sided_ranges():
    """On dlib's ReLU network each never-negative activation gets the whole int8 grid: half the
    symmetric step for the same [0, max] range."""
    model = create("dlib_resnet")
    chips = probe_inputs(model)
    steps = {}
    for asymmetric in (False, True):
        config = {"preset": "w8a8", "asymmetric_acts": asymmetric}
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), config), chips, method="minmax")
        steps[asymmetric] = {n: (q.form().scale, float(q.x_min)) for n, q in act_quantizers_of(quantized)}
    one_sided = [n for n, (_, low) in steps[True].items() if low == 0]
    assert len(one_sided) > 30
    for name in one_sided:
        assert steps[True][name][0] == pytest.approx(steps[False][name][0] * 127 / 255, rel=1e-5)


def act_quantizers_of(model):
    from qfsdk.quant.algorithms import act_quantizers

    return act_quantizers(model)
