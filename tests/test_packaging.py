"""The package installs as one `qfsdk` namespace and its runtime works without torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
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
