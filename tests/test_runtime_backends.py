"""Backends: named inputs and outputs, checked feeds, and the Embedder's choice of the embedding output."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from qfsdk.runtime import Embedder
from qfsdk.runtime.backends import open_backend
from qfsdk.runtime.backends.base import TensorInfo
from qfsdk.runtime.contract import CONTRACTS, FaceContract, ModelContract
from qfsdk.runtime.metadata import ModelFileError

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
CPU_BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))]
SIZE = (4, 6)  # height, width
CONTRACT = FaceContract(input_size=SIZE, embedding_size=3)
IMAGE = TensorInfo("image", (None, 3, *SIZE), "float32")
SCALE = TensorInfo("scale", (1,), "float32")
EMBEDDING = TensorInfo("embedding", (None, 3), "float32")
BEST = TensorInfo("best", (None,), "int64")


def tiny_onnx(path, *, scale_input: bool = True, outputs: tuple[str, ...] = ("embedding", "best"),
              contract: ModelContract | None = CONTRACT):
    """image (N, 3, H, W) [and scale (1,)] -> embedding = channel means [* scale] (N, 3), best = its argmax (N,)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["embedding"]) if scale_input
        else helper.make_node("Identity", ["flat"], ["embedding"]),
        helper.make_node("ArgMax", ["embedding"], ["best"], axis=1, keepdims=0),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, *SIZE])]
    if scale_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
    declared = {"embedding": helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3]),
                "best": helper.make_tensor_value_info("best", TensorProto.INT64, ["batch"])}  # fmt: skip
    graph = helper.make_graph(nodes, "tiny", inputs, [declared[name] for name in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if contract is not None:
        helper.set_model_props(model, {"qfsdk.contract": contract.to_json()})
    onnx.save(model, str(path))
    return path


def images(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, *SIZE)).astype(np.float32)


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_infer_returns_every_output_by_name(tmp_path, backend_name):
    backend = open_backend(tiny_onnx(tmp_path / "two.onnx"), backend_name)
    try:
        assert backend.inputs == (IMAGE, SCALE) and backend.outputs == (EMBEDDING, BEST)
        assert backend.input_shape == (None, 3, *SIZE) and backend.max_batch is None
        batch = images()
        out = backend.infer({"image": batch, "scale": np.array([2.0], np.float32)})
    finally:
        backend.close()
    assert sorted(out) == ["best", "embedding"]
    expected = batch.mean(axis=(2, 3)) * 2
    np.testing.assert_allclose(out["embedding"], expected, rtol=1e-5)
    np.testing.assert_array_equal(out["best"], expected.argmax(1))
    assert out["best"].dtype == np.int64


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({"image": images()}, r"inputs \['image', 'scale'\]: missing \['scale'\]"),
        ({"image": images(), "scale": np.ones(1, np.float32), "mask": images()}, r"unexpected \['mask'\]"),
        ({"image": images().astype(np.float64), "scale": np.ones(1, np.float32)}, "'image': expected dtype float32, got float64"),
        ({"image": images()[:, :, :3], "scale": np.ones(1, np.float32)}, r"'image': expected shape \(None, 3, 4, 6\)"),
        ({"image": images(), "scale": np.ones((1, 1), np.float32)}, r"'scale': expected shape \(1,\)"),
        ({"image": images().tolist(), "scale": np.ones(1, np.float32)}, "expected a numpy array, got list"),
    ],
)  # fmt: skip
def test_feeds_are_checked_before_running(tmp_path, feeds, match):
    backend = open_backend(tiny_onnx(tmp_path / "two.onnx"), "onnxruntime")
    try:
        with pytest.raises(ValueError, match=match):
            backend.infer(feeds)
    finally:
        backend.close()


def test_run_feeds_the_one_input_and_returns_the_first_output_as_float32(tmp_path):
    single = open_backend(tiny_onnx(tmp_path / "one.onnx", scale_input=False, outputs=("best", "embedding")), "onnxruntime")
    double = open_backend(tiny_onnx(tmp_path / "two.onnx"), "onnxruntime")
    try:
        batch = images()
        out = single.run(batch.astype(np.float64))  # cast to the input's dtype, as before
        np.testing.assert_array_equal(out, batch.mean(axis=(2, 3)).argmax(1).astype(np.float32))
        assert out.dtype == np.float32
        with pytest.raises(ValueError, match=r"has \['image', 'scale'\]: use infer\(\)"):
            double.run(batch)
    finally:
        single.close()
        double.close()


