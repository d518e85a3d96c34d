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
