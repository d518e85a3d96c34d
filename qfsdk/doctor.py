"""Environment report: which runtimes, accelerators and CPU int8 features this machine has.

Nothing here imports torch unless torch is installed, and no probe may crash the report.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

CPU_INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")


@dataclass
class Check:
    """One line of the report."""

    name: str
    found: bool
    version: str = ""
    detail: str = ""
    hint: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _package(dist: str, module: str, hint: str, detail: Callable[[object], str] | None = None) -> Check:
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = ""
    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # a broken optional install must not break the report
        reason = "not installed" if not version else f"installed but fails to import: {exc}"
        return Check(dist, False, version, reason, hint)
    info = ""
    if detail is not None:
        try:
            info = detail(imported)
        except Exception as exc:
            info = f"probe failed: {exc}"
    return Check(dist, True, version or getattr(imported, "__version__", ""), info, "")


def _ort_providers(ort) -> str:
    return "providers: " + ", ".join(ort.get_available_providers())


def _openvino_devices(ov) -> str:
    return "devices: " + ", ".join(ov.Core().available_devices)


def _cuda_devices(_module) -> str:
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    return f"CUDA devices: {count}" if int(err) == 0 else f"no usable CUDA device ({err})"


def _gpu() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return Check("gpu", True, detail="; ".join(out.splitlines()))
    if Path("/etc/nv_tegra_release").exists():
        return Check("gpu", True, detail="NVIDIA Jetson (nv_tegra_release present)")
    return Check("gpu", False, detail="no NVIDIA GPU found", hint="CPU backends (onnxruntime, openvino) will be used")


def _cpu() -> Check:
    from qfsdk.runtime.cpu import INT8_DOT_PRODUCT_FLAGS, cpu_flags

    flags = cpu_flags()
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.partition(":")[2].strip() for line in cpuinfo.read_text(errors="replace").splitlines()
                      if line.partition(":")[0].strip() == "model name"), model)
    present = [f for f in CPU_INT8_FLAGS if f in flags]
    fast_int8 = any(f in flags for f in INT8_DOT_PRODUCT_FLAGS)
    hint = "" if fast_int8 else ("no VNNI/AMX: int8 gains little over fp32 here, and OpenVINO's int8 kernels saturate "
                                 "full-range 8-bit weights (backend auto picks onnxruntime for those)")
    return Check("cpu", True, detail=f"{model}; int8 features: {', '.join(present) or 'none'}", hint=hint)


def _dlib_weights() -> Check:
    from qfsdk.errors import QfsdkError
    from qfsdk.packaged_weights import dlib_resnet_weights

    try:
        path = dlib_resnet_weights()
    except QfsdkError as exc:
        return Check("face-recognition-models", False, detail=str(exc), hint="pip install 'qfsdk[dlib]'")
    return Check("face-recognition-models", True, importlib.metadata.version("face-recognition-models"), f"dlib_resnet weights: {path}")


def collect() -> list[Check]:
    """Run every probe."""
    return [
        Check("python", True, platform.python_version(), platform.platform()),
        _package("torch", "torch", "pip install 'qfsdk[quantize]' (calibrate, qat, convert, synth, import)"),
        _package("onnx", "onnx", "pip install onnx"),
        _package("onnxruntime", "onnxruntime", "pip install onnxruntime (onnxruntime-gpu for CUDA/TensorRT EPs)", _ort_providers),
        _package("openvino", "openvino", "pip install 'qfsdk[openvino]'", _openvino_devices),
        _package("tensorrt", "tensorrt", "pip install 'qfsdk[tensorrt]' on an NVIDIA GPU host; JetPack ships it on Jetson"),
        _package("cuda-python", "cuda.bindings.runtime", "pip install 'qfsdk[tensorrt]'", _cuda_devices),
        _gpu(),
        _cpu(),
        _dlib_weights(),
    ]
