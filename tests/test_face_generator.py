"""The packaged face generator: read from the installed distribution, its faces re-aligned, and the
``generator`` and ``hybrid`` sources of `qfsdk synth` and `qfsdk calibrate --synthetic`."""

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open

from qfsdk.calib import face_generator
from qfsdk.calib.face_generator import DISTRIBUTION, AlignedFaces, packaged_weights
from qfsdk.calib.face_stream import FaceStream
from qfsdk.calib.synth import HYBRID_SETTINGS, synthetic_source
from qfsdk.cli import main
from qfsdk.models import create, get_spec
from qfsdk.runtime.detect import FaceDetector
from qfsdk.runtime.resize import resize

CONTRACT = get_spec("mobilefacenet").contract


@pytest.fixture(scope="module", autouse=True)
def distribution():
    """The ``gan-face-generate`` distribution: installed, else its wheel fetched from PyPI onto ``sys.path``."""
    try:
        importlib.metadata.distribution(DISTRIBUTION)
        yield
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    from real_models import gan_face_generate_dir

    try:
        folder = gan_face_generate_dir()
    except RuntimeError as exc:
        pytest.skip(f"{DISTRIBUTION} is not installed and PyPI cannot be reached: {str(exc).splitlines()[0]}")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches run faster on one thread, and do not stall when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces():
    return AlignedFaces(CONTRACT)


def test_weights_come_from_the_distribution_and_the_detector_finds_its_faces(faces):
    assert packaged_weights() == importlib.metadata.distribution(DISTRIBUTION).locate_file(face_generator.WEIGHTS_FILE)
    raw = faces.generate(8, torch.Generator().manual_seed(0))
    assert raw.shape == (8, 64, 64, 3) and raw.dtype == np.uint8 and raw.std() > 20  # faces, not a constant
    detector = FaceDetector()
    assert sum(faces.align(image) is not None for image in raw) >= 7
    crops, dropped = faces.batch(8, seed=3)
    assert crops.shape == (8, 112, 112, 3) and crops.dtype == np.uint8 and dropped <= 1
    assert np.array_equal(faces.batch(8, seed=3)[0], crops) and not np.array_equal(faces.batch(8, seed=4)[0], crops)
    # Aligned to ArcFace's template: the face is found again near it. YuNet's landmarks on a tight crop are
    # themselves off by ~7 px (median worst point on real ArcFace crops, upsampled and padded as here).
    errors = [np.abs(redetected(detector, crop) - np.asarray(CONTRACT.template)).max() for crop in crops]
    assert np.median(errors) < 8 and max(errors) < 20, errors