@pytest.mark.parametrize("backend_name", CPU_BACKENDS)
def test_embedder_picks_the_output_its_contract_names(tmp_path, backend_name):
    named = FaceContract(input_size=SIZE, embedding_size=3, embedding_output="embedding")
    model = tiny_onnx(tmp_path / "m.onnx", scale_input=False, outputs=("best", "embedding"), contract=named)
    crops = np.random.default_rng(1).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    with Embedder(model, backend_name) as embedder:
        np.testing.assert_allclose(embedder.embed(crops), CONTRACT.preprocess(crops).mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_embedder_takes_the_first_output_unless_named_and_refuses_what_it_cannot_feed(tmp_path):
    crops = np.zeros((1, *SIZE, 3), np.uint8)
    with Embedder(tiny_onnx(tmp_path / "first.onnx", scale_input=False), "onnxruntime") as embedder:
        assert embedder.embed(crops).shape == (1, 3)
    missing = FaceContract(input_size=SIZE, embedding_size=3, embedding_output="features")
    with pytest.raises(ModelFileError, match=r"names the embedding output 'features'.*\['embedding', 'best'\]"):
        Embedder(tiny_onnx(tmp_path / "missing.onnx", scale_input=False, contract=missing), "onnxruntime")
    with pytest.raises(ModelFileError, match=r"one image input, this one has \['image', 'scale'\]"):
        Embedder(tiny_onnx(tmp_path / "two.onnx"), "onnxruntime")


def test_embedder_refuses_a_model_of_another_task(tmp_path, monkeypatch):
    @dataclass(frozen=True)
    class BoxContract(ModelContract):
        task: ClassVar[str] = "detector"
        input_size: tuple[int, int]

    monkeypatch.setitem(CONTRACTS, "detector", BoxContract)
    with pytest.raises(ModelFileError, match="a 'detector' model, not an embedder"):
        Embedder(tiny_onnx(tmp_path / "boxes.onnx", scale_input=False, contract=BoxContract(SIZE)), "onnxruntime")


class FakeBuffer:
    """cuda.PinnedBuffer on the CPU: 'device' memory is an array in DEVICE, keyed by its address."""

    DEVICE: dict[int, np.ndarray] = {}

    def __init__(self, shape, dtype) -> None:
        self.host = np.zeros(shape, dtype)
        self.nbytes = self.host.nbytes
        self.device = len(self.DEVICE) + 1
        self.DEVICE[self.device] = np.zeros(shape, dtype)

    def to_device(self, stream, nbytes: int) -> None:
        self.DEVICE[self.device].view(np.uint8)[:nbytes] = self.host.view(np.uint8)[:nbytes]

    def to_host(self, stream, nbytes: int) -> None:
        self.host.view(np.uint8)[:nbytes] = self.DEVICE[self.device].view(np.uint8)[:nbytes]

    def close(self) -> None:
        pass


class FakeContext:
    """embedding = channel means of image * scale, best = argmax: read and written densely at the bound addresses."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name) -> tuple[int, ...]:
        n = self.shapes["image"][0]
        return self.shapes.get(name) or {"embedding": (n, 3), "best": (n,)}[name]

    def set_tensor_address(self, name, address) -> None:
        self.addresses[name] = address

    def tensor(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        return FakeBuffer.DEVICE[self.addresses[name]][: int(np.prod(shape))].reshape(shape)

    def execute_async_v3(self, stream) -> bool:
        embedding = self.tensor("image").mean(axis=(2, 3)) * self.tensor("scale")
        self.tensor("embedding")[:] = embedding
        self.tensor("best")[:] = embedding.argmax(1)
        return True


def fake_engine() -> SimpleNamespace:
    tensors = {"image": ((-1, 3, *SIZE), np.float32, "in"), "scale": ((1,), np.float32, "in"),
               "embedding": ((-1, 3), np.float32, "out"), "best": ((-1,), np.int64, "out")}  # fmt: skip
    names = list(tensors)
    return SimpleNamespace(
        num_io_tensors=len(names),
        get_tensor_name=names.__getitem__,
        is_shape_inference_io=lambda name: False,
        get_tensor_mode=lambda name: tensors[name][2],
        get_tensor_shape=lambda name: tensors[name][0],
        get_tensor_dtype=lambda name: tensors[name][1],
        get_tensor_profile_shape=lambda name, profile: [(1, 3, *SIZE), (4, 3, *SIZE), (4, 3, *SIZE)],
        create_execution_context=FakeContext,
    )


def test_tensorrt_backend_binds_every_named_tensor(tmp_path, monkeypatch):
    """The buffer and shape bookkeeping of the TensorRT backend, against a stand-in for TensorRT and CUDA."""
    from qfsdk.runtime.backends import trt as trt_backend

    fake_trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), nptype=lambda dtype: dtype)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda feature: fake_trt)
    monkeypatch.setattr(trt_backend.TensorRTBackend, "_deserialize", lambda self, trt, path, plugins: fake_engine())
    monkeypatch.setattr(trt_backend.cuda, "Stream", lambda: SimpleNamespace(handle=0, synchronize=lambda: None, close=lambda: None))
    monkeypatch.setattr(trt_backend.cuda, "PinnedBuffer", FakeBuffer)
    backend = trt_backend.TensorRTBackend(tmp_path / "m.engine")
    assert backend.inputs == (IMAGE, SCALE) and backend.outputs == (EMBEDDING, BEST)
    assert backend.max_batch == 4 and backend.input_shape == (None, 3, *SIZE)
    for n in (3, 1, 4):  # smaller after larger: only the first n rows count
        batch = images(n)
        out = backend.infer({"image": batch, "scale": np.array([3.0], np.float32)})
        np.testing.assert_allclose(out["embedding"], batch.mean(axis=(2, 3)) * 3, rtol=1e-6)
        np.testing.assert_array_equal(out["best"], out["embedding"].argmax(1))
        assert out["best"].dtype == np.int64 and out["embedding"].shape == (n, 3)
    with pytest.raises(ValueError, match=r"shape \(5, 3, 4, 6\) is outside the engine's profile"):
        backend.infer({"image": images(5), "scale": np.ones(1, np.float32)})
    backend.close()
    backend.close()
