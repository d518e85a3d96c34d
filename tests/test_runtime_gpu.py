"""GPU tests (run by scripts/gpu_check.sh): cuda-python buffers, TensorRT engines vs ONNX Runtime.

They skip without a CUDA GPU reachable through cuda-python, or without tensorrt. Imports stay
light (no click, no face photos) so they run on bare GPU machines.
"""

import numpy as np
import pytest

from qfsdk.models import get_spec
from qfsdk.runtime import Embedder
from qfsdk.runtime.engine import read_engine_info

CONTRACT = get_spec("mobilefacenet").contract


@pytest.mark.gpu
def test_pinned_buffers_round_trip_through_the_gpu(gpu):
    from qfsdk.runtime import cuda

    stream, buffer = cuda.Stream(), cuda.PinnedBuffer((4, 3), np.float32)
    try:
        buffer.host[:] = np.arange(12, dtype=np.float32).reshape(4, 3)
        buffer.to_device(stream, buffer.nbytes)
        buffer.host[:] = 0
        buffer.to_host(stream, buffer.nbytes)
        stream.synchronize()
        np.testing.assert_array_equal(buffer.host.ravel(), np.arange(12, dtype=np.float32))
    finally:
        buffer.close()
        stream.close()


@pytest.fixture(scope="module")
def mobilefacenet_onnx(tmp_path_factory):
    """Seeded random MobileFaceNet as float ONNX (no pretrained weights ship)."""
    torch = pytest.importorskip("torch")
    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("engine") / "mobilefacenet.onnx"
    return export_float(create("mobilefacenet", pretrained=False), path, CONTRACT, "mobilefacenet")


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime_and_refuses_oversized_batches(gpu, mobilefacenet_onnx, tmp_path):
    pytest.importorskip("tensorrt")
    from qfsdk.runtime.trt_build import build_engine

    engine = tmp_path / "m.engine"
    info = build_engine(mobilefacenet_onnx, engine, max_batch=8, timing_cache=tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert read_engine_info(engine) == info and info.compute_capability == gpu[1]
    crops = np.random.default_rng(0).integers(0, 256, (11, 112, 112, 3), dtype=np.uint8)
    with Embedder(engine) as trt_embedder, Embedder(mobilefacenet_onnx, "onnxruntime") as ort_embedder:
        assert trt_embedder.backend_name == "tensorrt" and trt_embedder.batch_size == 8
        got, want = trt_embedder.embed(crops), ort_embedder.embed(crops)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999, cosine
