"""A Q/DQ placement run on a backend it was not made for is said once, in one short line with the ways out."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qfsdk.cli import main
from qfsdk.runtime import Embedder
from real_models import arcface_crops

NOTE = " placement: "


@pytest.fixture(scope="module")
def placements(tmp_path_factory) -> dict[str, Path]:
    """MobileFaceNet W8A8 calibrated with each placement and converted with the CLI (its default target), and fp32."""
    import torch

    import qfsdk
    from qfsdk.models import create

    root = tmp_path_factory.mktemp("placement")
    torch.manual_seed(0)
    model = create("mobilefacenet")
    crops = torch.from_numpy(model.contract.preprocess(np.stack([crop for _, crop in arcface_crops()[:8]])))
    files = {}
    for scheme in ("tensorrt", "onnxruntime"):
        quantized = qfsdk.quantize(copy.deepcopy(model), {"preset": "w8a8", "scheme": scheme})
        checkpoint = qfsdk.save_quantized(qfsdk.calibrate(quantized, crops, method="minmax"), root / f"{scheme}.safetensors")
        files[scheme] = root / f"mobilefacenet_{scheme}.onnx"
        result = CliRunner().invoke(main, ["convert", str(checkpoint), "-o", str(files[scheme])])
        assert result.exit_code == 0, result.output
    files["fp32"] = root / "mobilefacenet_fp32.onnx"
    assert CliRunner().invoke(main, ["convert", "mobilefacenet", "--fp32", "-o", str(files["fp32"])]).exit_code == 0
    return files


@pytest.fixture(scope="module")
def crop_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("crops")
    for name, crop in arcface_crops()[:3]:
        Image.fromarray(crop).save(folder / f"{name}.png")
    return sorted(folder.iterdir())


def qfsdk_cli(*args: object) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "qfsdk", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOTE in line]


def test_embed_on_onnxruntime_says_once_that_the_tensorrt_placement_is_slow_there(placements, crop_files, tmp_path):
    done = qfsdk_cli("embed", placements["tensorrt"], *crop_files, "--backend", "onnxruntime", "--batch-size", "2",
                     "-o", tmp_path / "e.npz")  # fmt: skip
    [line] = notes(done.stderr)
    prefix = f"WARNING qfsdk.runtime.embedder: {placements['tensorrt']}: "
    assert line.startswith(prefix + "W8A8, tensorrt placement: ONNX Runtime runs its convs in float")
    assert line.endswith("run it on OpenVINO (pip install 'qfsdk[openvino]') or remake it with `calibrate --scheme onnxruntime`")
    assert len(line) - len(prefix) < 200, line  # one short line
    assert "embedded 3 of 3 images" in done.stdout
    for model, backend in (("tensorrt", "openvino"), ("onnxruntime", "onnxruntime"), ("fp32", "onnxruntime")):
        quiet = qfsdk_cli("embed", placements[model], *crop_files, "--backend", backend, "-o", tmp_path / "q.npz")
        assert not notes(quiet.stderr), (model, backend, quiet.stderr)


def test_bench_says_it_once_per_mismatched_model_and_backend(placements):
    done = qfsdk_cli("bench", placements["tensorrt"], placements["onnxruntime"], "--backend", "onnxruntime",
                     "--backend", "openvino", "--batch-size", "1", "--batch-size", "2", "--repeats", "1", "--warmup", "0")  # fmt: skip
    found = notes(done.stderr)
    assert len(found) == 2, done.stderr
    assert f"{placements['tensorrt']}: W8A8, tensorrt placement" in found[0] and "--scheme onnxruntime" in found[0]
    assert f"{placements['onnxruntime']}: W8A8, onnxruntime placement: OpenVINO runs" in found[1]
    assert "--scheme tensorrt" in found[1]
    assert "placement_note" not in done.stdout  # the table holds only the measurements
    assert len([line for line in done.stdout.splitlines() if "mobilefacenet_" in line]) == 8


def test_embedder_logs_it_once_and_keeps_it(placements, caplog):
    crop = arcface_crops()[0][1]
    with caplog.at_level(logging.WARNING, "qfsdk.runtime.embedder"):
        with Embedder(placements["tensorrt"], "onnxruntime") as embedder:
            for _ in range(3):
                embedder.embed(crop)
    [record] = [r for r in caplog.records if NOTE in r.getMessage()]
    assert record.levelno == logging.WARNING and record.getMessage() == embedder.placement_note
    assert "--scheme onnxruntime" in embedder.placement_note
    for model, backend in (("tensorrt", "openvino"), ("onnxruntime", "onnxruntime"), ("fp32", "openvino")):
        with Embedder(placements[model], backend) as embedder:
            assert embedder.placement_note is None, (model, backend)
    with Embedder(placements["onnxruntime"], "openvino") as embedder:
        assert "onnxruntime placement: OpenVINO" in embedder.placement_note and "--scheme tensorrt" in embedder.placement_note


def test_full_range_int8_weights_avoid_openvino_where_its_int8_kernels_saturate(placements, tmp_path, caplog):
    """On an x86 CPU without VNNI (AVX2 only), OpenVINO pairs uint8 x int8 products into int16 with saturation:
    full-range 8-bit weights come out wrong there. ``auto`` then picks ONNX Runtime and says why, an explicit
    openvino backend warns, and 7-bit weights (which cannot overflow there) stay on OpenVINO."""
    import torch

    import qfsdk
    from qfsdk.models import create
    from qfsdk.runtime.backends import choose_backend
    from qfsdk.runtime.cpu import saturating_int8

    torch.manual_seed(0)
    model = create("mobilefacenet")
    crops = np.stack([crop for _, crop in arcface_crops()[:8]])
    quantized = qfsdk.quantize(copy.deepcopy(model), {"preset": "w8a8", "weight_bits": 7})
    checkpoint = qfsdk.save_quantized(qfsdk.calibrate(quantized, torch.from_numpy(model.contract.preprocess(crops)), method="minmax"),
                                      tmp_path / "w7.safetensors")
    seven = tmp_path / "mobilefacenet_w7a8.onnx"
    assert CliRunner().invoke(main, ["convert", str(checkpoint), "-o", str(seven)]).exit_code == 0
    saturates = saturating_int8()
    for path, full_range in ((placements["tensorrt"], True), (seven, False), (placements["fp32"], False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, "qfsdk.runtime.backends"):
            chosen = choose_backend(path)
            with Embedder(path, "openvino"):
                pass
        warned = [r.getMessage() for r in caplog.records if "no VNNI" in r.getMessage() or "without VNNI" in r.getMessage()]
        assert chosen == ("onnxruntime" if saturates and full_range else "openvino"), path
        assert len(warned) == (2 if saturates and full_range else 0), warned


def test_asymmetric_activations_are_placed_for_the_cpu_backends_only(placements, tmp_path):
    """Zero-point activations on the tensorrt placement: made for OpenVINO; ONNX Runtime is told the
    command that keeps them, TensorRT why it cannot run them."""
    import torch

    import qfsdk
    from qfsdk.models import create
    from qfsdk.runtime.placement import placement_note

    torch.manual_seed(0)
    model = create("mobilefacenet")
    crops = torch.from_numpy(model.contract.preprocess(np.stack([crop for _, crop in arcface_crops()[:4]])))
    quantized = qfsdk.calibrate(qfsdk.quantize(model, {"preset": "w8a8", "asymmetric_acts": True}), crops)
    checkpoint = qfsdk.save_quantized(quantized, tmp_path / "asym.safetensors")
    onnx_file = tmp_path / "asym.onnx"
    assert CliRunner().invoke(main, ["convert", str(checkpoint), "-o", str(onnx_file)]).exit_code == 0
    assert placement_note(onnx_file, "openvino") is None
    assert "--scheme onnxruntime --asymmetric-acts" in placement_note(onnx_file, "onnxruntime")
    note = placement_note(onnx_file, "tensorrt")
    assert "zero points (--asymmetric-acts), which TensorRT cannot run" in note and "--asymmetric-acts -o" not in note
    assert placement_note(placements["tensorrt"], "tensorrt") is None
