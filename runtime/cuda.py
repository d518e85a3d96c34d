"""The CUDA runtime through cuda-python: device properties, pinned host + device buffers, streams."""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from .errors import MissingDependencyError, QfsdkError


class CudaError(QfsdkError):
    """A CUDA runtime call failed (no GPU, driver too old, out of memory...)."""


def runtime() -> ModuleType:
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise MissingDependencyError("cuda-python", "TensorRT buffers", "pip install 'qfsdk[tensorrt]'") from None
    return cudart


def check(result: tuple) -> Any:
    """Unpack a cuda-python ``(error, *values)`` tuple, raising CudaError on failure."""
    cudart = runtime()
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        _, message = cudart.cudaGetErrorString(error)
        raise CudaError(f"CUDA: {error.name}: {message.decode() if isinstance(message, bytes) else message}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def device_info(device: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of a CUDA device."""
    props = check(runtime().cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.split("\x00", 1)[0], (props.major, props.minor)


class Stream:
    """A CUDA stream."""

    def __init__(self) -> None:
        self.handle = check(runtime().cudaStreamCreate())

    def synchronize(self) -> None:
        check(runtime().cudaStreamSynchronize(self.handle))

    def close(self) -> None:
        if self.handle is not None:
            check(runtime().cudaStreamDestroy(self.handle))
            self.handle = None


class PinnedBuffer:
    """A page-locked host array and a device allocation of the same shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        cudart = runtime()
        dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self.device = check(cudart.cudaMalloc(self.nbytes))
        self._host_ptr = check(cudart.cudaMallocHost(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self._host_ptr))
        self.host = np.frombuffer(raw, dtype).reshape(shape)

    def to_device(self, stream: Stream, nbytes: int) -> None:
        cudart = runtime()
        check(cudart.cudaMemcpyAsync(self.device, int(self._host_ptr), nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle))

    def to_host(self, stream: Stream, nbytes: int) -> None:
        cudart = runtime()
        check(cudart.cudaMemcpyAsync(int(self._host_ptr), self.device, nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle))

    def close(self) -> None:
        if self.device is not None:
            cudart = runtime()
            self.host = None
            check(cudart.cudaFreeHost(self._host_ptr))
            check(cudart.cudaFree(self.device))
            self.device = None
