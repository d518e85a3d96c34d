"""The C ABI (runtime/native): build, parity with the Python runtime, errors, leaks.

Skipped only when no C/C++ compiler, CMake or OpenVINO development files are present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "runtime" / "native"
sys.path.insert(0, str(NATIVE / "python"))

from qfsdk_native import NativeError  # noqa: E402
from memcheck import assert_memcheck_clean  # noqa: E402

MIN_COSINE = 0.9999
TINY_SIZE = (16, 20)  # height, width: not square, so swapped axes show
TINY_CONTRACT = {
    "alignment": "arcface_5pt", "channel_order": "BGR", "distance": "cosine", "embedding_size": 16,
    "input_size": list(TINY_SIZE), "mean": [127.5, 120.0, 100.0], "std": [127.5, 60.0, 50.0], "threshold": None,
    "template": [[6.0, 5.0], [13.0, 5.0], [9.5, 8.5], [7.0, 12.0], [12.0, 12.0]],
}  # fmt: skip


def tiny_onnx(path: Path, contract: dict | str | None = None, *, static_batch: int | None = None,
              static_size: tuple[int, int] | None = None, embedding_size: int | None = None) -> Path:
    """A small conv net with ``contract`` in its metadata (None: no contract); any input size
    unless ``static_size``; the output size is the contract's unless ``embedding_size``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    size = embedding_size or (contract if isinstance(contract, dict) else TINY_CONTRACT)["embedding_size"]
    weights = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((8, size)).astype(np.float32), "g")]  # fmt: skip
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "g"], ["embedding"])]  # fmt: skip
    batch = static_batch or "batch"
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *(static_size or ("h", "w"))])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, size])], weights)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if contract is not None:
        text = contract if isinstance(contract, str) else json.dumps(contract, sort_keys=True)
        helper.set_model_props(model, {"qfsdk.contract": text})
    onnx.save(model, str(path))
    return path


def python_embeddings(path: Path, images: np.ndarray, landmarks=None, backend: str = "onnxruntime", **options) -> np.ndarray:
    """The Python runtime's embeddings (onnxruntime: float32 everywhere, the tight reference)."""
    from qfsdk.runtime.embedder import Embedder

    with Embedder(path, backend=backend, threads=1, **options) as embedder:
        return embedder.embed(images, landmarks)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def write_ppm(path: Path, rgb: np.ndarray) -> Path:
    h, w, _ = rgb.shape
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(rgb, np.uint8).tobytes())
    return path


