"""Embedder on ONNX Runtime and OpenVINO with the pretrained dlib ResNet and real face chips."""

import importlib.util
import sys
import threading

import numpy as np
import onnx
import pytest

from face_photos import face_chips
from qfsdk.errors import MissingDependencyError
from qfsdk.runtime import Embedder
from qfsdk.runtime.backends import BACKENDS, choose_backend, open_backend
from qfsdk.runtime.metadata import ContractMissingError, ModelFileError, read_onnx_contract, read_onnx_metadata

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
CPU_BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))]


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.stack(face_chips(6))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_metadata_is_read_from_the_onnx_file_itself(dlib_fp32_onnx):
    expected = {p.key: p.value for p in onnx.load(str(dlib_fp32_onnx)).metadata_props}
    assert read_onnx_metadata(dlib_fp32_onnx) == expected


def test_files_without_a_contract_or_not_onnx_fail_clearly(tmp_path, dlib_fp32_onnx):
    bare = onnx.load(str(dlib_fp32_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ContractMissingError, match="qfsdk convert"):
        Embedder(tmp_path / "bare.onnx")
    (tmp_path / "photo.onnx").write_bytes(b"\xff\xd8\xff\xe0 not a model")
    with pytest.raises(ModelFileError, match="not an ONNX model file"):
        read_onnx_contract(tmp_path / "photo.onnx")


def test_openvino_and_onnxruntime_agree_on_real_faces(dlib_fp32_onnx, chips):
    pytest.importorskip("openvino")
    with Embedder(dlib_fp32_onnx, "onnxruntime") as ort_embedder, Embedder(dlib_fp32_onnx, "openvino") as ov_embedder:
        assert ov_embedder.contract == read_onnx_contract(dlib_fp32_onnx) == ort_embedder.contract
        ort_out, ov_out = ort_embedder.embed(chips), ov_embedder.embed(chips)
    assert ort_out.dtype == np.float32 and ort_out.shape == (len(chips), 128)
    assert cosine(ort_out, ov_out).min() >= 0.9999


def test_batches_lists_and_single_images_give_the_same_embeddings(dlib_fp32_onnx, chips):
    with Embedder(dlib_fp32_onnx, "onnxruntime", batch_size=4) as embedder:
        whole = embedder.embed(chips)
        np.testing.assert_allclose(embedder.embed(list(chips)), whole, atol=1e-5)
        np.testing.assert_allclose(embedder.embed(chips[2])[0], whole[2], atol=1e-5)


def test_flip_sums_the_mirror_and_normalize_gives_unit_norm(dlib_fp32_onnx, chips):
    with Embedder(dlib_fp32_onnx, "onnxruntime") as plain, Embedder(dlib_fp32_onnx, "onnxruntime", flip=True, normalize=True) as both:
        expected = plain.embed(chips) + plain.embed(chips[:, :, ::-1])
        out = both.embed(chips)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eight_threads_sharing_one_embedder_match_sequential_calls(dlib_fp32_onnx, chips, backend):
    jobs = [chips[i % len(chips) : i % len(chips) + 2] for i in range(8)]
    with Embedder(dlib_fp32_onnx, backend, threads=1) as embedder:
        sequential = [embedder.embed(job) for job in jobs]
        results: list = [None] * len(jobs)
        barrier = threading.Barrier(len(jobs))

        def work(i: int) -> None:
            barrier.wait()
            results[i] = [embedder.embed(jobs[i]) for _ in range(2)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for got, want in zip(results, sequential):
        for repeat in got:
            np.testing.assert_array_equal(repeat, want)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((150, 150, 3), np.float32), "uint8"),
        (np.zeros((150, 150, 4), np.uint8), "3 channels"),
        (np.zeros((150, 150), np.uint8), "grayscale"),
        (np.zeros((2, 112, 112, 3), np.uint8), "aligned crop of 150x150"),
        (np.zeros((0, 150, 150, 3), np.uint8), "empty batch"),
        ([], "empty batch"),
        (np.zeros((1, 1, 150, 150, 3), np.uint8), r"\(N, H, W, 3\)"),
    ],
)
def test_bad_inputs_raise_value_errors_that_say_what_was_expected(dlib_fp32_onnx, images, match):
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder, pytest.raises(ValueError, match=match):
        embedder.embed(images)


def test_bad_landmarks_raise_value_errors(dlib_fp32_onnx, chips):
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        with pytest.raises(ValueError, match=r"landmarks of shape \(2, 5, 2\)"):
            embedder.embed(list(chips[:2]), landmarks=np.zeros((2, 4, 2)))


def test_registry_and_auto_choice(dlib_fp32_onnx, tmp_path):
    assert set(BACKENDS) == {"onnxruntime", "openvino", "tensorrt"}
    assert choose_backend(tmp_path / "m.engine") == "tensorrt"
    assert choose_backend(dlib_fp32_onnx) in ("openvino", "onnxruntime")
    with pytest.raises(Exception, match="unknown backend 'tflite'"):
        open_backend(dlib_fp32_onnx, "tflite")


def test_a_missing_optional_backend_names_its_pip_extra(dlib_fp32_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'qfsdk\[openvino\]'"):
        Embedder(dlib_fp32_onnx, "openvino")
