"""`qfsdk eval --fidelity` on the pretrained dlib_resnet and real face chips: cosine, flips, SQNR, mixed precision."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import qfsdk
from face_photos import face_chips
from qfsdk.cli import main
from qfsdk.eval.fidelity import compare_embeddings
from qfsdk.eval.sensitivity import layer_sensitivity
from qfsdk.models import create
from qfsdk.quant.api import quantizable_layers
from qfsdk.runtime.contract import FaceContract

BUDGET = 0.996


@pytest.fixture(scope="module")
def dlib():
    return create("dlib_resnet")


@pytest.fixture(scope="module")
def chip_folder(tmp_path_factory) -> Path:
    """The first 8 real face chips as PNG files."""
    folder = tmp_path_factory.mktemp("chips")
    for index, chip in enumerate(face_chips(8)):
        Image.fromarray(chip).save(folder / f"{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory) -> Path:
    """The 4 chips not in chip_folder, as calibration data."""
    folder = tmp_path_factory.mktemp("calib")
    for index, chip in enumerate(face_chips()[8:]):
        Image.fromarray(chip).save(folder / f"{index:02d}.png")
    return folder


def preprocessed(model, folder: Path) -> torch.Tensor:
    crops = np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])
    return torch.from_numpy(model.contract.preprocess(crops))


@pytest.fixture(scope="module")
def w6a6(tmp_path_factory, dlib, calib_folder) -> Path:
    """W6A6 dlib_resnet calibrated (min/max) on calib_folder."""
    data = preprocessed(dlib, calib_folder)
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(dlib), "w6a6"), data, method="minmax")
    return qfsdk.save_quantized(quantized, tmp_path_factory.mktemp("ckpt") / "dlib_w6a6.safetensors")


def embeddings(model, folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(preprocessed(model, folder))


@pytest.fixture(scope="module")
def fidelity_run(tmp_path_factory, chip_folder, calib_folder, w6a6):
    report = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["eval", "--fidelity", "dlib_resnet", str(w6a6), "--images", str(chip_folder),
                                       "--budget", str(BUDGET), "--batch-size", "8", "--sensitivity-batches", "1",
                                       "--calib-data", str(calib_folder), "--json", "--report", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), report


def test_fidelity_cosine_and_flips_match_a_direct_computation(fidelity_run, dlib, chip_folder, w6a6):
    fidelity = fidelity_run[0]["fidelity"]
    reference, quantized = embeddings(dlib, chip_folder), embeddings(qfsdk.load(w6a6), chip_folder)
    cosine = torch.nn.functional.cosine_similarity(reference, quantized)
    assert [row["cosine"] for row in fidelity["per_image"]] == pytest.approx(cosine.tolist(), abs=1e-6)
    flips = sum(
        bool(torch.dist(reference[i], reference[j]) < 0.6) != bool(torch.dist(quantized[i], quantized[j]) < 0.6)
        for i, j in itertools.combinations(range(8), 2)
    )
    assert fidelity["decision_flips"] == flips and fidelity["pairs"] == 28
    assert fidelity["distance"] == "euclidean" and fidelity["threshold"] == 0.6


def test_sensitivity_covers_every_quantized_layer(fidelity_run, dlib):
    sensitivity = fidelity_run[0]["sensitivity"]
    assert [s["name"] for s in sensitivity] == [name for name, _ in quantizable_layers(dlib, "tensorrt")]
    for layer in sensitivity:
        assert layer["weight_bits"] == layer["act_bits"] == 6
        assert 0 < layer["sqnr_db"] < 100 and 0 < layer["local_sqnr_db"] < 100 and 0 < layer["output_sqnr_db"] < 100
    # The stem sees the float input in both networks: its in-network and alone SQNRs agree.
    assert sensitivity[0]["sqnr_db"] == pytest.approx(sensitivity[0]["local_sqnr_db"])


def test_recommendation_meets_the_budget_when_applied_with_calibrate(fidelity_run, dlib, chip_folder, calib_folder, tmp_path):
    report, folder = fidelity_run
    recommendation = report["recommendation"]
    assert recommendation["met"] and recommendation["min_cosine_before"] < BUDGET <= recommendation["min_cosine_after"]
    assert 0 < len(recommendation["keep_8bit"]) < 10
    assert {"eval.json", "eval.md", "sensitivity.png", "recommended_config.json"} <= {p.name for p in folder.iterdir()}
    # Apply the written config as a user would, on the data QUANT was calibrated on (passed as --calib-data).
    out = tmp_path / "mixed.safetensors"
    config = folder / "recommended_config.json"
    # --recipe ranges: the search measured each candidate with activation ranges alone (no default reconstruct at 6 bits)
    argv = ["calibrate", "--model", "dlib_resnet", "--data", str(calib_folder), "--config", str(config), "--method", "minmax",
            "--recipe", "ranges"]
    result = CliRunner().invoke(main, [*argv, "-o", str(out)])
    assert result.exit_code == 0, result.output
    mixed = qfsdk.load(out)
    assert mixed.quant_config.weight_bits == 6
    assert {o.pattern for o in mixed.quant_config.overrides} == set(recommendation["keep_8bit"])
    cosine = torch.nn.functional.cosine_similarity(embeddings(mixed, chip_folder), embeddings(dlib, chip_folder))
    assert float(cosine.min()) == pytest.approx(recommendation["min_cosine_after"], abs=1e-6)


def test_quantizing_a_layer_lowers_its_sqnr(dlib, chip_folder):
    batch = torch.from_numpy(dlib.contract.preprocess(np.stack(face_chips(4))))
    by_bits = {}
    for bits in ("w8a8", "w4a4"):
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(dlib), bits), batch, method="minmax")
        by_bits[bits] = {s.name: s for s in layer_sensitivity(dlib, quantized, [batch])}
    for name in ("stem.conv", "layers.6.conv1", "fc"):
        assert by_bits["w4a4"][name].local_sqnr_db + 6 < by_bits["w8a8"][name].local_sqnr_db
        assert by_bits["w4a4"][name].output_sqnr_db < by_bits["w8a8"][name].output_sqnr_db


def test_cosine_model_flips_only_at_a_given_threshold():
    contract = FaceContract(input_size=(112, 112), embedding_size=2)
    reference = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])  # cosines: 0.8 (0-1), 0 (0-2), 0.6 (1-2)
    quantized = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])  # cosines: 0.6, 0, 0.8
    result = compare_embeddings(reference, quantized, contract, ["a", "b", "c"], threshold=0.7)
    assert result["decision_flips"] == 2 and result["pairs"] == 3
    assert result["min_cosine"] == pytest.approx(0.96)
    unset = compare_embeddings(reference, quantized, contract, ["a", "b", "c"])
    assert unset["decision_flips"] is None and "no decision flips" in unset["note"]


def test_fidelity_of_an_exported_model_compares_embeddings_only(fidelity_run, chip_folder, w6a6, tmp_path):
    from qfsdk.converters.qdq_export import export_quantized
    from qfsdk.eval.api import SENSITIVITY_NOTE

    exported = export_quantized(qfsdk.load(w6a6), tmp_path / "dlib_w6a6.onnx", target="onnxruntime")
    argv = ["eval", "--fidelity", "dlib_resnet", str(exported), "--images", str(chip_folder), "--json"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "sensitivity" not in report and report["notes"] == [SENSITIVITY_NOTE]
    assert report["fidelity"]["min_cosine"] == pytest.approx(fidelity_run[0]["fidelity"]["min_cosine"], abs=2e-3)


def test_mse_candidates_need_recalibration(dlib):
    """mse ranges depend on the bit width: with the calibration data each candidate is recalibrated, and the verified
    cosine is exactly that of a fresh calibration with the recommended config; without it, raised layers stay clipped."""
    from qfsdk.eval.mixed_precision import recommend_mixed_precision
    from qfsdk.eval.sensitivity import LayerSensitivity

    calibration = torch.from_numpy(dlib.contract.preprocess(np.stack(face_chips()[8:])))
    images = torch.from_numpy(dlib.contract.preprocess(np.stack(face_chips(8))))
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(dlib), "w6a6"), calibration, method="mse")
    names = ["fc", "stem.conv", "layers.0.conv1"]
    ranking = [LayerSensitivity(name, "", 6, 6, 0.0, 0.0, float(rank)) for rank, name in enumerate(names)]
    with_data = recommend_mixed_precision(dlib, quantized, images, ranking, 1.0, calibration)
    without = recommend_mixed_precision(dlib, quantized, images, ranking, 1.0)
    assert with_data.keep_8bit == without.keep_8bit == names  # budget 1: every candidate, unmet
    fresh = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(dlib), with_data.config), calibration, method="mse").eval()
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(fresh(images), dlib(images)).min()
    assert with_data.min_cosine_after == pytest.approx(float(cosine), abs=1e-7)
    assert without.min_cosine_after != pytest.approx(float(cosine), abs=1e-5)  # 6.5e-5 apart on an AVX2-only CPU
