"""The package installs as one `qfsdk` namespace and its runtime works without torch."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("torch is blocked in this test", name=name)  # as when it is not installed
sys.meta_path.insert(0, _BlockTorch())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_component_folders_install_inside_qfsdk():
    import qfsdk.calib
    import qfsdk.converters
    import qfsdk.runtime

    assert Path(qfsdk.runtime.__file__).parent == REPO / "runtime"
    assert Path(qfsdk.calib.__file__).parent == REPO / "calib"
    assert Path(qfsdk.converters.__file__).parent == REPO / "converters"
    for generic in ("runtime", "calib", "converters"):
        found = run_python(f"import importlib.util, sys; sys.path.remove(''); print(importlib.util.find_spec('{generic}'))")
        assert found.stdout.strip() == "None", f"a top-level '{generic}' package is installed"


def test_blocking_torch_really_blocks_it():
    result = run_python(BLOCK_TORCH + "import torch")
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_runtime_imports_and_runs_onnx_without_torch(dlib_fp32_onnx):
    code = BLOCK_TORCH + f"""
import numpy as np, onnxruntime as ort
import qfsdk.runtime
from qfsdk.runtime.metadata import read_onnx_contract
contract = read_onnx_contract({str(dlib_fp32_onnx)!r})
crops = np.random.default_rng(0).integers(0, 256, (2, *contract.input_size, 3), dtype=np.uint8)
session = ort.InferenceSession({str(dlib_fp32_onnx)!r}, providers=["CPUExecutionProvider"])
out = session.run(None, {{"input": contract.preprocess(crops)}})[0]
assert out.shape == (2, contract.embedding_size), out.shape
assert "torch" not in sys.modules
print("ok", out.shape)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_embedder_and_embed_command_run_without_torch(dlib_fp32_onnx, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((150, 150, 3), 128, np.uint8)).save(tmp_path / "face.png")
    out = tmp_path / "emb.npz"
    code = BLOCK_TORCH + f"""
import numpy as np
from qfsdk.runtime import Embedder
with Embedder({str(dlib_fp32_onnx)!r}, "onnxruntime", flip=True, normalize=True) as embedder:
    crops = np.zeros((2, *embedder.contract.input_size, 3), np.uint8)
    assert embedder.embed(crops).shape == (2, embedder.contract.embedding_size)
    warped = embedder.embed([np.zeros((300, 200, 3), np.uint8)], landmarks=np.asarray([embedder.contract.template]))
    assert warped.shape == (1, embedder.contract.embedding_size)
from qfsdk.cli import main
sys.argv = ["qfsdk", "embed", {str(dlib_fp32_onnx)!r}, {str(tmp_path / "face.png")!r}, "--backend", "onnxruntime", "-o", {str(out)!r}]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
assert "torch" not in sys.modules
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok") and np.load(out)["embeddings"].shape == (1, 128)


@pytest.mark.parametrize("args", [["--version"], ["doctor"]])
def test_cli_entry_point_works_without_torch(args):
    code = BLOCK_TORCH + f"import sys; sys.argv = ['qfsdk', *{args!r}]\nfrom qfsdk.cli import main\nmain()"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    if args == ["doctor"]:
        assert "torch" in result.stdout and "missing" in result.stdout


def test_installed_console_script_prints_version():
    exe = Path(sys.executable).with_name("qfsdk")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "0." in result.stdout


EXTRA_HINT = "pip install 'qfsdk[quantize]'"
TORCH_COMMANDS = [["calibrate", "--model", "mobilefacenet", "--synthetic", "-o", "x.safetensors"],
                  ["qat", "--model", "mobilefacenet", "--steps", "1", "-o", "x.safetensors"], ["convert", "x", "-o", "y.onnx"],
                  ["synth", "--model", "mobilefacenet", "-n", "1", "-o", "d"], ["models"], ["calibrate", "--help"]]


def test_runtime_and_help_do_not_import_torch():
    """Even where torch is installed, `import qfsdk.runtime` and `qfsdk --help` leave it unimported."""
    code = """
