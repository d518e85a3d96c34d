"""Photos in through the C ABI (qfsdk_detector_create, qfsdk_detect, qfsdk_embed_photo, `embed --detect`):
the same faces and embeddings as the Python runtime's FaceDetector and Embedder.embed_photos, statuses
for bad input, and valgrind over 100 photos.

Skipped only when no C/C++ compiler, CMake or OpenVINO development files are present.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from import_support import CONTRACTS, ok, run_cli
from memcheck import assert_memcheck_clean
from qfsdk_native import NativeError
from real_models import MIN_DETECTION_SCORE, REAL_MODELS, photo_paths
from test_native import TINY_CONTRACT, cosines, tiny_onnx
from qfsdk.runtime import Embedder
from qfsdk.runtime.detect import DEFAULT_DETECTOR, DetectorOptions, FaceDetector

MAX_BOX_PX = 1.0
MIN_COSINE = 0.9999
# 100 photos take ~6 min under valgrind on 2 cores: the suite runs 25, QFSDK_VALGRIND_PHOTOS=100 the acceptance run
VALGRIND_PHOTOS = int(os.environ.get("QFSDK_VALGRIND_PHOTOS", "25"))


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray]]:
    return [(path.name, rgb(path)) for path in photo_paths()]


@pytest.fixture(scope="module")
def sface(tmp_path_factory) -> Path:
    """OpenCV's SFace through `qfsdk import`: an ArcFace-template model (one bilinear warp)."""
    model = REAL_MODELS["sface"]
    out = tmp_path_factory.mktemp("native-sface") / "sface.onnx"
    mean, std = CONTRACTS["sface"]
    ok(run_cli("import", model.onnx(), "-o", out, "--mean", mean, "--std", std))
    return out


@pytest.fixture(params=["sface", "dlib_resnet"])
def model(request, sface, dlib_fp32_onnx) -> Path:
    """One model per template: ArcFace's (single warp) and dlib's (YuNet's points on dlib's chip, pyramid)."""
    return sface if request.param == "sface" else dlib_fp32_onnx


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_embed_photo_equals_embed_photos_on_every_registry_photo(lib, model, photos, backend):
    worst_box, worst_cosine, faces = 0.0, 1.0, 0
    with Embedder(model, backend, threads=1) as python, FaceDetector(backend=backend, threads=1) as detector, \
            lib.embedder(model, num_threads=1) as native, lib.detector(DEFAULT_DETECTOR, num_threads=1) as yunet:
        for name, image in photos:
            expected, got = python.embed_photos(image, detector=detector), native.embed_photo(yunet, image)
            assert len(got["scores"]) == len(expected), name
            faces += len(expected)
            if not len(expected):
                continue
            worst_box = max(worst_box, float(np.abs(got["boxes"] - expected.boxes).max()))
            assert np.abs(got["landmarks"] - expected.landmarks).max() <= MAX_BOX_PX, name
            np.testing.assert_allclose(got["scores"], expected.scores, atol=1e-3, err_msg=name)
            worst_cosine = min(worst_cosine, float(cosines(got["embeddings"], expected.embeddings).min()))
    print(f"\n{model.stem} vs Python on {backend}: {faces} faces, max box difference {worst_box:.5f} px, "
          f"min cosine {worst_cosine:.7f}")
    assert faces >= 19 and worst_box <= MAX_BOX_PX and worst_cosine >= MIN_COSINE


