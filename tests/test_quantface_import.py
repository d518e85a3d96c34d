"""QuantFace's released-checkpoint format (whole pickled modules) through `qfsdk convert`."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from face_photos import face_chips
from qfsdk.cli import main
from qfsdk.converters.quantface_import import import_quantface
from quantface_pickles import forget_reference_package, reference_model, set_ranges, write_reference_package


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def face_batch(size: int) -> torch.Tensor:
    from qfsdk.models import get_spec

    contract = get_spec("mobilefacenet").contract
    chips = [np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in face_chips()]
    return torch.from_numpy(contract.preprocess(np.stack(chips)))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """MobileFaceNet W8A8 and IResNet-18 W6A6 in QuantFace's format, with their own outputs on real faces."""
    root = tmp_path_factory.mktemp("quantface")
    write_reference_package(root / "src")
    faces = face_batch(112)
    made = {}
    for arch, family, bits in [("mobilefacenet", "mobilefacenet", 8), ("iresnet18", "iresnet", 6)]:
        model = reference_model(arch, family, bits, bits)
        set_ranges(model, [faces[:6], faces[6:]])
        with torch.no_grad():
            expected = model(faces).numpy()
        path = root / f"{arch}_w{bits}a{bits}.pth"
        torch.save(model, path)  # what the reference training script releases
        made[arch] = (path, expected)
    forget_reference_package()
    probes = root / "probes"
    probes.mkdir()
    for i, chip in enumerate(face_chips()):
        Image.fromarray(chip).save(probes / f"{i:02d}.png")
    return made, faces, probes


def test_import_rebuilds_the_same_function(checkpoints):
    made, faces, _ = checkpoints
    for arch, (path, expected) in made.items():
        imported = import_quantface(path)
        assert imported.architecture == arch
        with torch.no_grad():
            assert cosines(imported.model(faces).numpy(), expected).min() >= 0.9999


def test_onnxruntime_target_keeps_zero_points_exactly(checkpoints, tmp_path):
    made, faces, probes = checkpoints
    path, expected = made["mobilefacenet"]
    output = tmp_path / "mfn_ort.onnx"
    result = CliRunner().invoke(main, ["convert", str(path), "--target", "onnxruntime", "-o", str(output),
                                       "--probe-images", str(probes)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": faces.numpy()})[0]
    assert cosines(got, expected).min() >= 0.999


def _source_loss(output: str) -> float:
    return float(re.search(r"ONNX vs source model: min cosine ([0-9.]+)", output).group(1))


def test_tensorrt_target_is_symmetric_and_recalibration_reduces_the_loss(checkpoints, tmp_path):
    made, _, probes = checkpoints
    path, _ = made["mobilefacenet"]
    runner = CliRunner()
    widened = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "a.onnx"), "--probe-images", str(probes)])
    assert widened.exit_code == 0, widened.output
    assert "asymmetric -> symmetric" in widened.output and "qfsdk check:  passes" in widened.output
    assert runner.invoke(main, ["check", str(tmp_path / "a.onnx")]).exit_code == 0
    recalibrated = runner.invoke(main, ["convert", str(path), "-o", str(tmp_path / "b.onnx"), "--probe-images", str(probes),
                                        "--recalibrate", "synthetic", "--num-images", "8", "--iterations", "20"])
    assert recalibrated.exit_code == 0, recalibrated.output
    assert _source_loss(recalibrated.output) > _source_loss(widened.output)
    # The reference left the stem, the convs after a linear bottleneck and the head reading float inputs:
    # the widened export says so, the recalibrated one quantizes them (every Conv/Gemm reads int8).
    assert re.search(r"float inputs: \d+ layers \(conv1", widened.output), widened.output
    assert "float inputs:" not in recalibrated.output and "left float now int8" in recalibrated.output
    graph = onnx.load(str(tmp_path / "b.onnx")).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    assert all(made_by.get(node.input[0]) == "DequantizeLinear" for node in graph.node if node.op_type in ("Conv", "Gemm"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch qfsdk-pwned",))


@pytest.mark.parametrize("payload", ["os.system", "inside a module"])
def test_foreign_globals_are_refused_without_running(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    obj = _Payload() if payload == "os.system" else torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    if payload != "os.system":
        obj.hook = _Payload()
    torch.save(obj, path)
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1, result.output
    assert "refused without running anything" in result.output
    assert not (tmp_path / "qfsdk-pwned").exists() and not (tmp_path / "out.onnx").exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3], "fn": print}, protocol=2))
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1 and str(path) in result.output


@pytest.mark.parametrize("damage", ["module cycle", "missing layer"])
def test_malformed_quantface_pickles_are_refused_in_one_line(checkpoints, tmp_path, damage):
    """A QuantFace-shaped pickle whose module tree loops back on itself, or lacks a layer: one line, no file."""
    model = reference_model("mobilefacenet", "mobilefacenet", 8, 8)
    first = next(name for name, _ in model.named_children())
    if damage == "module cycle":
        getattr(model, first).add_module("loop", model)
    else:
        delattr(model, first)
    path = tmp_path / "damaged.pth"
    torch.save(model, path)
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1, result.output
    assert str(path) in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "out.onnx").exists()
