"""Backend registry: name -> implementation, imported only when chosen."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from pathlib import Path
from typing import Any

from ..errors import ConfigError, QfsdkError
from ..metadata import ENGINE_SUFFIXES, ModelFileError
from .base import Backend

log = logging.getLogger(__name__)

# name -> "module:class"; the single place a backend is added.
BACKENDS: dict[str, str] = {
    "onnxruntime": "qfsdk.runtime.backends.ort:OrtBackend",
    "openvino": "qfsdk.runtime.backends.ov:OpenVinoBackend",
    "tensorrt": "qfsdk.runtime.backends.trt:TensorRTBackend",
}
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def choose_backend(path: str | Path) -> str:
    """``auto``: tensorrt for an engine; onnxruntime on a GPU it can use; openvino on x86, except for a model
    with full-range int8 weights on a CPU without VNNI, where OpenVINO's int8 kernels saturate; else onnxruntime."""
    if Path(path).suffix.lower() in ENGINE_SUFFIXES:
        return "tensorrt"
    from .ort import gpu_providers

    if gpu_providers():
        return "onnxruntime"
    if platform.machine().lower() in X86 and importlib.util.find_spec("openvino") is not None:
        from .ov import saturates_here

        if not saturates_here(path):
            return "openvino"
        log.warning("%s: backend auto -> onnxruntime: this CPU has no VNNI, where OpenVINO's int8 kernels saturate "
                    "this model's full-range 8-bit weights (pass --backend openvino to run it there anyway)", path)
    return "onnxruntime"


def open_backend(path: str | Path, name: str = "auto", *, threads: int | None = None, **options: Any) -> Backend:
    """Open model ``path`` on backend ``name`` (``auto`` or a key of :data:`BACKENDS`)."""
    if name == "auto":
        name = choose_backend(path)
        log.info("backend auto -> %s for %s", name, path)
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown backend {name!r}; choose auto or one of {sorted(BACKENDS)}")
    module_name, attr = target.split(":")
    backend_class = getattr(importlib.import_module(module_name), attr)
    try:
        return backend_class(path, threads=threads, **options)
    except QfsdkError:
        raise
    except RuntimeError as exc:  # the backend could not read the file (ONNX Runtime's and OpenVINO's errors are these)
        reason = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
        raise ModelFileError(f"{path}: {name} cannot load this model ({reason}); re-export it, or try another --backend") from None
