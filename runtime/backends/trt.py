"""TensorRT: a serialized engine (from `qfsdk build`) with its sidecar; cuda-python buffers."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np

from .. import cuda
from ..engine import EngineMismatchError, check_compatible, read_engine_info
from ..metadata import ENGINE_SUFFIXES, ModelFileError
from .base import Backend, import_optional


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
    """One execution context with pinned host and device buffers sized for the profile's max batch.

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
        gpu, capability = cuda.device_info()
        check_compatible(read_engine_info(path), path, trt.__version__, gpu, capability)
        self._logger = trt.Logger(trt.Logger.WARNING)
        load_plugins(trt, self._logger, plugins)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise EngineMismatchError(f"{path}: TensorRT could not deserialize the engine (see its log); rebuild it with `qfsdk build`")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{path}: expected one input and one output tensor, got {inputs} and {outputs}")
        self._input, self._output = inputs[0], outputs[0]
        max_shape = tuple(self._engine.get_tensor_profile_shape(self._input, 0)[2])
        self.input_shape = (None, *max_shape[1:])
        self.max_batch = max_shape[0]
        width = self._engine.get_tensor_shape(self._output)[-1]
        self._context = self._engine.create_execution_context()
        self._stream = cuda.Stream()
        self._in = cuda.PinnedBuffer(max_shape, trt.nptype(self._engine.get_tensor_dtype(self._input)))
        self._out = cuda.PinnedBuffer((self.max_batch, width), trt.nptype(self._engine.get_tensor_dtype(self._output)))
        self._context.set_tensor_address(self._input, int(self._in.device))
        self._context.set_tensor_address(self._output, int(self._out.device))
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n > self.max_batch:
            raise ValueError(f"batch of {n} exceeds the engine's max batch {self.max_batch}")
        with self._lock:
            self._in.host[:n] = batch
            self._in.to_device(self._stream, n * self._in.nbytes // self.max_batch)
            self._context.set_input_shape(self._input, batch.shape)
            if not self._context.execute_async_v3(int(self._stream.handle)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")
            self._out.to_host(self._stream, n * self._out.nbytes // self.max_batch)
            self._stream.synchronize()
            return self._out.host[:n].astype(np.float32)

    def close(self) -> None:
        if getattr(self, "_lock", None) is None:
            return
        with self._lock:
            self._context = None
            for resource in (self._in, self._out, self._stream):
                resource.close()
            self._engine = None
        self._lock = None