def test_detect_equals_the_python_detector_at_full_size(lib, photos):
    options = DetectorOptions(MIN_DETECTION_SCORE, max_size=None)
    with FaceDetector(backend="openvino", threads=1, options=options) as python, \
            lib.detector(DEFAULT_DETECTOR, num_threads=1, score_threshold=MIN_DETECTION_SCORE, max_size=0) as native:
        for name, image in photos:
            expected = python.detect(image)
            boxes, landmarks, scores = native.detect(image)
            assert len(scores) == len(expected), name
            np.testing.assert_allclose(boxes, expected.boxes, atol=MAX_BOX_PX, err_msg=name)
            np.testing.assert_allclose(landmarks, expected.landmarks, atol=MAX_BOX_PX, err_msg=name)
            np.testing.assert_allclose(scores, expected.scores, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("refine", [1, 0])
def test_detect_equals_the_python_detector_at_the_default_size_refined_or_not(lib, photos, refine):
    options = DetectorOptions(MIN_DETECTION_SCORE, refine=bool(refine))
    with FaceDetector(backend="openvino", threads=1, options=options) as python, \
            lib.detector(DEFAULT_DETECTOR, num_threads=1, score_threshold=MIN_DETECTION_SCORE, refine=refine) as native:
        for name, image in photos:
            expected = python.detect(image)
            boxes, landmarks, scores = native.detect(image)
            assert len(scores) == len(expected), name
            np.testing.assert_allclose(boxes, expected.boxes, atol=MAX_BOX_PX, err_msg=name)
            np.testing.assert_allclose(landmarks, expected.landmarks, atol=MAX_BOX_PX, err_msg=name)
            np.testing.assert_allclose(scores, expected.scores, atol=1e-3, err_msg=name)


def call_embed_photo(lib, emb, det, image: np.ndarray, capacity: int, arrays: bool = True) -> tuple[int, int, dict]:
    """(status, *count after the call, the arrays) of one raw qfsdk_embed_photo call."""
    image = np.ascontiguousarray(image)
    out = {"boxes": np.zeros((capacity, 4), np.float32), "landmarks": np.zeros((capacity, 5, 2), np.float32),
           "scores": np.zeros(capacity, np.float32), "embeddings": np.zeros((capacity, emb.embedding_size), np.float32)}
    f32p, count = ctypes.POINTER(ctypes.c_float), ctypes.c_size_t(capacity)
    pointers = [a.ctypes.data_as(f32p) if arrays else None for a in out.values()]
    status = lib.c.qfsdk_embed_photo(emb.handle, det.handle, image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                     image.shape[0], image.shape[1], 0, *pointers, ctypes.byref(count))
    return status, count.value, out


def test_t1_six_faces_a_small_capacity_says_so_and_a_blank_photo_none(lib, sface, photos):
    t1 = dict(photos)["t1.jpg"]
    with lib.embedder(sface, num_threads=1) as emb, lib.detector(DEFAULT_DETECTOR, num_threads=1) as det:
        every = emb.embed_photo(det, t1)
        assert len(every["scores"]) == 6
        status, count, two = call_embed_photo(lib, emb, det, t1, 2)
        assert (status, count) == (6, 6)  # QFSDK_ERR_BUFFER_TOO_SMALL, the number found
        assert b"found 6 faces but *count was 2: pass arrays for 6 faces" in lib.c.qfsdk_last_error(emb.handle)
        for key in two:  # the best two were written
            np.testing.assert_array_equal(two[key], every[key][:2])
        assert call_embed_photo(lib, emb, det, t1, 0, arrays=False)[:2] == (6, 6)  # a count-only query
        blank = np.full((480, 640, 3), 128, np.uint8)
        assert call_embed_photo(lib, emb, det, blank, 0, arrays=False)[:2] == (0, 0)
        assert len(emb.embed_photo(det, blank)["scores"]) == 0


def test_bad_detectors_and_options_fail_with_a_status_and_message(lib, tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    tiny_model = tiny_onnx(tmp_path / "tiny.onnx", TINY_CONTRACT)
    cases = [
        (None, {}, "QFSDK_ERR_INVALID_ARGUMENT", "d.DEFAULT_DETECTOR"),
        (tmp_path / "missing.onnx", {}, "QFSDK_ERR_NOT_FOUND", "missing.onnx"),
        (tiny_model, {}, "QFSDK_ERR_UNSUPPORTED", "not a face detector qfsdk can decode"),
        (tmp_path / "notes.onnx", {}, "QFSDK_ERR_BACKEND", "OpenVINO could not load the detector"),
        (DEFAULT_DETECTOR, {"score_threshold": 2.0}, "QFSDK_ERR_INVALID_ARGUMENT", "score_threshold must lie in 0..1"),
        (DEFAULT_DETECTOR, {"nms_threshold": float("nan")}, "QFSDK_ERR_INVALID_ARGUMENT", "nms_threshold"),
        (DEFAULT_DETECTOR, {"max_size": 16}, "QFSDK_ERR_INVALID_ARGUMENT", "max_size must be 0"),
        (DEFAULT_DETECTOR, {"top_k": 0}, "QFSDK_ERR_INVALID_ARGUMENT", "top_k must be >= 1"),
        (DEFAULT_DETECTOR, {"struct_size": 0}, "QFSDK_ERR_INVALID_ARGUMENT", "struct_size"),
    ]  # fmt: skip
    for path, options, status, words in cases:
        with pytest.raises(NativeError, match=words) as info:
            lib.detector(path, **options)
        assert info.value.status == status, (path, options)
    assert lib.c.qfsdk_detector_create(str(DEFAULT_DETECTOR).encode(), None, None) == 1
    lib.c.qfsdk_detector_destroy(None)


def test_bad_photo_calls_are_status_codes(lib, sface, tmp_path):
    image = np.zeros((64, 80, 3), np.uint8)
    u8p, count = ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t(4)
    pixels = image.ctypes.data_as(u8p)
    no_template = tiny_onnx(tmp_path / "m.onnx", {k: v for k, v in TINY_CONTRACT.items() if k != "template"})
    with lib.embedder(sface, num_threads=1) as emb, lib.detector(DEFAULT_DETECTOR, num_threads=1) as det, \
            lib.embedder(no_template, num_threads=1) as plain:
        c = lib.c
        assert c.qfsdk_embed_photo(None, det.handle, pixels, 64, 80, 0, None, None, None, None, ctypes.byref(count)) == 1
        assert c.qfsdk_embed_photo(emb.handle, None, pixels, 64, 80, 0, None, None, None, None, ctypes.byref(count)) == 1
        for args, words in [((None, 64, 80, 0), b"rgb and count"), ((pixels, 0, 80, 0), b"height and width"),
                            ((pixels, 64, 80, 100), b"stride_bytes")]:  # fmt: skip
            assert c.qfsdk_embed_photo(emb.handle, det.handle, *args, None, None, None, None, ctypes.byref(count)) == 1
            assert words in c.qfsdk_last_error(emb.handle)
        assert c.qfsdk_embed_photo(emb.handle, det.handle, pixels, 64, 80, 0, None, None, None, None, None) == 1
        assert c.qfsdk_embed_photo(emb.handle, det.handle, pixels, 64, 80, 0, None, None, None, None,
                                   ctypes.byref(count)) == 1  # *count > 0 needs embeddings
        assert b"embeddings must not be NULL" in c.qfsdk_last_error(emb.handle)
        assert c.qfsdk_detect(det.handle, None, 64, 80, 0, None, None, None, ctypes.byref(count)) == 1
        assert b"rgb and count" in c.qfsdk_detector_last_error(det.handle)
        assert c.qfsdk_detect(None, pixels, 64, 80, 0, None, None, None, ctypes.byref(count)) == 1
        with pytest.raises(NativeError, match="no alignment template") as info:
            plain.embed_photo(det, image)
        assert info.value.status == "QFSDK_ERR_UNSUPPORTED"
        one = np.zeros((1, 1, 3), np.uint8)  # one pixel: scaled to nothing smaller, padded, no face
        assert len(emb.embed_photo(det, one)["scores"]) == 0


def test_example_embeds_every_face_of_a_photo(native_build, sface, photos, tmp_path):
    """PNG in, so stb_image and Pillow decode the same pixels (their JPEG decoders differ by a level here and there)."""
    t1, embed = tmp_path / "t1.png", native_build / "examples" / "embed"
    Image.fromarray(dict(photos)["t1.jpg"]).save(t1)
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(blank)
    done = subprocess.run([embed, sface, "--detect", DEFAULT_DETECTOR, "--threads", "1", t1, blank],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"{blank}: no face" and len(lines) == 7
    with Embedder(sface, "openvino", threads=1) as python:
        expected = python.embed_photos(rgb(t1))
    for k, line in enumerate(lines[:6]):
        head, vector = line.split(" embedding ")
        assert head.startswith(f"{t1}#{k}: box ")
        numbers = np.array(head.split(": box ")[1].replace("score ", "").split(), np.float32)
        np.testing.assert_allclose(numbers[:4], expected.boxes[k], atol=MAX_BOX_PX)
        assert abs(numbers[4] - expected.scores[k]) < 1e-3
        assert cosines(np.array(vector.split(), np.float32)[None], expected.embeddings[k : k + 1])[0] >= MIN_COSINE
    out = tmp_path / "faces.npy"
    done = subprocess.run([embed, sface, "--detect", DEFAULT_DETECTOR, "--out", out, t1, blank], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert cosines(np.load(out), expected.embeddings).min() >= MIN_COSINE
    wrong = subprocess.run([embed, sface, "--detect", sface, t1], capture_output=True, text=True)
    assert wrong.returncode == 1 and not wrong.stdout
    assert wrong.stderr.startswith(f"embed: QFSDK_ERR_UNSUPPORTED: {sface}: not a face detector qfsdk can decode")


@pytest.mark.slow
def test_valgrind_no_leaks_or_invalid_accesses_over_many_photos(native_build, tmp_path):
    """`embed --detect` under memcheck over the registry photos, cycled to VALGRIND_PHOTOS (t1.jpg: six faces each time)."""
    model = tiny_onnx(tmp_path / "tiny.onnx", TINY_CONTRACT)  # a small embedder: the time goes to detection
    paths = []
    for index, photo in enumerate(photo_paths()):  # at most 480 px: valgrind's time goes to decoding big JPEGs otherwise
        image = Image.open(photo).convert("RGB")
        image.thumbnail((480, 480))
        paths.append(tmp_path / f"{index:02d}{'.jpg' if index % 2 else '.png'}")
        image.save(paths[-1])
    cycled = [paths[i % len(paths)] for i in range(VALGRIND_PHOTOS)]
    # --vex-guest-max-insns: OpenVINO's JIT convolution kernels for YuNet are blocks too large for
    # valgrind's default translation buffer ("VEX temporary storage exhausted"); shorter ones fit.
    assert_memcheck_clean([native_build / "examples" / "embed", model, "--detect", DEFAULT_DETECTOR, "--detect-size", "320",
                           "--threads", "1", "--out", tmp_path / "e.npy", *cycled], timeout=900,
                          options=["--vex-guest-max-insns=10"])
    assert len(np.load(tmp_path / "e.npy")) >= VALGRIND_PHOTOS  # faces were found and embedded throughout