def redetected(detector: FaceDetector, crop: np.ndarray, pad: int = 56) -> np.ndarray:
    """The 5 landmarks YuNet finds on ``crop`` (upsampled 2x and edge-padded: it needs context), in crop pixels."""
    image = np.pad(resize(crop, (2 * crop.shape[0], 2 * crop.shape[1])), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    (landmarks,) = detector.detect(image).select(1, largest=True).landmarks
    return (landmarks - pad) / 2


def test_cli_synth_generator_writes_aligned_crops_with_its_source_in_the_manifest(tmp_path):
    out = tmp_path / "faces"
    args = ["synth", "--model", "dlib_resnet", "--source", "generator", "-n", "8", "--batch-size", "5", "-o", str(out),
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "8 images from the generator source" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert manifest["complete"] and len(manifest["dropped_faces"]) == 2
    assert settings["source"] == "generator" and settings["inversion"] is None and settings["method"] is None
    assert settings["generator"]["distribution"] == DISTRIBUTION and len(settings["generator"]["weights_sha256"]) == 64
    images = [np.asarray(Image.open(out / f"{i:06d}.png")) for i in range(8)]
    assert all(image.shape == (150, 150, 3) for image in images)  # dlib's chip, its model's input size
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"}
    (out / "000006.png").unlink()
    assert CliRunner().invoke(main, args).exit_code == 0  # resumes the second batch: the same images
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".png"} == before


def test_hybrid_starts_from_the_generator_faces(faces):
    torch.manual_seed(0)
    model = create("mobilefacenet").eval()
    generated = torch.cat(list(synthetic_source(model, CONTRACT, 4, batch_size=4, seed=2, source="generator")))
    hybrid = torch.cat(list(synthetic_source(model, CONTRACT, 4, batch_size=4, seed=2, iterations=2, source="hybrid")))
    shift = ((hybrid - generated) * 128).abs()  # in pixel levels (mobilefacenet: std 128)
    assert 0 < shift.mean() < 255 * HYBRID_SETTINGS.lr * 2


def test_cli_calibrate_synthetic_hybrid_records_the_source(tmp_path):
    out = tmp_path / "mfn.safetensors"
    result = CliRunner().invoke(main, ["calibrate", "--synthetic", "--source", "hybrid", "--model", "mobilefacenet",
                                       "--num-images", "4", "--iterations", "2", "--batch-size", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "pt") as checkpoint:
        extra = json.loads(checkpoint.metadata()["extra"])
    assert extra["data"] == "4 synthetic images generated on the fly (hybrid source, seed 0)"


@pytest.mark.parametrize("args, message", [
    (["--source", "hybird"], "unknown synthesis source 'hybird'; did you mean 'hybrid'?"),
    (["--source", "generator", "--iterations", "3"], "the generator source runs no inversion steps"),
])  # fmt: skip
def test_cli_synth_bad_source_options_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(main, ["synth", "--model", "mobilefacenet", "-n", "1", *args, "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0 and message in result.output
    assert not (tmp_path / "x").exists()


def test_calibrate_source_needs_synthetic(tmp_path):
    result = CliRunner().invoke(main, ["calibrate", "--model", "mobilefacenet", "--data", str(tmp_path), "--source",
                                       "generator", "-o", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert result.exit_code == 2 and "--source picks where --synthetic images come from" in result.output


def test_a_missing_distribution_names_the_extra_in_one_line(tmp_path, monkeypatch):
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    for command in (["synth", "--model", "mobilefacenet", "-n", "2", "--source", "generator", "-o", str(tmp_path / "x")],
                    ["calibrate", "--synthetic", "--source", "hybrid", "--model", "mobilefacenet", "--num-images", "2",
                     "-o", str(tmp_path / "x.safetensors")]):  # fmt: skip
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
        assert "needs the 'gan-face-generate' package" in result.output and "pip install 'qfsdk[generator]'" in result.output
        assert not (tmp_path / "x").exists() and not (tmp_path / "x.safetensors").exists()


def test_a_face_stream_makes_each_face_from_its_index_in_any_order(faces):
    stream = FaceStream(CONTRACT, 70, seed=1, faces=faces)
    later_first = stream[torch.tensor([69, 3])]
    fresh = FaceStream(CONTRACT, 70, seed=1, faces=faces)
    assert torch.equal(fresh[torch.tensor([3, 69])], later_first.flip(0))  # the same faces whatever asked first
    assert later_first.shape == (2, 3, 112, 112) and later_first.dtype == torch.float32
    tail = stream[60:]
    assert len(tail) == 10 and torch.equal(tail[torch.tensor([9])], stream[torch.tensor([69])])
    assert not torch.equal(FaceStream(CONTRACT, 70, seed=2, faces=faces)[torch.tensor([3])], stream[torch.tensor([3])])
    with pytest.raises(IndexError):
        tail[torch.tensor([10])]


def test_cli_qat_streams_generator_faces_and_resumes_exactly(tmp_path):
    def qat(steps: int, output: Path, *extra: str):
        args = ["qat", "--model", "mobilefacenet", "--data", "synthetic", "--source", "generator", "--num-images", "40",
                "--validation-images", "8", "--validate-every", "2", "--batch-size", "4", "--freeze-bn",
                "--steps", str(steps), "--checkpoint-every", "2", "-o", str(output), *extra]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result.output

    output = qat(4, tmp_path / "straight.safetensors")
    assert "on 40 generator faces made on demand (seed 0)" in output
    assert not list(tmp_path.glob("*.synth"))  # streamed: no dataset folder
    qat(2, tmp_path / "resumed.safetensors")
    qat(4, tmp_path / "resumed.safetensors", "--resume")
    with safe_open(str(tmp_path / "straight.safetensors"), "pt") as a, safe_open(str(tmp_path / "resumed.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
