"""ONNX Runtime: CPU everywhere; CUDA and TensorRT execution providers with onnxruntime-gpu."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from .base import Backend, dims

log = logging.getLogger(__name__)

# Preferred order; only those this onnxruntime build offers are used.
PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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
        self._session = ort.InferenceSession(str(path), options, providers=chosen)
        log.info("onnxruntime providers: %s", self._session.get_providers())
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32  # `qfsdk convert --fp16` files
        self._output = self._session.get_outputs()[0].name
        self.input_shape = dims(inp.shape)
        self.max_batch = self.input_shape[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        feed = batch.astype(self._dtype, copy=False)
        return np.asarray(self._session.run([self._output], {self._input: feed})[0], np.float32)

    def close(self) -> None:
        self._session = None
