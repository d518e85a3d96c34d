"""`qfsdk calibrate` and `qfsdk qat` as a user runs them: CliRunner, subprocesses, torchrun."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import qfsdk
from qfsdk.cli import main
from qfsdk.quant.algorithms import recipe_text
from qfsdk.quant.api import quant_config_of

QFSDK = [sys.executable, "-m", "qfsdk"]


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory) -> Path:
    """Small smooth 112x112 RGB images standing in for aligned crops."""
    folder = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for index in range(12):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize((112, 112), Image.BICUBIC).save(folder / f"{index:02d}.png")
    return folder


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_calibrate_from_folder_writes_a_loadable_checkpoint(tmp_path, face_folder):
    out = tmp_path / "mfn_w8a8.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--bits", "w8a8", "--method", "mse", "-o", out)
    assert result.exit_code == 0, result.output
    assert "min cosine" in result.output
    model = qfsdk.load(out)
    assert model.quant_config.weight_bits == 8 and model.calibration["images"] == 12


def test_random_weights_are_said_on_stderr_and_recorded(tmp_path, face_folder):
    out = tmp_path / "random.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(QFSDK + ["calibrate", "--model", "mobilefacenet", "--data", str(face_folder), "--seed", "3", "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "mobilefacenet has random weights (seed 3)" in done.stderr and "--weights FILE" in done.stderr
    assert "random weights (seed 3)" in done.stdout
    from qfsdk.quant.checkpoint import read_metadata

    assert read_metadata(out)["weights"] == "random weights (seed 3)"


def test_calibrate_with_the_onnxruntime_placement_reloads(tmp_path, face_folder):
    """The conv -> BatchNorm pairs are traced again on load, so the checkpoint fits the rebuilt model."""
    out = tmp_path / "mfn_ort.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--scheme", "onnxruntime", "-o", out)
    assert result.exit_code == 0, result.output
    model = qfsdk.load(out)
    assert model.quant_config.scheme == "onnxruntime"
    assert sum(type(m).__name__ == "QuantBatchNorm2d" for m in model.modules()) == 49


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bits", "w9a9"], "unknown preset 'w9a9'"),
        (["--keep-8bit", "conv_1*"], "matches no quantizable layer"),
        (["--method", "median"], "unknown calibration method 'median'"),
        (["--model", "iresnet5O"], "did you mean iresnet50"),
        (["--recipe", "ranges,reconstruct:iterations"], "must read KEY=VALUE"),
        (["--recipe", "ranges,reconstruct:iteration=5"], "did you mean 'iterations'"),
        (["--recipe", "ranges,reconstruct:iterations=0"], "iterations must be a positive integer"),
    ],
)
def test_calibrate_bad_input_fails_before_work_in_one_line(tmp_path, face_folder, args, message):
    options = {"--model": "mobilefacenet", "--bits": "w8a8", **dict(zip(args[::2], args[1::2]))}
    argv = ["calibrate", "--data", face_folder, "-o", tmp_path / "x.safetensors"]
    result = run_cli(*argv, *(item for pair in options.items() for item in pair))
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--asymmetric-acts", "--method", "percentile"], "method 'percentile' does not apply: activations with zero points"),
        (["--scheme", "quantface", "--method", "mse"], "method 'mse' does not apply: activations with zero points"),
        (["--asymmetric-acts", "--scheme", "quantface"], "scheme 'quantface' is asymmetric already"),
    ],
)
def test_zero_point_activations_refuse_what_does_not_apply_in_one_line(tmp_path, face_folder, args, message):
    out = tmp_path / "x.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, *args, "-o", out)
    assert result.exit_code == 1, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not out.exists()


def test_calibrate_with_asymmetric_acts_records_them_and_their_min_max_ranges(tmp_path, face_folder):
    out = tmp_path / "mfn_asym.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--asymmetric-acts", "-o", out)
    assert result.exit_code == 0, result.output
    assert "(8/8-bit, tensorrt, asymmetric activations, minmax," in result.output
    model = qfsdk.load(out)
    assert model.quant_config.asymmetric_acts and model.quant_config.observer == "minmax"
    assert model.calibration["method"] == "minmax"


def test_a_recipe_with_step_options_is_saved_and_printed_by_convert(tmp_path, face_folder):
    out = tmp_path / "mfn_w4a8.safetensors"
    recipe = "ranges,reconstruct:iterations=3:batch_size=4,bias_correction"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--bits", "w4a8", "--recipe", recipe, "-o", out)
    assert result.exit_code == 0, result.output
    assert "recipe ranges+reconstruct:iterations=3:batch_size=4+bias_correction" in result.output
    assert qfsdk.load(out).calibration["algorithm"][1] == {"name": "reconstruct", "iterations": 3, "batch_size": 4}
    converted = run_cli("convert", out, "-o", tmp_path / "mfn_w4a8.onnx")
    assert converted.exit_code == 0, converted.output
    assert "PTQ recipe ranges+reconstruct:iterations=3:batch_size=4+bias_correction" in converted.output



def test_keep_float_layers_are_printed_by_calibrate_and_convert_and_stay_float_in_the_onnx(tmp_path, face_folder):
    import onnx

    out = tmp_path / "mfn.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--recipe", "ranges,keep_float:layers=2:images=4", "-o", out)
    assert result.exit_code == 0, result.output
    (line,) = [l for l in result.output.splitlines() if l.startswith("kept in float: ")]
    kept = line[len("kept in float: "):].split(" (")[0].split(", ")
    assert len(kept) == 2 and "% of the multiply-accumulates" in line
    assert sorted(o.pattern for o in quant_config_of(qfsdk.load(out)).overrides if not o.enabled) == sorted(kept)
    converted = run_cli("convert", out, "-o", tmp_path / "mfn.onnx")
    assert converted.exit_code == 0, converted.output
    assert f"kept in float: {', '.join(kept)}" in converted.output
    graph = onnx.load(str(tmp_path / "mfn.onnx")).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    weights = [producers.get(node.input[1], "initializer") for node in graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(weights) - weights.count("DequantizeLinear") == sum(not k.startswith("residual") for k in kept)

def test_ends_8bit_keeps_the_first_and_last_layers_at_8_bits_through_checkpoint_and_onnx(tmp_path, face_folder):
    """``ends_8bit`` at W4A8: calibrate and convert name the two end layers, the checkpoint's config holds
    them at 8/8-bit, the ONNX stores 8-bit codes for them and 4-bit codes elsewhere; after ``ranges``
    it is refused in one line before any work."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "mfn.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--bits", "w4a8",
                     "--recipe", "ends_8bit,ranges", "-o", out)
    assert result.exit_code == 0, result.output
    (line,) = [l for l in result.output.splitlines() if l.startswith("above 4/8-bit: ")]
    raised = [part.split(" (")[0] for part in line[len("above 4/8-bit: "):].split("), ")][:2]
    assert line.count("(8/8-bit)") == 2
    overrides = quant_config_of(qfsdk.load(out)).overrides
    assert [(o.pattern, o.weight_bits, o.act_bits) for o in overrides] == [(name, 8, 8) for name in raised]
    converted = run_cli("convert", out, "-o", tmp_path / "mfn.onnx")
    assert converted.exit_code == 0, converted.output
    assert f"above the preset: {raised[0]} (8/8-bit), {raised[1]} (8/8-bit)" in converted.output
    graph = onnx.load(str(tmp_path / "mfn.onnx")).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: node for node in graph.node for o in node.output}
    codes = [np.abs(initializers[producers[node.input[1]].input[0]].astype(int)).max()
             for node in graph.node if node.op_type in ("Conv", "Gemm") and node.input[1] in producers]
    assert codes[0] > 7 and codes[-1] > 7 and max(codes[1:-1]) <= 7
    wrong = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "--bits", "w4a8",
                    "--recipe", "ranges,ends_8bit", "-o", tmp_path / "wrong.safetensors")
    assert wrong.exit_code == 1 and "PTQ step 'ends_8bit' must run before 'ranges'" in wrong.output
    assert wrong.output.strip().count("\n") == 0 and not (tmp_path / "wrong.safetensors").exists()


