"""Every command that reads a file x every kind of bad file: exit 1, one line on stderr naming the file,
no traceback, nothing written at -o, the input unchanged (issue 17, items 4, 7, 8, 9, 16, 17)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from qfsdk.cli import main

FACES = 4


def run_cli(*args) -> "object":
    return CliRunner().invoke(main, [str(a) for a in args])


def png_bytes(seed: int = 0, size: int = 112) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size)).save(buffer, format="PNG")
    return buffer.getvalue()


def rewrite_metadata(src: Path, dst: Path, change) -> Path:
    """Copy a safetensors file with its ``__metadata__`` passed through ``change(dict) -> dict``."""
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = change(dict(header["__metadata__"]))
    encoded = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good inputs (a W8A8 MobileFaceNet checkpoint, its ONNX, float weights) and bad ones."""
    import torch

    from qfsdk.models import create

    root = tmp_path_factory.mktemp("bad-inputs")
    faces = root / "faces"
    faces.mkdir()
    for index in range(FACES):
        (faces / f"{index}.png").write_bytes(png_bytes(index))
    ckpt = root / "mfn_w8a8"  # no extension: recognised by content (item 9)
    done = run_cli("calibrate", "--model", "mobilefacenet", "--data", faces, "--batch-size", FACES, "-o", ckpt)
    assert done.exit_code == 0, done.output
    model_onnx = root / "mfn_w8a8.onnx"
    done = run_cli("convert", ckpt, "--target", "onnxruntime", "-o", model_onnx)
    assert done.exit_code == 0, done.output
    weights = root / "mfn.pth"
    torch.save(create("mobilefacenet").state_dict(), weights)
    no_contract = root / "plain.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 112, 112])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 112, 112])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), no_contract)
    bad = {
        "empty": b"",
        "random": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "png": png_bytes(9),
        "json_list": b"[1, 2, 3]",
        "truncated_ckpt": ckpt.read_bytes()[: ckpt.stat().st_size // 2],
        "truncated_onnx": model_onnx.read_bytes()[: model_onnx.stat().st_size // 2],
        "truncated_pth": weights.read_bytes()[: weights.stat().st_size // 2],
    }
    paths = {"root": root, "faces": faces, "ckpt": ckpt, "onnx": model_onnx, "weights": weights, "no_contract": no_contract}
    for name, data in bad.items():
        paths[name] = root / f"{name}.pth"  # a suffix that promises a checkpoint
        paths[name].write_bytes(data)
    paths["no_architecture"] = rewrite_metadata(ckpt, root / "no_arch.safetensors", lambda m: {k: v for k, v in m.items() if k != "architecture"})
    paths["no_quant_config"] = rewrite_metadata(ckpt, root / "no_qc.safetensors", lambda m: {k: v for k, v in m.items() if k != "quant_config"})
    paths["bad_quant_config"] = rewrite_metadata(ckpt, root / "bad_qc.safetensors", lambda m: {**m, "quant_config": "{not json"})
    paths["nan_range"] = _with_nan_range(ckpt, root / "nan_range.safetensors")
    paths["nan_contract"] = _with_contract(model_onnx, root / "nan_contract.onnx", mean=[float("nan")] * 3)
    paths["zero_std_contract"] = _with_contract(model_onnx, root / "zero_std.onnx", std=[0.0, 0.0, 0.0])
    paths["broken_contract"] = _with_contract(model_onnx, root / "broken_contract.onnx", text="{not json")
    paths["few_pairs_bin"] = root / "few.bin"
    paths["few_pairs_bin"].write_bytes(pickle.dumps(([png_bytes(i) for i in range(10)], [True, False] * 2 + [True]), protocol=4))
    return paths


def _with_nan_range(src: Path, dst: Path) -> Path:
    """The checkpoint with one activation range set to NaN (an edited or diverged file)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as handle:
        metadata = handle.metadata()
    state = load_file(str(src))
    key = next(k for k in state if k.endswith("input_quantizer.x_max"))
    state[key] = state[key] * float("nan")
    save_file(state, str(dst), metadata=metadata)
    return dst


def _with_contract(src: Path, dst: Path, text: str | None = None, **changes) -> Path:
    """The ONNX file with its contract metadata edited (``changes``) or replaced by ``text``."""
    model = onnx.load(src)
    (entry,) = [p for p in model.metadata_props if p.key == "qfsdk.contract"]
    entry.value = text if text is not None else json.dumps({**json.loads(entry.value), **changes})
    onnx.save(model, dst)
    return dst


BAD = ("empty", "random", "png", "json_list")
# command -> (argv template with {bad} and {out}, the bad inputs it is tried with)
MATRIX = {
    "check": ("check {bad}", BAD + ("truncated_onnx", "weights")),
    "bench": ("bench {bad} --repeats 1 --batch-size 1", BAD + ("truncated_onnx", "ckpt")),
    "convert": ("convert {bad} -o {out}.onnx", BAD + ("truncated_ckpt", "truncated_pth", "no_architecture", "no_quant_config",
                                                  "bad_quant_config", "nan_range")),
    "embed": ("embed {bad} {faces} --aligned -o {out}.npz", BAD + ("truncated_onnx", "nan_contract", "zero_std_contract", "broken_contract")),
    "convert-fp32": ("convert {bad} --fp32 --model mobilefacenet -o {out}.onnx", BAD + ("truncated_pth", "truncated_ckpt")),
    "eval-model": ("eval {bad} --bin {bad}", BAD + ("truncated_ckpt", "truncated_onnx", "no_architecture", "bad_quant_config")),
    "eval-bin": ("eval {onnx} --bin {bad}", BAD + ("few_pairs_bin",)),
    "calibrate-weights": ("calibrate --model mobilefacenet --weights {bad} --data {faces} -o {out}", BAD + ("truncated_pth", "truncated_ckpt")),
    "calibrate-config": ("calibrate --model mobilefacenet --config {bad} --data {faces} -o {out}", BAD),
    "qat-weights": ("qat --model mobilefacenet --weights {bad} --data {faces} --steps 1 -o {out}", BAD + ("truncated_pth",)),
    "qat-config": ("qat --model mobilefacenet --config {bad} --data {faces} --steps 1 -o {out}", BAD),
    "synth-weights": ("synth --model mobilefacenet --weights {bad} -n 1 -o {out}", BAD + ("truncated_pth",)),
    "import": ("import {bad} -o {out}.onnx", BAD + ("truncated_onnx", "ckpt")),
}
CASES = [(command, bad) for command, (_, bads) in MATRIX.items() for bad in bads]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_refusal(result, names: str, *, code: int = 1) -> str:
    """Exit ``code``, one line on stderr that names ``names``, no traceback; returns the line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, result.stderr
    assert names in lines[0] and "Traceback" not in result.stderr, lines[0]
    return lines[0]


@pytest.mark.parametrize("command, bad", CASES, ids=[f"{c}-{b}" for c, b in CASES])
def test_bad_input_is_refused_in_one_line(files, tmp_path, command, bad):
    out = tmp_path / "out"
    argv = MATRIX[command][0].format(bad=files[bad], out=out, faces=files["faces"], onnx=files["onnx"]).split()
    before = digest(files[bad])
    result = run_cli(*argv)
    assert_one_line_refusal(result, files[bad].name)
    assert digest(files[bad]) == before
    assert not list(tmp_path.iterdir()), "something was written at -o"


def test_check_passes_a_good_file_and_names_what_a_bad_one_is(files):
    line = assert_one_line_refusal(run_cli("check", files["png"]), "png.pth")
    assert "a PNG image, not an ONNX model" in line
    assert "empty file" in assert_one_line_refusal(run_cli("check", files["empty"]), "empty.pth")
    assert "truncated" in assert_one_line_refusal(run_cli("check", files["truncated_onnx"]), "truncated_onnx.pth")


def test_random_bytes_as_pth_are_not_a_checkpoint_not_code(files, tmp_path):
    line = assert_one_line_refusal(run_cli("calibrate", "--model", "mobilefacenet", "--weights", files["random"],
                                           "--data", files["faces"], "-o", tmp_path / "o"), "random.pth")
    assert "not a float weights file" in line and "execute code" not in line


def test_metadata_errors_say_which_field(files, tmp_path):
    for name, field in (("no_architecture", "'architecture'"), ("no_quant_config", "'quant_config'"), ("bad_quant_config", "not valid JSON")):
        line = assert_one_line_refusal(run_cli("convert", files[name], "-o", tmp_path / "o.onnx"), files[name].name)
        assert field in line


def test_bench_exits_1_naming_every_failed_model(files):
    result = run_cli("bench", files["no_contract"], "--backend", "onnxruntime", "--repeats", "1", "--batch-size", "1")
    line = assert_one_line_refusal(result, "plain.onnx on onnxruntime")
    assert "1 of 1" in line


def test_checkpoint_without_extension_converts_and_evaluates(files, tmp_path):
    """calibrate -o NAME (no suffix) -> convert and eval recognise it by content."""
    from qfsdk.eval import load_model

    assert load_model(str(files["ckpt"])).kind == "quantized"
    result = run_cli("convert", files["ckpt"], "--target", "onnxruntime", "-o", tmp_path / "again")
    assert result.exit_code == 0, result.output
    assert load_model(str(tmp_path / "again")).kind == "runtime"  # an ONNX file without its suffix


@pytest.mark.parametrize("argv, input_key", [
    ("convert {ckpt} -o {ckpt}", "ckpt"),
    ("calibrate --model mobilefacenet --weights {weights} --data {faces} -o {weights}", "weights"),
    ("qat --model mobilefacenet --weights {weights} --data {faces} --steps 1 -o {weights}", "weights"),
    ("import {onnx} -o {onnx}", "onnx"),
    ("embed {onnx} {faces} --aligned -o {onnx}", "onnx"),
    ("embed {onnx} {faces}/0.png --aligned -o {faces}/0.png", "face"),
])
def test_output_equal_to_an_input_is_refused_before_any_work(files, argv, input_key):
    files = {**files, "face": files["faces"] / "0.png"}
    before = digest(files[input_key])
    result = run_cli(*argv.format(**files).split())
    line = assert_one_line_refusal(result, files[input_key].name)
    assert "is also an input" in line
    assert digest(files[input_key]) == before


def test_synth_into_its_weights_file_is_refused(files):
    """synth -o is a folder: click already refuses an existing file there (usage error, exit 2)."""
    before = digest(files["weights"])
    result = run_cli("synth", "--model", "mobilefacenet", "--weights", files["weights"], "-n", "1", "-o", files["weights"])
    assert result.exit_code == 2 and "is a file" in result.stderr
    assert digest(files["weights"]) == before


@pytest.mark.parametrize("argv", [
    "calibrate --model mobilefacenet --data {faces} -o {blocker}/out",
    "qat --model mobilefacenet --data {faces} --steps 1 -o {blocker}/out",
    "convert {ckpt} -o {blocker}/out.onnx",
    "import {onnx} -o {blocker}/out.onnx",
    "synth --model mobilefacenet -n 1 -o {blocker}/out",
    "calibrate --model mobilefacenet --data {faces} -o /proc/qfsdk-out",
])
def test_unwritable_output_is_refused_before_any_work(files, tmp_path, argv):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    result = run_cli(*argv.format(blocker=blocker, **files).split())
    line = assert_one_line_refusal(result, "out")
    assert "choose another -o" in line
    assert "%|" not in result.stderr, "the work started before the refusal"


@pytest.mark.parametrize("value", ["-5", "150", "nan", "inf", "100", "0", "x"])
def test_bad_percentile_is_refused(files, tmp_path, value):
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", files["faces"], "--method", f"percentile:{value}",
                     "-o", tmp_path / "o")
    assert "0 < P < 100" in assert_one_line_refusal(result, f"percentile:{value}")
    assert not (tmp_path / "o").exists()


def test_the_percentile_used_is_the_one_recorded(files, tmp_path):
    out = tmp_path / "p.safetensors"
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", files["faces"], "--method", "percentile:99.5",
                     "--batch-size", FACES, "-o", out)
    assert result.exit_code == 0, result.output
    from qfsdk.file_kinds import identify

    assert json.loads(identify(out).metadata["quant_config"])["percentile"] == 99.5


def test_data_and_synthetic_together_is_a_usage_error(files, tmp_path):
    result = run_cli("calibrate", "--model", "mobilefacenet", "--data", files["faces"], "--synthetic", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "--synthetic and --data DIR exclude each other" in result.stderr
    assert not (tmp_path / "o").exists()


def test_resume_from_a_truncated_state_is_refused(files, tmp_path):
    out = tmp_path / "q.safetensors"
    state = tmp_path / "q.qat-state.safetensors"
    state.write_bytes(files["truncated_ckpt"].read_bytes())
    result = run_cli("qat", "--model", "mobilefacenet", "--data", files["faces"], "--steps", "1", "--resume", "-o", out)
    line = assert_one_line_refusal(result, state.name)
    assert "truncated" in line and "without --resume" in line
    assert not out.exists()


def test_progress_in_a_log_file_is_a_few_lines(tmp_path):
    """30 synthesis steps (about 6 s) with stderr redirected to a file: a handful of updates, not 30."""
    log = tmp_path / "log.txt"
    with log.open("w") as stderr:
        done = subprocess.run([sys.executable, "-m", "qfsdk", "synth", "--model", "mobilefacenet", "-n", "2",
                               "--batch-size", "2", "--iterations", "30", "-o", str(tmp_path / "synth")],
                              stderr=stderr, stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, log.read_text()
    updates = [part for part in log.read_text().replace("\r", "\n").splitlines() if "step" in part]
    assert 1 <= len(updates) <= 4, updates
    assert "30/30" in updates[-1]


@pytest.mark.parametrize("argv, named", [
    ("embed {tmp}/gone.onnx {tmp} -o {tmp}/e.npz", "gone.onnx: no such file (MODEL)"),
    ("embed {onnx} {tmp}/gone -o {tmp}/e.npz", "gone: no such file or folder (PATHS)"),
    ("embed {tmp} {tmp} -o {tmp}/e.npz", ": a folder, not a file (MODEL)"),
    ("bench {tmp}/gone.onnx", "gone.onnx: no such file (MODELS)"),
    ("calibrate --model {tmp}/gone.onnx --synthetic -o {tmp}/q.safetensors", "gone.onnx: no such file; --model takes a zoo name"),
    ("calibrate --model mobilefacenet --weights {tmp}/gone.pth --synthetic -o {tmp}/q.safetensors", "gone.pth: no such file (--weights)"),
    ("convert {tmp}/gone.safetensors -o {tmp}/x.onnx", "gone.safetensors: no such file"),
])
def test_a_missing_input_is_one_line_and_exit_1(files, tmp_path, argv, named):
    """Not click's three-line usage error (exit 2): one line naming the path, as for any other bad file."""
    result = run_cli(*argv.format(tmp=tmp_path, onnx=files["onnx"]).split())
    assert_one_line_refusal(result, named)


def test_a_log_gets_at_most_twenty_lines_per_bar_whatever_the_postfix_and_the_run_length():
    """`qfsdk qat` sets its loss after the bar every step: in a log that must not be a line per step."""
    from qfsdk.progress import progress_bar

    def lines(seconds_per_step: float, steps: int = 400) -> list[str]:
        log = io.StringIO()
        with progress_bar(total=steps, desc="qat", file=log) as bar:
            clock = [bar.last_print_t]
            bar._time = lambda: clock[0]  # the bar's own clock, advanced as if each step took this long
            for _ in range(steps):
                clock[0] += seconds_per_step
                bar.update(1)
                bar.set_postfix(loss="1e-3")
        return [line for line in log.getvalue().replace("\r", "\n").splitlines() if "qat" in line]

    assert len(lines(0.01)) <= 3  # a short run: its first and last state
    assert 4 <= len(lines(30.0)) <= 22  # a long one: every 5 % of the steps at most
    assert "400/400" in lines(1.0)[-1]


def test_progress_bars_refresh_normally_on_a_terminal():
    from qfsdk.progress import LOG_INTERVAL, progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    with progress_bar(range(3), file=Terminal()) as bar:
        assert bar.mininterval < 1
    with progress_bar(range(3), file=io.StringIO()) as bar:
        assert bar.mininterval == LOG_INTERVAL


def test_a_rerun_after_kill_9_removes_stale_partials_and_respects_the_umask(files, tmp_path):
    import signal
    import time

    out = tmp_path / "k.onnx"
    argv = [sys.executable, "-m", "qfsdk", "convert", str(files["ckpt"]), "--target", "onnxruntime", "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".k.onnx.*.partial")) and time.monotonic() < deadline and writer.poll() is None:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert list(tmp_path.glob(".k.onnx.*.partial")), "the kill came too late to leave a partial file"
    old = os.umask(0o022)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_external_data_outside_the_models_folder_is_refused_in_one_line(files, tmp_path, backend):
    """An edited ONNX whose weights point at ``../secret.bin``: the backends refuse to read outside the
    model's folder, and embed says so in one line naming the file."""
    pytest.importorskip(backend)
    from onnx import numpy_helper

    model = onnx.load(files["onnx"])
    initializer = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    values = numpy_helper.to_array(initializer)
    (tmp_path / "secret.bin").write_bytes(values.tobytes())
    initializer.ClearField("raw_data")
    initializer.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(values.nbytes))):
        entry = initializer.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "edited.onnx"
    onnx.save(model, path)
    result = run_cli("embed", path, files["faces"], "--aligned", "--backend", backend, "-o", tmp_path / "out.npz")
    line = assert_one_line_refusal(result, "edited.onnx")
    assert "cannot load this model" in line
    assert not (tmp_path / "out.npz").exists()
