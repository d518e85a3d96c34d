"""Shared fixtures: exported models and the C library are built once per session."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parents[1] / "runtime" / "native"
sys.path.insert(0, str(NATIVE / "python"))  # qfsdk_native: the C ABI's ctypes binding


@pytest.fixture(scope="session")
def dlib_fp32_onnx(tmp_path_factory) -> Path:
    """The pretrained dlib ResNet exported to float ONNX with its contract."""
    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create, get_spec

    path = tmp_path_factory.mktemp("onnx") / "dlib_resnet_fp32.onnx"
    return export_float(create("dlib_resnet"), path, get_spec("dlib_resnet").contract, "dlib_resnet")


@pytest.fixture(scope="session")
def gpu():
    """(name, compute capability) of GPU 0 through cuda-python, or skip the test."""
    from qfsdk.errors import MissingDependencyError
    from qfsdk.runtime import cuda

    try:
        return cuda.device_info()
    except (MissingDependencyError, cuda.CudaError) as exc:
        pytest.skip(f"no CUDA GPU through cuda-python: {exc}")


@pytest.fixture(scope="session")
def native_build(tmp_path_factory) -> Path:
    """libqfsdk.so and examples/embed built once per session (Release, -j2)."""
    if not shutil.which("cmake") or not (shutil.which("c++") or shutil.which("g++")) or not shutil.which("cc"):
        pytest.skip("needs cmake and a C/C++ compiler")
    openvino = pytest.importorskip("openvino")
    cmake_dir = Path(openvino.__file__).parent / "cmake"
    if not (cmake_dir / "OpenVINOConfig.cmake").is_file() or not (cmake_dir.parent / "include" / "openvino").is_dir():
        pytest.skip(f"the openvino package at {cmake_dir.parent} has no C++ headers or CMake config")
    build = tmp_path_factory.mktemp("native-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for command in (["cmake", "-S", str(NATIVE), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                     f"-DOpenVINO_DIR={cmake_dir}"], ["cmake", "--build", str(build), "-j", "2"]):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return build


@pytest.fixture(scope="session")
def lib(native_build):
    """The C ABI through its ctypes binding."""
    from qfsdk_native import Library

    return Library(native_build / "libqfsdk.so")


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs, no dashboard, no progress bars) for every Ray test module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