def random_crops(n: int, size=TINY_SIZE, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx", TINY_CONTRACT)


def test_example_embeds_face_chips_like_the_python_runtime(native_build, dlib_fp32_onnx, tmp_path):
    from face_photos import face_chips

    chips = np.stack(face_chips())
    images = [write_ppm(tmp_path / f"chip{i}.ppm", chip) for i, chip in enumerate(chips)]
    out = tmp_path / "embeddings.npy"
    done = subprocess.run([native_build / "examples" / "embed", dlib_fp32_onnx, "--threads", "2", "--out", out, *images],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    native = np.load(out)
    assert native.shape == (len(chips), 128)
    for backend in ("openvino", "onnxruntime"):  # Python's openvino may run bf16 on AMX CPUs; libqfsdk runs f32
        assert cosines(native, python_embeddings(dlib_fp32_onnx, chips, backend=backend)).min() >= MIN_COSINE, backend


@pytest.mark.parametrize("fmt", ["png", "jpeg", "png16"])
def test_example_embeds_png_and_jpeg_faces_like_the_python_runtime(native_build, dlib_fp32_onnx, tmp_path, fmt):
    """`embed model.onnx face.png`: stb_image in the example, Pillow in the Python runtime.

    PNG (8 and 16 bits) decodes to the same pixels in both. JPEG decoders may differ by a level
    here and there (IDCT and chroma upsampling): measured min cosine 0.999996 on these chips, so
    the same bound as for identical pixels holds.
    """
    import cv2
    from face_photos import face_chips
    from PIL import Image

    chips = face_chips()
    files = []
    for i, chip in enumerate(chips):
        path = tmp_path / f"chip{i}.{'jpg' if fmt == 'jpeg' else 'png'}"
        if fmt == "png16":
            assert cv2.imwrite(str(path), chip[..., ::-1].astype(np.uint16) * 257)
        else:
            Image.fromarray(chip).save(path, quality=95)
        files.append(path)
    out = tmp_path / "embeddings.npy"
    done = subprocess.run([native_build / "examples" / "embed", dlib_fp32_onnx, "--threads", "2", "--out", out, *files],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    from qfsdk.runtime.images import load_rgb

    decoded = [load_rgb(path)[0] for path in files]
    if fmt != "jpeg":
        np.testing.assert_array_equal(np.stack(decoded), np.stack(chips))
    assert cosines(np.load(out), python_embeddings(dlib_fp32_onnx, decoded)).min() >= MIN_COSINE


def test_example_refuses_what_it_cannot_decode(native_build, tiny_model, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    done = subprocess.run([native_build / "examples" / "embed", tiny_model, tmp_path / "notes.png", tmp_path / "gone.jpg"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.strip() == f"embed: {tmp_path / 'notes.png'}: cannot decode (unknown image type); " \
                                  "pass a PNG, JPEG or binary PPM/PGM image"
    missing = subprocess.run([native_build / "examples" / "embed", tiny_model, tmp_path / "gone.jpg"], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.strip() == f"embed: {tmp_path / 'gone.jpg'}: No such file or directory"


def test_example_prints_embeddings_and_reports_errors(native_build, tiny_model, tmp_path):
    embed = native_build / "examples" / "embed"
    crop = random_crops(1)[0]
    done = subprocess.run([embed, tiny_model, write_ppm(tmp_path / "a.ppm", crop)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed = np.array(done.stdout.split(":", 1)[1].split(), np.float32)
    np.testing.assert_allclose(printed, python_embeddings(tiny_model, crop[None])[0], rtol=1e-4, atol=1e-4)
    wrong = subprocess.run([embed, tiny_model, write_ppm(tmp_path / "b.ppm", crop[:8])], capture_output=True, text=True)
    assert wrong.returncode == 1 and "QFSDK_ERR_INPUT_SIZE" in wrong.stderr and "16x20" in wrong.stderr


def test_batches_flip_and_normalize_match_the_python_runtime(lib, tiny_model):
    crops = random_crops(5)
    plain = python_embeddings(tiny_model, crops)
    with lib.embedder(tiny_model, num_threads=1, batch_hint=2) as emb:
        assert (emb.input_size, emb.embedding_size, emb.backend) == (TINY_SIZE, 16, "openvino")
        assert json.loads(emb.contract_json) == TINY_CONTRACT
        np.testing.assert_allclose(emb.embed_aligned(crops), plain, rtol=1e-4, atol=1e-4)
    expected = python_embeddings(tiny_model, crops, flip=True, normalize=True)
    with lib.embedder(tiny_model, num_threads=1, flip=True, normalize=True) as emb:
        np.testing.assert_allclose(emb.embed_aligned(crops), expected, rtol=1e-4, atol=1e-5)


def test_static_batch_models_are_padded(lib, tiny_model, tmp_path):
    model = tiny_onnx(tmp_path / "static.onnx", TINY_CONTRACT, static_batch=4)
    crops = random_crops(6)
    with lib.embedder(model, num_threads=1) as emb:
        np.testing.assert_allclose(emb.embed_aligned(crops), python_embeddings(tiny_model, crops), rtol=1e-4, atol=1e-4)


def test_concurrent_calls_on_one_handle(lib, tiny_model):
    crops = random_crops(8)
    with lib.embedder(tiny_model, num_threads=1) as emb:
        expected = emb.embed_aligned(crops)
        results, errors = {}, []

        def work(i: int) -> None:
            try:
                for _ in range(20):
                    results[i] = emb.embed_aligned(crops[i : i + 1])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(crops))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    np.testing.assert_array_equal(np.concatenate([results[i] for i in range(len(crops))]), expected)


def test_landmarks_at_the_template_give_the_image_itself(lib, tiny_model):
    template = np.array(TINY_CONTRACT["template"], np.float32)
    with lib.embedder(tiny_model, num_threads=1) as emb:
        crop = random_crops(1)[0]
        np.testing.assert_array_equal(emb.align(crop, template), crop)
        big = random_crops(1, (40, 50), seed=3)[0]  # a translation by whole pixels crops exactly
        np.testing.assert_array_equal(emb.align(big, template + [7, 11]), big[11 : 11 + 16, 7 : 7 + 20])
        np.testing.assert_allclose(emb.embed_landmarks(big, template + [7, 11]),
                                   emb.embed_aligned(big[11 : 11 + 16, 7 : 7 + 20])[0], rtol=1e-6)  # fmt: skip
        upscaled = np.repeat(np.repeat(crop, 2, 0), 2, 1)  # one pyramid level takes it back exactly
        np.testing.assert_array_equal(emb.align(upscaled, template * 2 + 0.5), crop)


@pytest.mark.parametrize("fit", ["landmarks_to_template", "template_to_landmarks"])
def test_alignment_matches_python_align(lib, tmp_path, fit):
    from qfsdk.runtime.align import warp_face

    model = tiny_onnx(tmp_path / "m.onnx", {**TINY_CONTRACT, "template_fit": fit})
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)
    template = np.array(TINY_CONTRACT["template"])
    differing = 0
    with lib.embedder(model, num_threads=1) as emb:
        for scale in (0.7, 1.3, 1.99, 2.0, 2.6, 4.5, 7.0):  # >= 2 goes through the pyramid
            marks = np.full((5, 2), -1.0, np.float32)
            while not ((marks >= 0).all() and (marks < [169, 149]).all()):  # on the image: C refuses others
                angle, shift = rng.uniform(-0.6, 0.6), rng.uniform(-10, 80, 2)
                rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
                marks = (template @ rotation.T + shift + rng.normal(0, 0.3, (5, 2))).astype(np.float32)
            expected = warp_face(image, marks, template, TINY_SIZE, fit)
            crop = emb.align(image, marks)
            assert np.abs(crop.astype(int) - expected).max() <= 1, scale
            differing += int((crop != expected).sum())
    assert differing <= 2  # float64 fits may differ in the last bit from numpy's LAPACK/BLAS


def test_dlib_landmarks_path_matches_the_python_runtime(lib, dlib_fp32_onnx):
    dlib = pytest.importorskip("dlib")
    from face_photos import DETECTOR_UPSAMPLE, face_photo_dir
    from PIL import Image

    from qfsdk.models.dlib_resnet import default_weights_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(default_weights_path().with_name("shape_predictor_5_face_landmarks.dat")))
    images, marks = [], []
    for name in ("obama.jpg", "biden.jpg", "astronaut.png"):
        image = np.asarray(Image.open(face_photo_dir() / name).convert("RGB"))
        shape = predictor(image, detector(image, DETECTOR_UPSAMPLE)[0])
        images.append(image)
        marks.append([(shape.part(i).x, shape.part(i).y) for i in range(5)])
    with lib.embedder(dlib_fp32_onnx, num_threads=2) as emb:
        native = np.stack([emb.embed_landmarks(im, np.array(m, np.float32)) for im, m in zip(images, marks)])
    for image, points, vector in zip(images, marks, native):
        reference = python_embeddings(dlib_fp32_onnx, [image], np.array([points], np.float64))
        assert cosines(vector[None], reference)[0] >= MIN_COSINE


def test_parses_every_zoo_contract(lib, tmp_path):
    from qfsdk.models import get_spec, names

    for name in names():
        contract = get_spec(name).contract
        with lib.embedder(tiny_onnx(tmp_path / f"{name}.onnx", json.loads(contract.to_json())), num_threads=1) as emb:
            assert emb.input_size == tuple(contract.input_size) and emb.embedding_size == contract.embedding_size
            assert emb.contract_json == contract.to_json()


@pytest.mark.parametrize(
    ("contract", "status", "words"),
    [
        (None, "QFSDK_ERR_NO_CONTRACT", "no 'qfsdk.contract' metadata"),
        ("{not json", "QFSDK_ERR_BAD_CONTRACT", "invalid JSON"),
        ('{"input_size": [16, 20]}', "QFSDK_ERR_BAD_CONTRACT", "embedding_size are required"),
        ({**TINY_CONTRACT, "channel_order": "RGBA"}, "QFSDK_ERR_BAD_CONTRACT", "channel_order"),
        ({**TINY_CONTRACT, "std": [1, 0, 1]}, "QFSDK_ERR_BAD_CONTRACT", "std must be > 0"),
        ({**TINY_CONTRACT, "input_size": [16.5, 20]}, "QFSDK_ERR_BAD_CONTRACT", "positive integer"),
        ({**TINY_CONTRACT, "template": [[1, 2]]}, "QFSDK_ERR_BAD_CONTRACT", "template"),
        ({**TINY_CONTRACT, "template_fit": "affine"}, "QFSDK_ERR_BAD_CONTRACT", "template_fit"),
        ({**TINY_CONTRACT, "task": "detector"}, "QFSDK_ERR_BAD_CONTRACT", "not an embedder"),
    ],
)  # fmt: skip
def test_bad_models_fail_with_a_status_and_message(lib, tmp_path, contract, status, words):
    model = tiny_onnx(tmp_path / "m.onnx", contract)
    with pytest.raises(NativeError) as info:
        lib.embedder(model)
    assert info.value.status == status and words in str(info.value)


@pytest.mark.parametrize(
    ("shape", "words"),
    [({"embedding_size": 12}, "embedding_size is 16"), ({"static_size": (16, 16)}, "contract's 3 x 16 x 20")],
)
def test_contract_must_agree_with_the_model(lib, tmp_path, shape, words):
    model = tiny_onnx(tmp_path / "m.onnx", TINY_CONTRACT, **shape)
    with pytest.raises(NativeError, match=words) as info:
        lib.embedder(model)
    assert info.value.status == "QFSDK_ERR_BAD_CONTRACT" and str(model) in str(info.value)


def test_call_errors_are_status_codes(lib, tiny_model, tmp_path):
    c = lib.c
    assert c.qfsdk_abi_version() == 1
    for model, backend, status, words in [
        (tmp_path / "missing.onnx", None, "QFSDK_ERR_NOT_FOUND", "missing.onnx"),
        (tiny_model, "tflite", "QFSDK_ERR_BACKEND_UNAVAILABLE", "unknown backend 'tflite'"),
        (tmp_path / "m.engine", None, "QFSDK_ERR_BACKEND_UNAVAILABLE", "without TensorRT"),
    ]:
        with pytest.raises(NativeError, match=words) as info:
            lib.embedder(model, backend)
        assert info.value.status == status
    assert c.qfsdk_embedder_create(None, None, None, None) == 1
    assert b"must not be NULL" in c.qfsdk_last_error(None)
    with pytest.raises(NativeError, match="struct_size"):
        lib.embedder(tiny_model, struct_size=0)
    with lib.embedder(tiny_model, num_threads=1) as emb:
        crops = random_crops(2)
        with pytest.raises(NativeError, match="16x20") as info:
            emb.embed_aligned(crops[:, :, :16])
        assert info.value.status == "QFSDK_ERR_INPUT_SIZE"
        out, (u8p, f32p) = np.empty(16, np.float32), (c.qfsdk_embed_aligned.argtypes[1], c.qfsdk_embed_aligned.argtypes[5])
        status = c.qfsdk_embed_aligned(emb.handle, crops.ctypes.data_as(u8p), 2, 16, 20, out.ctypes.data_as(f32p), 16)
        assert status == 6 and b"out_len 16 < 2 x 16" in c.qfsdk_last_error(emb.handle)
        assert c.qfsdk_embed_aligned(emb.handle, None, 1, 16, 20, None, 16) == 1
        assert c.qfsdk_embed_aligned(None, None, 1, 16, 20, None, 16) == 1
        inside = np.array([[4, 5], [14, 5], [9, 9], [5, 13], [13, 13]], np.float32)  # a face on the 16x20 crop
        for marks, words in [(np.ones((5, 2), np.float32), "all at one point"),
                             (np.stack([np.arange(5), np.arange(5)], 1).astype(np.float32) * 3, "on one line"),
                             (inside + [0, 2.6], r"landmark 3 at \(5, 15.6\) lies outside the 20x16 image"),
                             (inside - [4.6, 0], r"landmark 0 at \(-0.6, 5\) lies outside")]:
            for call in (emb.align, emb.embed_landmarks):  # the Python runtime's check_landmarks
                with pytest.raises(NativeError, match=words) as info:
                    call(crops[0], marks)
                assert info.value.status == "QFSDK_ERR_INVALID_ARGUMENT"
        emb.embed_landmarks(crops[0], inside + [0, 2.5])  # on the border pixels' edges: still on the image
    assert c.qfsdk_embedding_size(None) == 0 and c.qfsdk_contract_json(None) is None
    c.qfsdk_embedder_destroy(None)


def test_landmarks_need_a_template(lib, tmp_path):
    no_template = {k: v for k, v in TINY_CONTRACT.items() if k != "template"}
    with lib.embedder(tiny_onnx(tmp_path / "m.onnx", no_template), num_threads=1) as emb:
        with pytest.raises(NativeError, match="no landmark template") as info:
            emb.embed_landmarks(random_crops(1)[0], np.zeros((5, 2), np.float32))
    assert info.value.status == "QFSDK_ERR_UNSUPPORTED"


@pytest.mark.parametrize(
    ("mode", "calls"),
    [("aligned", 1000), ("landmarks", 200)],  # landmarks: a 120x140 image through a 2-level pyramid
)
def test_valgrind_no_leaks_or_invalid_accesses(native_build, tiny_model, tmp_path, mode, calls):
    size, extra = (TINY_SIZE, []) if mode == "aligned" else ((120, 140), ["--landmarks", "20 20 60 22 40 50 25 80 55 82"])
    image = write_ppm(tmp_path / "image.ppm", random_crops(1, size)[0])
    assert_memcheck_clean([native_build / "examples" / "embed", tiny_model, "--threads", "1", "--repeat", calls, *extra,
                           "--out", tmp_path / "e.npy", image], timeout=600)
