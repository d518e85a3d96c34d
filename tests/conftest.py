"""Shared fixtures: exported models are built once per session."""

from pathlib import Path

import pytest


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
