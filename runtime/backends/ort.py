"""ONNX Runtime: CPU everywhere; CUDA and TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .base import Backend, TensorInfo, dims

log = logging.getLogger(__name__)

# Preferred order; only those this onnxruntime build offers are used.
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_DTYPES = {"float": "float32", "double": "float64"}  # the other element type names are numpy's


def gpu_providers() -> list[str]:
    """The GPU execution providers this onnxruntime build offers."""
    return [p for p in PROVIDERS[:-1] if p in ort.get_available_providers()]


class OrtBackend(Backend):
    """An ``InferenceSession`` (its ``run`` is thread-safe)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        chosen = list(providers) if providers else [p for p in PROVIDERS if p in available]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidGraph, ...) derive from Exception
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise RuntimeError(str(exc)) from None  # open_backend turns it into one line naming the file
        log.info("onnxruntime providers: %s", self._session.get_providers())
        self.inputs = tuple(_tensor_info(arg) for arg in self._session.get_inputs())
        self.outputs = tuple(_tensor_info(arg) for arg in self._session.get_outputs())
        self.max_batch = self.input_shape[0]
        self._output_names = [t.name for t in self.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._output_names, self._session.run(self._output_names, feeds)))

    def close(self) -> None:
        self._session = None


def _tensor_info(arg: ort.NodeArg) -> TensorInfo:
    """A session input or output; ONNX Runtime names element types ``tensor(float)``, ``tensor(int64)``..."""
    element = arg.type.removeprefix("tensor(").removesuffix(")")
    return TensorInfo(arg.name, dims(arg.shape), ORT_DTYPES.get(element, element))
