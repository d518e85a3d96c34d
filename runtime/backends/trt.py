"""TensorRT: a serialized engine (from `qfsdk build`) with its sidecar; cuda-python buffers."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Mapping, Sequence

import numpy as np

from .. import cuda
from ..engine import EngineMismatchError, check_compatible, read_engine_info
from ..metadata import ENGINE_SUFFIXES, ModelFileError
from .base import Backend, TensorInfo, import_optional


def import_tensorrt(feature: str) -> ModuleType:
    """The tensorrt module, or a one-line MissingDependencyError."""
    return import_optional("tensorrt", "tensorrt", "tensorrt", feature)


def load_plugins(trt: ModuleType, logger: object, libraries: Sequence[str | Path]) -> None:
    """Load custom-layer plugins (shared libraries, or ``.py`` files that register ``tensorrt.plugin``
    plugins when imported) and register TensorRT's own plugins."""
    for library in libraries:
        try:
            if Path(library).suffix == ".py":
                _import_python_plugin(Path(library))
            else:
                ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except (OSError, ImportError) as exc:
            raise ModelFileError(f"cannot load TensorRT plugin {library}: {exc}") from None
    trt.init_libnvinfer_plugins(logger, "")


def _import_python_plugin(path: Path) -> None:
    """Import a plugin file once per process (registering a plugin twice is an error)."""
    name = f"qfsdk_trt_plugin_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module


class TensorRTBackend(Backend):
    """One execution context with a pinned host and a device buffer per input and output, each sized
    for the largest shapes of the engine's first optimization profile.

    Calls are serialised by a lock (one context, one stream).
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, *, threads: int | None = None, plugins: Sequence[str | Path] = ()) -> None:
        path = Path(path)
        if path.suffix.lower() not in ENGINE_SUFFIXES:
            raise ModelFileError(
                f"{path}: the tensorrt backend runs serialized engines ({'/'.join(ENGINE_SUFFIXES)}); "
                f"build one with `qfsdk build {path} -o {path.with_suffix('.engine')}`"
            )
        trt = import_tensorrt("the tensorrt backend")
        self._engine = engine = self._deserialize(trt, path, plugins)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        shape_io = [n for n in names if engine.is_shape_inference_io(n)]
        if shape_io:
            raise ModelFileError(f"{path}: shape tensors {shape_io} are not supported; export the model with static shape inputs")
        tensors = [_tensor_info(trt, engine, n) for n in names]
        self.inputs = tuple(t for t in tensors if engine.get_tensor_mode(t.name) == trt.TensorIOMode.INPUT)
        self.outputs = tuple(t for t in tensors if t not in self.inputs)
        self._limits = {t.name: _profile_limits(engine, t) for t in self.inputs}
        self.max_batch = self._limits[self.inputs[0].name][1][0]
        self._context = engine.create_execution_context()
        self._stream = cuda.Stream()
        self._buffers = self._allocate(path)
        self._lock = threading.Lock()

    def _deserialize(self, trt: ModuleType, path: Path, plugins: Sequence[str | Path]) -> object:
        """The engine, after checking its sidecar against this TensorRT and GPU (runtime and logger kept alive)."""
        gpu, capability = cuda.device_info()
        check_compatible(read_engine_info(path), path, trt.__version__, gpu, capability)
        self._logger = trt.Logger(trt.Logger.WARNING)
        load_plugins(trt, self._logger, plugins)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineMismatchError(f"{path}: TensorRT could not deserialize the engine (see its log); rebuild it with `qfsdk build`")
        return engine

    def _allocate(self, path: Path) -> dict[str, cuda.PinnedBuffer]:
        """One flat buffer per tensor, for the profile's largest inputs and the outputs they give, bound to the context."""
        for name, (_, high) in self._limits.items():
            self._context.set_input_shape(name, high)
        largest = {name: high for name, (_, high) in self._limits.items()}
        largest.update((t.name, tuple(self._context.get_tensor_shape(t.name))) for t in self.outputs)
        unbounded = [name for name, shape in largest.items() if min(shape, default=0) < 0]
        if unbounded:
            raise ModelFileError(f"{path}: outputs {unbounded} have data-dependent shapes, which this backend does not support")
        buffers = {}
        for tensor in (*self.inputs, *self.outputs):
            buffers[tensor.name] = cuda.PinnedBuffer((int(np.prod(largest[tensor.name])),), tensor.dtype)
            self._context.set_tensor_address(tensor.name, int(buffers[tensor.name].device))
        return buffers

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """The base checks, then each shape within the profile (the buffers hold its largest shapes)."""
        super().check_feeds(feeds)
        for name, value in feeds.items():
            low, high = self._limits[name]
            if any(not lo <= v <= hi for v, lo, hi in zip(value.shape, low, high)):
                raise ValueError(f"input {name!r}: shape {value.shape} is outside the engine's profile, {low} to {high}")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            for name, value in feeds.items():
                buffer = self._buffers[name]
                buffer.host[: value.size] = value.ravel()  # dense, in the shape set below
                buffer.to_device(self._stream, value.nbytes)
                self._context.set_input_shape(name, value.shape)
            if not self._context.execute_async_v3(int(self._stream.handle)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
            shapes = {t.name: tuple(self._context.get_tensor_shape(t.name)) for t in self.outputs}
            for name, shape in shapes.items():
                self._buffers[name].to_host(self._stream, int(np.prod(shape)) * self._buffers[name].host.itemsize)
            self._stream.synchronize()
            return {name: self._buffers[name].host[: int(np.prod(shape))].reshape(shape).copy() for name, shape in shapes.items()}

    def close(self) -> None:
        if getattr(self, "_lock", None) is None:
            return
        with self._lock:
            self._context = None
            for resource in (*self._buffers.values(), self._stream):
                resource.close()
            self._engine = None
        self._lock = None


def _tensor_info(trt: ModuleType, engine: object, name: str) -> TensorInfo:
    """An engine input or output."""
    dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
    return TensorInfo(name, _shape(engine.get_tensor_shape(name)), dtype.name)


def _shape(dims: object) -> tuple[int | None, ...]:
    """A TensorRT shape with None for its dynamic (-1) dimensions."""
    return tuple(None if d < 0 else d for d in dims)


def _profile_limits(engine: object, tensor: TensorInfo) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(smallest, largest) shape of an input in optimization profile 0 (its own shape when static)."""
    if None not in tensor.shape:
        return tensor.shape, tensor.shape
    low, _, high = engine.get_tensor_profile_shape(tensor.name, 0)
    return tuple(low), tuple(high)
