"""How the code is put together: the runtime stands alone, calibration and inference decode alike."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime"


def _absolute_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module or ""))
    return found


def test_runtime_imports_only_itself():
    files = sorted(RUNTIME.rglob("*.py"))
    assert len(files) > 10
    offending = []
    for path in files:
        for line, module in _absolute_imports(ast.parse(path.read_text(), str(path))):
            parts = module.split(".")
            outside = parts[0] == "qfsdk" and parts[1:2] != ["runtime"]
            if outside or parts[0] == "torch":
                offending.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not offending, "runtime/ must import only itself and no torch:\n" + "\n".join(offending)


def _exif_rotated_jpeg(path: Path) -> Path:
    """A 90x60 JPEG stored sideways with EXIF Orientation 6 (shown as 60 wide, 90 high)."""
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    return path


def test_calibration_and_embed_see_the_same_pixels(tmp_path, monkeypatch):
    from qfsdk.calib.folder import ImageFolderSource
    from qfsdk.runtime.backends.base import Backend, TensorInfo
    from qfsdk.runtime.batch_embed import embed_files
    from qfsdk.runtime.contract import FaceContract
    from qfsdk.runtime.embedder import Embedder
    from qfsdk.runtime.images import collect_images

    contract = FaceContract(input_size=(32, 24), embedding_size=4, mean=(10.0, 20.0, 30.0), std=(50.0, 60.0, 70.0))
    folder = tmp_path / "faces"
    folder.mkdir()
    _exif_rotated_jpeg(folder / "sideways.jpg")
    with Image.open(folder / "sideways.jpg") as image:
        assert image.size == (90, 60) and image.getexif()[0x0112] == 6

    fed: list[np.ndarray] = []

    class Recorder(Backend):
        name = "recorder"
        inputs = (TensorInfo("input", (None, 3, 32, 24), "float32"),)
        outputs = (TensorInfo("embedding", (None, 4), "float32"),)

        def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            fed.append(feeds["input"].copy())
            return {"embedding": np.ones((len(feeds["input"]), 4), np.float32)}

        def close(self) -> None:
            pass

    monkeypatch.setattr("qfsdk.runtime.embedder.read_contract", lambda path: contract)
    monkeypatch.setattr("qfsdk.runtime.embedder.open_backend", lambda *args, **kwargs: Recorder())
    with Embedder(tmp_path / "model.onnx") as embedder:  # what `qfsdk embed FOLDER` runs
        result = embed_files(embedder, collect_images([folder]))
    assert result.resized == [folder / "sideways.jpg"] and len(fed) == 1

    calibration = np.concatenate([batch.numpy() for batch in ImageFolderSource(folder, contract)])
    assert calibration.shape == (1, 3, 32, 24) and calibration.dtype == np.float32
    np.testing.assert_array_equal(calibration, fed[0])
    with Image.open(folder / "sideways.jpg") as image:  # as embed decoded it before: stored orientation, stretched
        stretched = contract.preprocess(np.asarray(image.convert("RGB").resize((24, 32), Image.Resampling.BILINEAR)))
    assert not np.allclose(stretched, fed[0], atol=0.1)