import sys
import qfsdk.runtime
assert "torch" not in sys.modules, "import qfsdk.runtime imported torch"
sys.argv = ["qfsdk", "--help"]
from qfsdk.cli import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
assert "torch" not in sys.modules, "qfsdk --help imported torch"
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "calibrate" in result.stdout and result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("args", TORCH_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_commands_that_need_torch_name_the_extra_in_one_line(args, tmp_path):
    code = BLOCK_TORCH + f"import sys; sys.argv = ['qfsdk', *{args!r}]\nfrom qfsdk.cli import main\nmain()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and EXTRA_HINT in result.stderr, result.stderr
    assert f"qfsdk {args[0]} needs torch" in result.stderr


def test_core_dependencies_are_torch_free():
    """The deployment install (`pip install qfsdk`) pulls no torch; the quantize extra does."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in project["dependencies"]}
    assert not core & {"torch", "safetensors"}, core
    assert {"torch", "safetensors"} <= {d.split(">")[0].lower() for d in project["optional-dependencies"]["quantize"]}
    assert "quantize" in (REPO / "Makefile").read_text().split("EXTRAS ?=")[1].splitlines()[0]


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_deployment_wheel_installs_in_a_fresh_venv_and_embeds_without_torch(tmp_path, dlib_fp32_onnx):
    """As a deployment user: `make wheel`, a new venv, `pip install dist/qfsdk-*.whl` (the core dependencies
    only, from PyPI), then the CLI, the packaged face detector included."""
    source = tmp_path / "src"  # a copy: the build writes its egg-info and build/ beside the sources
    for item in ("qfsdk", "runtime", "calib", "converters"):
        shutil.copytree(REPO / item, source / item, ignore=shutil.ignore_patterns("__pycache__", "native"))
    for item in ("pyproject.toml", "README.md", "Makefile"):
        shutil.copy(REPO / item, source / item)
    built = subprocess.run(["make", "-C", str(source), "wheel", f"PYTHON={sys.executable}"], capture_output=True, text=True,
                           timeout=600)
    if built.returncode != 0:
        pytest.skip(f"could not build the wheel (setuptools from PyPI?): {built.stderr.strip()[-300:]}")
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr, built.stderr
    wheels = sorted((source / "dist").glob("qfsdk-*.whl"))
    assert len(wheels) == 1, built.stdout
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = _pip(venv, str(wheels[0]))
    if installed.returncode != 0:
        pytest.skip(f"could not install the wheel's dependencies from PyPI: {installed.stderr.strip()[-300:]}")
    python, qfsdk = str(venv / "bin" / "python"), str(venv / "bin" / "qfsdk")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)

    assert run(python, "-c", "import torch").returncode != 0, "torch is installed in the deployment venv"
    assert run(python, "-c", "import qfsdk, sys; print(qfsdk.__file__)").stdout.startswith(str(venv))
    helped = run(qfsdk, "--help")
    assert helped.returncode == 0 and "embed" in helped.stdout, helped.stderr
    Image.fromarray(np.full((150, 150, 3), 128, np.uint8)).save(tmp_path / "face.png")
    embedded = run(qfsdk, "embed", str(dlib_fp32_onnx), str(tmp_path / "face.png"), "--backend", "onnxruntime", "-o", "emb.npz")
    assert embedded.returncode == 0, embedded.stderr
    assert np.load(tmp_path / "emb.npz")["embeddings"].shape == (1, 128)
    checked = run(qfsdk, "check", str(dlib_fp32_onnx))
    assert "Traceback" not in checked.stderr and str(dlib_fp32_onnx) in checked.stdout + checked.stderr
    benched = run(qfsdk, "bench", str(dlib_fp32_onnx), "--backend", "onnxruntime", "--batch-size", "1", "--repeats", "2")
    assert benched.returncode == 0, benched.stdout + benched.stderr
    runtime = run(python, "-c", "from qfsdk.runtime import Embedder; import sys; assert 'torch' not in sys.modules")
    assert runtime.returncode == 0, runtime.stderr
    detector = run(python, "-c", "import numpy as np; from qfsdk.runtime.detect import FaceDetector; "
                                 "print(len(FaceDetector().detect(np.zeros((120, 160, 3), np.uint8))))")
    assert detector.returncode == 0 and detector.stdout.strip() == "0", detector.stderr  # the packaged YuNet is in the wheel
    refused = run(qfsdk, "calibrate", "--model", "mobilefacenet", "--synthetic", "-o", "x.safetensors")
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert EXTRA_HINT in refused.stderr and not (tmp_path / "x.safetensors").exists()
