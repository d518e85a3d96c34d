"""`qfsdk embed` on real face chips: input order, corrupt and grayscale files, resizing, landmarks."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from face_photos import face_chips
from qfsdk.cli import main
from qfsdk.models import get_spec
from qfsdk.runtime import Embedder

TEMPLATE = get_spec("dlib_resnet").contract.template


@pytest.fixture(scope="module")
def chips() -> list[np.ndarray]:
    return face_chips(4)


def run_embed(*args: str):
    return CliRunner().invoke(main, ["embed", *map(str, args)])


def test_folder_with_a_corrupt_and_a_grayscale_file_embeds_the_rest_and_reports_both(dlib_fp32_onnx, chips, tmp_path):
    folder = tmp_path / "faces"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(chips[0]).save(folder / "b.png")
    Image.fromarray(chips[1]).save(folder / "sub" / "a.png")
    Image.fromarray(chips[2]).convert("L").save(folder / "c_gray.jpg")
    (folder / "a_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "emb.npz"
    result = run_embed(dlib_fp32_onnx, folder, "--backend", "onnxruntime", "--batch-size", "2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "embedded 3 of 4 images" in result.output
    assert "skipped 1 unreadable" in result.output and "a_corrupt.jpg" in result.output
    assert "converted 1 grayscale to RGB" in result.output and "c_gray.jpg" in result.output
    saved = np.load(out)
    assert [p.split("faces/")[1] for p in saved["paths"]] == ["b.png", "c_gray.jpg", "sub/a.png"]
    gray = np.asarray(Image.open(folder / "c_gray.jpg").convert("RGB"))
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        expected = embedder.embed([chips[0], gray, chips[1]])
    assert saved["embeddings"].dtype == np.float32
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-5)


def test_crops_of_another_size_are_resized_with_a_warning(dlib_fp32_onnx, chips, tmp_path):
    Image.fromarray(chips[0]).resize((100, 100)).save(tmp_path / "small.png")
    result = run_embed(dlib_fp32_onnx, tmp_path / "small.png", "--backend", "onnxruntime", "--normalize", "-o", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    assert "resized 1 crops to the model input 150x150" in result.output
    np.testing.assert_allclose(np.linalg.norm(np.load(tmp_path / "e.npz")["embeddings"], axis=1), 1, rtol=1e-5)


def test_landmarks_file_aligns_full_images_and_skips_those_without_an_entry(dlib_fp32_onnx, chips, tmp_path):
    # landmarks on the template itself: the warp is the identity, so the crop's own embedding comes back
    Image.fromarray(chips[3]).save(tmp_path / "full.png")
    Image.fromarray(chips[0]).save(tmp_path / "unlisted.png")
    (tmp_path / "landmarks.json").write_text(json.dumps({"full.png": [list(p) for p in TEMPLATE]}))
    result = run_embed(dlib_fp32_onnx, tmp_path / "full.png", tmp_path / "unlisted.png", "--landmarks",
                       tmp_path / "landmarks.json", "--backend", "onnxruntime", "-o", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    assert "skipped 1 without landmarks" in result.output
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        np.testing.assert_allclose(np.load(tmp_path / "e.npz")["embeddings"], embedder.embed(chips[3]), atol=1e-5)


def test_nothing_readable_exits_1_without_writing(dlib_fp32_onnx, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    result = run_embed(dlib_fp32_onnx, tmp_path / "bad.png", "--backend", "onnxruntime", "-o", tmp_path / "e.npz")
    assert result.exit_code == 1 and "none of the 1 images could be embedded" in result.output
    assert not (tmp_path / "e.npz").exists()


def test_bad_landmarks_file_is_a_one_line_error(dlib_fp32_onnx, chips, tmp_path):
    Image.fromarray(chips[0]).save(tmp_path / "a.png")
    (tmp_path / "l.json").write_text(json.dumps({"a.png": [[1, 2]]}))
    result = run_embed(dlib_fp32_onnx, tmp_path / "a.png", "--landmarks", tmp_path / "l.json", "-o", tmp_path / "e.npz")
    assert result.exit_code == 1 and "must be 5 [x, y] pairs" in result.output
