"""`qfsdk embed` on real face chips: input order, corrupt and grayscale files, resizing, landmarks."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_crops_of_another_size_are_resized_with_aligned_and_refused_without(dlib_fp32_onnx, chips, tmp_path):
    Image.fromarray(chips[0]).resize((100, 100)).save(tmp_path / "small.png")
    Image.fromarray(chips[1]).save(tmp_path / "fits.png")
    refused = run_embed(dlib_fp32_onnx, tmp_path, "--backend", "onnxruntime", "-o", tmp_path / "e.npz")
    assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
    assert "1 of 2 images are not 150x150 aligned crops" in refused.output and "small.png 100x100" in refused.output
    assert "--detect" in refused.output and "--aligned" in refused.output and not (tmp_path / "e.npz").exists()
    result = run_embed(dlib_fp32_onnx, tmp_path / "small.png", "--aligned", "--backend", "onnxruntime", "--normalize",
                       "-o", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    assert "resized 1 crops to the model input 150x150" in result.output
    np.testing.assert_allclose(np.linalg.norm(np.load(tmp_path / "e.npz")["embeddings"], axis=1), 1, rtol=1e-5)


def test_the_crop_check_reads_sizes_upright(dlib_fp32_onnx, chips, tmp_path):
    """A crop stored sideways with an EXIF rotation is the model's size once upright, as it is decoded."""
    sideways = Image.fromarray(np.ascontiguousarray(chips[0][:, :120]))  # 150 high, 120 wide upright
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    sideways.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", exif=exif)
    refused = run_embed(dlib_fp32_onnx, tmp_path / "rotated.jpg", "--backend", "onnxruntime", "-o", tmp_path / "e.npz")
    assert refused.exit_code == 1 and "rotated.jpg 120x150" in refused.output, refused.output


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


def test_landmarks_that_cannot_align_a_face_are_skipped_with_a_count_and_reason(dlib_fp32_onnx, chips, tmp_path):
    template = np.array(TEMPLATE)
    marks = {"good.png": template, "outside.png": template + [400.0, 0.0], "point.png": np.full((5, 2), 70.0),
             "line.png": np.stack([np.linspace(20, 120, 5), np.linspace(30, 90, 5)], axis=1)}  # fmt: skip
    for name in marks:
        Image.fromarray(chips[0] if name == "good.png" else chips[1]).save(tmp_path / name)
    (tmp_path / "l.json").write_text(json.dumps({name: points.tolist() for name, points in marks.items()}))
    out = tmp_path / "e.npz"
    result = run_embed(dlib_fp32_onnx, *(tmp_path / name for name in marks), "--landmarks", tmp_path / "l.json",
                       "--backend", "onnxruntime", "--batch-size", "2", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "embedded 1 of 4 images" in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("skipped 3 whose landmarks"))
    assert "outside.png (landmark 0 at (510.408, 45.8888) lies outside the 150x150 image (and 4 more))" in line
    assert "point.png (landmarks are all at one point" in line and "line.png (landmarks lie on one line" in line
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        np.testing.assert_allclose(np.load(out)["embeddings"], embedder.embed(chips[0]), atol=1e-5)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"a.png": [[1, 2], [3, 4], [5, NaN], [7, 8], [9, 10]]}', "NaN or infinite"),
        (b'{"a.png": [[1, 2], [3, 4], [5, Infinity], [7, 8], [9, 10]]}', "NaN or infinite"),
        (b'{"a.png": [[1, 2], [3, 4], [5, 1e999], [7, 8], [9, 10]]}', "NaN or infinite"),
        (b'{"a.png": [[1, 2], [3, 4], [5, "6"], [7, 8], [9, 10]]}', "pairs of numbers"),
        (b'{"a.png": [[1, 2]]}\xff\xfe', "not UTF-8 text (byte 19)"),
        ("{\"caf\u00e9.png\": 1}".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_a_landmarks_file_with_nan_or_not_utf8_is_one_line_and_exit_1(dlib_fp32_onnx, chips, tmp_path, content, words):
    Image.fromarray(chips[0]).save(tmp_path / "a.png")
    (tmp_path / "l.json").write_bytes(content)
    result = run_embed(dlib_fp32_onnx, tmp_path / "a.png", "--landmarks", tmp_path / "l.json", "-o", tmp_path / "e.npz")
    assert result.exit_code == 1 and words in result.output and str(tmp_path / "l.json") in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "e.npz").exists()


def test_a_fifo_is_skipped_with_its_reason_instead_of_hanging(dlib_fp32_onnx, chips, tmp_path):
    Image.fromarray(chips[0]).save(tmp_path / "face.png")
    os.mkfifo(tmp_path / "pipe.png")
    out = tmp_path / "e.npz"
    done = subprocess.run([sys.executable, "-m", "qfsdk", "embed", dlib_fp32_onnx, tmp_path / "pipe.png", tmp_path / "face.png",
                           "--backend", "onnxruntime", "-o", out], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "embedded 1 of 2 images" in done.stdout
    assert f"skipped 1 unreadable: {tmp_path / 'pipe.png'} (not a regular file (a FIFO)" in done.stderr
    assert [Path(p).name for p in np.load(out)["paths"]] == ["face.png"]


def test_when_nothing_can_be_embedded_the_error_names_each_file_and_why(dlib_fp32_onnx, chips, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    os.mkfifo(tmp_path / "pipe.png")
    for name in ("unlisted.png", "far.png"):
        Image.fromarray(chips[0]).save(tmp_path / name)
    (tmp_path / "l.json").write_text(json.dumps({"far.png": (np.array(TEMPLATE) + 1000).tolist()}))
    result = run_embed(dlib_fp32_onnx, *(tmp_path / n for n in ("bad.png", "pipe.png", "unlisted.png", "far.png")),
                       "--landmarks", tmp_path / "l.json", "--backend", "onnxruntime", "-o", tmp_path / "e.npz")  # fmt: skip
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    message = result.output
    assert "none of the 4 images could be embedded: " in message
    assert f"{tmp_path / 'bad.png'} (cannot identify image file" in message
    assert f"{tmp_path / 'pipe.png'} (not a regular file (a FIFO)" in message
    assert f"{tmp_path / 'unlisted.png'} (no landmarks in {tmp_path / 'l.json'})" in message
    assert f"{tmp_path / 'far.png'} (landmark 0 at" in message
    assert not (tmp_path / "e.npz").exists()


def test_parallel_decoding_keeps_input_order_and_the_skips(dlib_fp32_onnx, chips, tmp_path):
    from qfsdk.runtime.batch_embed import embed_files

    files, expected = [], []
    for i in range(23):
        path = tmp_path / f"{i:02d}.png"
        if i % 5 == 3:
            path.write_bytes(b"corrupt")
        else:
            Image.fromarray(chips[i % len(chips)]).save(path)
            expected.append(i % len(chips))
        files.append(path)
    with Embedder(dlib_fp32_onnx, "onnxruntime", batch_size=4) as embedder:
        reference = embedder.embed(chips)
        for workers in (1, 3):
            result = embed_files(embedder, files, workers=workers)
            assert result.paths == [f for i, f in enumerate(files) if i % 5 != 3]
            assert result.unreadable == [f for i, f in enumerate(files) if i % 5 == 3]
            assert set(result.reasons) == set(result.unreadable)
            np.testing.assert_allclose(result.embeddings, reference[expected], atol=1e-5)
