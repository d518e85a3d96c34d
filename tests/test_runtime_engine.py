"""TensorRT engines: sidecar, compatibility messages, `qfsdk build`; GPU tests skip without a GPU/TensorRT."""

import importlib.util
import json
import logging

import pytest
from click.testing import CliRunner

from qfsdk.cli import main
from qfsdk.errors import MissingDependencyError
from qfsdk.models import get_spec
from qfsdk.runtime import Embedder
from qfsdk.runtime.engine import EngineInfo, EngineMismatchError, check_compatible, read_engine_info, write_engine_info
from qfsdk.runtime.metadata import ModelFileError, read_contract

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CONTRACT = get_spec("mobilefacenet").contract
INFO = EngineInfo("10.3.0", "NVIDIA Jetson Orin", (8, 7), "m.onnx", "ab" * 32, 16, CONTRACT, "0.1.0")


def test_sidecar_round_trips_and_carries_the_contract(tmp_path):
    engine = tmp_path / "m.engine"
    path = write_engine_info(engine, INFO)
    assert path.name == "m.engine.json"
    assert json.loads(path.read_text())["contract"]["template"][0] == [38.2946, 51.6963]
    assert read_engine_info(engine) == INFO
    assert read_contract(engine) == CONTRACT


def test_engine_without_sidecar_says_how_to_rebuild(tmp_path):
    with pytest.raises(ModelFileError, match="qfsdk build"):
        read_contract(tmp_path / "m.plan")


@pytest.mark.parametrize("version, capability", [("10.8.0", (8, 7)), ("10.3.0", (9, 0))])
def test_other_tensorrt_or_gpu_fails_with_what_to_do(version, capability):
    with pytest.raises(EngineMismatchError) as caught:
        check_compatible(INFO, "m.engine", version, "NVIDIA H100", capability)
    message = str(caught.value)
    assert "TensorRT 10.3.0 on NVIDIA Jetson Orin (compute capability 8.7)" in message
    assert f"TensorRT {version} on NVIDIA H100" in message and "qfsdk build m.onnx -o m.engine" in message


def test_same_tensorrt_and_capability_is_accepted(caplog):
    with caplog.at_level(logging.WARNING):
        check_compatible(INFO, "m.engine", "10.3.0", "NVIDIA Jetson AGX Orin", (8, 7))  # raises nothing
    assert "built on NVIDIA Jetson Orin and runs on NVIDIA Jetson AGX Orin" in caplog.text  # another GPU name: a warning


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_build_without_tensorrt_exits_1_with_the_install_line(dlib_fp32_onnx, tmp_path):
    result = CliRunner().invoke(main, ["build", str(dlib_fp32_onnx), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: `qfsdk build` needs the 'tensorrt' package: install it with `pip install 'qfsdk[tensorrt]'`"]
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_embedder_on_an_engine_without_tensorrt_names_the_extra(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    write_engine_info(engine, INFO)
    with pytest.raises(MissingDependencyError, match=r"pip install 'qfsdk\[tensorrt\]'"):
        Embedder(engine)
