"""OpenVINO: reads the same (Q/DQ) ONNX file; int8 kernels on Intel/AMD x86 CPUs, Intel iGPUs."""

from __future__ import annotations

import logging
import queue
from pathlib import Path
from typing import Any

import numpy as np

from ..cpu import saturating_int8
from .base import Backend, TensorInfo, dims, import_optional

HINTS = ("LATENCY", "THROUGHPUT")
log = logging.getLogger(__name__)
SATURATION_WARNING = (
    "{path}: int8 model on a CPU without VNNI (AVX2 only): OpenVINO's int8 kernels saturate there and this "
    "model's embeddings may be wrong (SFace W8A8 measured min cosine 0.68 vs 0.93 on ONNX Runtime); run it with "
    "--backend onnxruntime, or calibrate with 7-bit weights (--config with \"weight_bits\": 7), which stay exact")


class OpenVinoBackend(Backend):
    """A compiled model with a pool of infer requests (one per concurrent caller)."""

    name = "openvino"

    def __init__(self, path: str | Path, *, threads: int | None = None, hint: str = "LATENCY", device: str = "CPU",
                 precision: str = "f32") -> None:
        """``hint``: LATENCY or THROUGHPUT; ``precision``: float precision of the layers that are not int8
        (``f32``, ``bf16``, ``f16``). f32 by default, as in the C ABI: OpenVINO's own default, bf16 on
        CPUs with AMX or AVX512-BF16, moves a quantized model away from its fake-quant reference
        (dlib_resnet W8A8: min cosine 0.9988 instead of 0.9995) for no speed, since the int8 layers
        dominate; ``bf16`` roughly doubles a float model's speed there (cosine about 0.9999 to f32),
        and ``f16`` suits Intel iGPUs."""
        ov = import_optional("openvino", "openvino", "openvino", "the openvino backend")
        if hint.upper() not in HINTS:
            raise ValueError(f"OpenVINO hint must be one of {HINTS}, got {hint!r}")
        config: dict[str, object] = {"PERFORMANCE_HINT": hint.upper()}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        config["INFERENCE_PRECISION_HINT"] = precision
        core = ov.Core()
        model = core.read_model(str(path))
        if saturating_int8() and _full_range_int8(model, ov):
            log.warning(SATURATION_WARNING.format(path=path))
        self._compiled = core.compile_model(model, device, config)
        # Names as the file gives them: a compiled port may carry several (e.g. a numeric one first).
        self.inputs = tuple(_tensor_info(port, f.get_any_name()) for port, f in zip(self._compiled.inputs, model.inputs))
        self.outputs = tuple(_tensor_info(port, f.get_any_name()) for port, f in zip(self._compiled.outputs, model.outputs))
        self.max_batch = self.input_shape[0]
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            request.infer({i: feeds[t.name] for i, t in enumerate(self.inputs)})
            return {t.name: np.array(request.get_output_tensor(i).data) for i, t in enumerate(self.outputs)}
        finally:
            self._idle.put(request)

    def close(self) -> None:
        self._idle = queue.SimpleQueue()
        self._compiled = None


def saturates_here(path: str | Path) -> bool:
    """Whether OpenVINO would saturate ``path``'s int8 products on this CPU (full-range int8 weights, no VNNI)."""
    if not saturating_int8():
        return False
    import openvino as ov

    try:
        return _full_range_int8(ov.Core().read_model(str(path)), ov)
    except RuntimeError:  # unreadable: the backend that opens it says why
        return False


def _full_range_int8(model: Any, ov: Any) -> bool:
    """Whether ``model`` holds int8 constants (weight codes) beyond +-63: two such products of uint8 inputs
    overflow the int16 pair sums of AVX2's int8 kernels."""
    return any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
               and int(np.abs(op.get_data().astype(np.int16)).max(initial=0)) > 63 for op in model.get_ops())


def _tensor_info(port: Any, name: str) -> TensorInfo:
    """A compiled model's input or output port, called ``name``."""
    shape = dims([d.get_length() if d.is_static else None for d in port.get_partial_shape()])
    return TensorInfo(name, shape, np.dtype(port.get_element_type().to_dtype()).name)
