"""`qfsdk bench`: one run, several backends, JSON rows with latency, throughput and peak memory."""

import json

from click.testing import CliRunner

from qfsdk.cli import main


def test_bench_json_has_one_row_per_backend_and_batch_size(dlib_fp32_onnx):
    args = ["bench", str(dlib_fp32_onnx), "--backend", "onnxruntime", "--backend", "tensorrt",
            "--batch-size", "1", "--batch-size", "2", "--repeats", "2", "--warmup", "0", "--threads", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # a CI gate: any failed pair fails the command, naming it
    assert f"1 of 2 model/backend runs failed: {dlib_fp32_onnx} on tensorrt" in result.stderr
    rows = json.loads(result.stdout)["results"]
    timed = [row for row in rows if "error" not in row]
    assert [(row["backend"], row["batch_size"]) for row in timed] == [("onnxruntime", 1), ("onnxruntime", 2)]
    for row in timed:
        assert row["p90_ms"] >= row["p50_ms"] > 0 and row["images_per_s"] > 0 and row["peak_rss_mib"] > 50
    (failed,) = [row for row in rows if "error" in row]
    assert failed["backend"] == "tensorrt" and "serialized engines" in failed["error"]


def test_bench_table_lists_each_pair(dlib_fp32_onnx):
    args = ["bench", str(dlib_fp32_onnx), "--backend", "onnxruntime", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split()[:3] == ["model", "backend", "batch"] and "onnxruntime" in row
