"""The CLI frame: models, doctor, version and the error contract."""

import json

from click.testing import CliRunner

from qfsdk.cli import main


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_models_json_lists_the_zoo():
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["iresnet50"]["embedding_size"] == 512 and rows["iresnet50"]["input_size"] == [112, 112]
    assert rows["mobilefacenet"]["parameters"] == 1003136
    assert rows["dlib_resnet"]["pretrained_installed"] is True
    assert rows["dlib_resnet"]["contract"]["distance"] == "euclidean"


def test_models_table():
    result = invoke("models")
    assert result.exit_code == 0
    assert "dlib_resnet" in result.output and "iresnet100" in result.output


def test_doctor_json_works_without_gpu_or_tensorrt():
    result = invoke("doctor", "--json")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in json.loads(result.output)["checks"]}
    assert checks["onnxruntime"]["found"] and "CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert {"torch", "onnx", "openvino", "tensorrt", "cuda-python", "gpu", "cpu"} <= set(checks)
    for check in checks.values():
        assert check["found"] or check["hint"], check


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and "qfsdk, version" in result.output


def test_user_error_is_one_line_without_traceback(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["demo", "--images", str(empty), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "Traceback" not in result.output and "no images" in result.output
    assert not (tmp_path / "out" / "demo.json").exists()