def _qat_args(face_folder, out, steps, every=1):
    return ["qat", "--model", "mobilefacenet", "--data", str(face_folder), "--bits", "w4a4", "--steps", str(steps),
            "--batch-size", "4", "--freeze-bn", "--lr", "0.02", "--checkpoint-every", str(every), "-o", str(out)]


def test_resume_with_other_quantization_settings_is_refused_and_writes_nothing(tmp_path, face_folder):
    """A W4A4 state must not continue as W6A6 (it would write one and report the other's cosine)."""
    out = tmp_path / "m.safetensors"
    first = run_cli(*_qat_args(face_folder, out, 2))
    assert first.exit_code == 0, first.output
    written = out.read_bytes()
    state = out.with_name("m.qat-state.safetensors").read_bytes()
    args = _qat_args(face_folder, out, 4)
    args[args.index("--bits") + 1] = "w6a6"
    resumed = run_cli(*args, "--resume")
    assert resumed.exit_code == 1, resumed.output
    assert "other quantization settings" in resumed.output and "act_bits 4 -> 6" in resumed.output
    assert resumed.output.strip().count("\n") == 0
    assert out.read_bytes() == written and out.with_name("m.qat-state.safetensors").read_bytes() == state


def test_qat_from_an_ends_8bit_start_resumes_into_the_same_layers(tmp_path, face_folder):
    """A QAT start recipe that changes layers' bit widths (``ends_8bit``) is rebuilt on ``--resume``:
    the run continues, and the checkpoint keeps the end layers at 8 bits."""
    out = tmp_path / "qat.safetensors"
    first = run_cli(*_qat_args(face_folder, out, 2), "--recipe", "ends_8bit,ranges")
    assert first.exit_code == 0, first.output
    resumed = run_cli(*_qat_args(face_folder, out, 3), "--recipe", "ends_8bit,ranges", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "step 3" in resumed.output
    assert [(o.weight_bits, o.act_bits) for o in quant_config_of(qfsdk.load(out)).overrides] == [(8, 8), (8, 8)]


def test_qat_with_asymmetric_acts_trains_on_min_max_ranges_with_finite_gradients(tmp_path, face_folder):
    """Zero-point activations start QAT from min/max ranges; their gradient stops outside the range (the
    paper's plain straight-through one turned this random MobileFaceNet's loss into NaN in 3 steps)."""
    out = tmp_path / "asym.safetensors"
    args = _qat_args(face_folder, out, 3)
    args[args.index("--bits") + 1] = "w8a8"
    args.remove("--freeze-bn")
    result = run_cli(*args, "--asymmetric-acts")
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output
    model = qfsdk.load(out)
    assert quant_config_of(model).asymmetric_acts and model.calibration["method"] == "minmax"


def test_qat_killed_with_sigkill_resumes_to_the_same_result(tmp_path, face_folder):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight" / "m.safetensors"
    subprocess.run(QFSDK + _qat_args(face_folder, straight, 8), check=True, env=env, capture_output=True, timeout=600)

    out = tmp_path / "killed" / "m.safetensors"
    state = out.with_name("m.qat-state.safetensors")
    process = subprocess.Popen(QFSDK + _qat_args(face_folder, out, 8), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if state.exists() and _state_step(state) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _state_step(state) < 8, "the run finished before it could be killed"
    resumed = subprocess.run(QFSDK + _qat_args(face_folder, out, 8) + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = qfsdk.load(straight).state_dict(), qfsdk.load(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _state_step(path: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return int(handle.metadata()["step"])
    except Exception:  # noqa: BLE001 - mid-rename; the next poll sees it
        return 0


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(), reason="torchrun missing")
def test_qat_runs_under_torchrun_with_two_cpu_processes(tmp_path, face_folder):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "qfsdk"] + _qat_args(face_folder, out, 3, every=3)[0:],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3" in result.stdout
    assert qfsdk.load(out).quant_config.act_bits == 4


def test_calibrate_synthetic_needs_no_real_data(tmp_path):
    out = tmp_path / "mfn.safetensors"
    result = run_cli("calibrate", "--synthetic", "--model", "mobilefacenet", "--num-images", "4", "--iterations", "2",
                     "--batch-size", "4", "--bits", "w6a6", "--recipe", "ranges,reconstruct:iterations=2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "synthetic images generated on the fly" in result.output
    assert qfsdk.load(out).calibration["images"] == 4


def test_qat_on_synthetic_data_keeps_the_dataset_for_resume(tmp_path):
    out = tmp_path / "mfn.safetensors"
    args = ["qat", "--model", "mobilefacenet", "--data", "synthetic", "--num-images", "4", "--iterations", "2",
            "--batch-size", "2", "--freeze-bn", "--validation-images", "2", "--validate-every", "1",
            "--bits", "w4a4", "--steps", "2", "-o", out]
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "min cosine" in result.output and "on 2 held-out images" in result.output  # the best validated step is kept
    assert (tmp_path / "mfn.synth" / "manifest.json").is_file()
    resumed = run_cli(*args[:-4], "--steps", "3", "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "step 3" in resumed.output


def test_qat_starts_from_the_ptq_recipe_it_is_given(tmp_path):
    """QAT's starting point is a PTQ run like calibrate's (percentile ranges by default, not min/max), and the
    checkpoint records it: min/max ranges at W6A6 left imported MobileFaceNets at min cosine 0.03 before training."""
    out = tmp_path / "mfn.safetensors"
    base = ["qat", "--model", "mobilefacenet", "--data", "synthetic", "--num-images", "4", "--iterations", "2",
            "--batch-size", "2", "--bits", "w6a6", "--steps", "1"]
    result = run_cli(*base, "-o", out)
    assert result.exit_code == 0, result.output
    model = qfsdk.load(out)
    assert model.calibration["method"] == "percentile" and recipe_text(model.calibration["algorithm"]) == "ranges"
    assert quant_config_of(model).observer == "percentile"
    result = run_cli(*base, "--method", "percentile:99.9", "--recipe", "ranges,bias_correction", "-o", out)
    assert result.exit_code == 0, result.output
    model = qfsdk.load(out)
    assert recipe_text(model.calibration["algorithm"]) == "ranges+bias_correction"
    assert quant_config_of(model).percentile == 99.9
    for bad, words in [(("--recipe", "ranges,sharpen"), "sharpen"), (("--method", "median"), "median")]:
        result = run_cli(*base, *bad, "-o", tmp_path / "bad.safetensors")
        assert result.exit_code == 1 and words in result.output and not (tmp_path / "bad.safetensors").exists()


def test_the_python_front_door_quantizes_as_calibrate_does(tmp_path, face_folder):
    """``qfsdk.quantize(model, "w8a8", folder)`` takes calibrate's defaults: the same recipe, the same weights and ranges."""
    from qfsdk.models import create
    from qfsdk.models.card import card_of
    from qfsdk.quant.algorithms import recipe_text
    from qfsdk.quant.recipe import Recipe

    out = tmp_path / "cli.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", face_folder, "-o", out)
    assert result.exit_code == 0, result.output
    recipe = Recipe.create("w8a8")
    assert f"({recipe})" in result.output
    python = qfsdk.quantize(create("mobilefacenet", seed=0), "w8a8", face_folder)
    cli = qfsdk.load(out)
    recorded = [card_of(model).calibration for model in (cli, python)]
    assert recorded[0] == recorded[1]
    assert recorded[0]["method"] == recipe.method and recipe_text(recorded[0]["algorithm"]) == recipe_text(recipe.steps)
    assert quant_config_of(cli) == quant_config_of(python) == recipe.config
    cli_state, python_state = cli.state_dict(), python.state_dict()
    assert cli_state.keys() == python_state.keys()
    for name, tensor in cli_state.items():
        assert torch.equal(tensor, python_state[name]), name


def test_every_command_reads_a_model_the_same_way(tmp_path, face_folder):
    """``NAME=PATH`` is ``--model NAME --weights PATH`` in calibrate, convert and ``load_model``; a quantized
    checkpoint is refused in one line where a float model is needed, and loads where any model is."""
    from safetensors.torch import save_file

    from qfsdk.loading import load_model
    from qfsdk.models import create
    from qfsdk.models.card import card_of

    weights = tmp_path / "mfn.safetensors"
    save_file(create("mobilefacenet", seed=3).state_dict(), weights)
    pair, split = tmp_path / "pair.safetensors", tmp_path / "split.safetensors"
    base = ["calibrate", "--data", face_folder, "--recipe", "ranges"]
    assert run_cli(*base, "--model", f"mobilefacenet={weights}", "-o", pair).exit_code == 0
    assert run_cli(*base, "--model", "mobilefacenet", "--weights", weights, "-o", split).exit_code == 0
    for name, tensor in load_model(pair).state_dict().items():
        assert torch.equal(tensor, load_model(split).state_dict()[name]), name
    assert card_of(load_model(f"mobilefacenet={weights}")).weights == str(weights)

    quantized = run_cli(*base, "--model", pair, "-o", tmp_path / "again.safetensors")
    assert quantized.exit_code == 1 and "is a quantized qfsdk checkpoint" in quantized.output
    assert len(quantized.output.strip().splitlines()) == 1
    for model, words in [(f"mobilefacenet={tmp_path / 'missing.pth'}", "no such checkpoint file"),
                         (f"mobilefacenet={weights}", "given twice")]:
        extra = ["--weights", weights] if words == "given twice" else []
        result = run_cli(*base, "--model", model, *extra, "-o", tmp_path / "bad.safetensors")
        assert result.exit_code == 1 and words in result.output, result.output
        assert not (tmp_path / "bad.safetensors").exists()

    onnx = tmp_path / "mfn.onnx"
    result = run_cli("convert", f"mobilefacenet={weights}", "--fp32", "-o", onnx)
    assert result.exit_code == 0 and onnx.is_file(), result.output
