"""W6A6 QAT with distillation on synthetic data for the real trained MobileFaceNets, through the CLI.

    python benchmarks/qat_real.py [--models sface fr_feature] [--steps 300] [--work DIR]

Prints one JSON document. Per model (OpenCV's SFace, faceplugin's ``fr_feature``; tests/real_models.py):
``qfsdk import``, then from the same 64 synthetic images as ``benchmarks/ptq_recipes.py`` (made once
from the model itself, kept in ``--work``; no real face is used): W6A6 PTQ (``qfsdk calibrate --data
SYNTH --bits w6a6 --recipe ranges``) and W6A6 QAT (``qfsdk qat --data SYNTH --bits w6a6 --steps N``,
the last 8 images held out for validation, best kept), each ``qfsdk convert`` -ed to ONNX. Scored
on the 10 scoring crops of ``tests/real_models.crop_halves`` (the half the peers of ``benchmarks/peers.py``
are scored on): minimum / mean cosine vs the float import, of the PyTorch checkpoint and of the
exported ONNX on ONNX Runtime (plain parity, reported), and the wall seconds of each command.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # real_models: registry models and crops

from qfsdk.calib.synth import synthesize  # noqa: E402
from qfsdk.eval.metrics import cosine_similarities  # noqa: E402

MODELS = ("sface", "fr_feature")
SYNTHETIC_IMAGES = 64  # benchmarks/ptq_recipes.py's
VALIDATION_IMAGES = 8


def cli(*args: object) -> float:
    """Run one qfsdk command; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qfsdk", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def cosines(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = cosine_similarities(embeddings, reference)
    return {"min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5)}


def scored(checkpoint: Path, onnx: Path, crops: np.ndarray, reference: np.ndarray) -> dict:
    """Cosines vs the float model of the PyTorch checkpoint and of its ONNX export on ONNX Runtime."""
    import qfsdk
    from qfsdk.runtime import Embedder

    model = qfsdk.load(checkpoint).eval()
    with torch.no_grad():
        pytorch = model(torch.from_numpy(model.contract.preprocess(crops))).numpy()
    with Embedder(onnx, "onnxruntime") as embedder:
        exported = embedder.embed(crops)
    return {"pytorch": cosines(pytorch, reference), "onnxruntime": cosines(exported, reference)}


def run_model(name: str, work: Path, steps: int) -> dict:
    from qfsdk.runtime import Embedder
    from real_models import REAL_MODELS, crop_halves

    real = REAL_MODELS[name]
    imported = work / f"{name}_float.onnx"
    if not imported.is_file():
        cli("import", real.onnx(), "-o", imported, "--mean", real.mean, "--std", real.std)
    synthetic = work / f"{name}_synthetic"
    synthesize(str(imported), synthetic, SYNTHETIC_IMAGES, seed=0)  # a complete dataset is reused as it is
    crops = np.stack([crop for _, crop in crop_halves()[1]])
    with Embedder(imported, "onnxruntime") as embedder:
        reference = embedder.embed(crops)
    rows = {}
    for label, command in {
        "ptq ranges": ("calibrate", "--data", synthetic, "--recipe", "ranges"),
        f"qat {steps} steps": ("qat", "--data", synthetic, "--steps", steps, "--validation-images", VALIDATION_IMAGES,
                               "--validate-every", max(1, steps // 6)),
    }.items():
        checkpoint, onnx = work / f"{name}_w6a6_{command[0]}.safetensors", work / f"{name}_w6a6_{command[0]}.onnx"
        seconds = cli(*command, "--model", imported, "--bits", "w6a6", "-o", checkpoint)
        cli("convert", checkpoint, "-o", onnx)
        rows[label] = {"seconds": seconds, **scored(checkpoint, onnx, crops, reference)}
        print(json.dumps({name: {label: rows[label]}}), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ptq-recipes", help="imports, synthetic images, outputs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "bits": "w6a6", "steps": args.steps,
              "synthetic_images": SYNTHETIC_IMAGES, "models": {name: run_model(name, args.work, args.steps) for name in args.models}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
