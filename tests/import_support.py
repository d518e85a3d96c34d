"""Helpers shared by the `qfsdk import` tests (test support, no tests here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

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
