"""`qfsdk demo` runs the pipeline on the pretrained dlib ResNet and reports parity and speed."""

import json

from click.testing import CliRunner

from qfsdk.cli import main


def test_demo_exports_and_matches_onnxruntime(tmp_path):
    args = ["demo", "-o", str(tmp_path), "--repeats", "1", "--num-images", "2", "--iterations", "2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["onnxruntime_vs_pytorch"]["min_cosine"] > 0.99999
    assert (tmp_path / "dlib_resnet_fp32.onnx").is_file()
    assert "ONNX Runtime CPU vs PyTorch" in result.output
    assert summary["w8a8_synthetic_ptq"]["min_cosine_vs_float"] > 0.9
    assert (tmp_path / "dlib_resnet_w8a8.safetensors").is_file()
    deployed = summary["w8a8_deployed"]
    assert deployed["check_violations"] == 0 and (tmp_path / "dlib_resnet_w8a8.onnx").is_file()
    assert set(deployed["backends"]) == {"onnxruntime", "openvino"}
    assert all(b["min_cosine_vs_float"] > 0.9 for b in deployed["backends"].values())
    assert not list(tmp_path.glob("*.partial"))
