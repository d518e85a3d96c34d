"""QAT with distillation on synthetic data for the real trained face models, through the CLI.

    python benchmarks/qat_real.py [--models sface fr_feature] [--bits w6a6] [--steps 300]   # 64 inversion images
    python benchmarks/qat_real.py --source generator --num-images 10000 --steps 313 --batch-size 32 \\
        --bits w8a8 w6a6 --models fr_feature sface dlib_resnet                           # 10k generator faces

Prints one JSON document. Per model (OpenCV's SFace and faceplugin's ``fr_feature``, imported with
``qfsdk import``; the packaged ``dlib_resnet``) and bits: the PTQ starting point (``qfsdk calibrate``
with ``--recipe START``: ``qfsdk calibrate``'s default recipe at those bits unless ``--start`` says
otherwise) and QAT from it (``qfsdk qat --recipe START --steps N``, ``--validation-images`` held out
and the best validated student kept), each ``qfsdk convert`` -ed to ONNX. The training images are
synthetic only: ``--source inversion`` uses the same 64 images as ``benchmarks/ptq_recipes.py``
(made once from the model, kept in ``--work``); ``--source generator`` streams ``--num-images`` of
the packaged generator's faces (``qfsdk qat --data synthetic --source generator``; the PTQ row
calibrates on the first 256 of them, as qat's start does). Scored on real faces none of which
trains or calibrates anything (tests/crop_sets.py's sets A and B; dlib_resnet: its 12 chips):
minimum / mean cosine vs the float model of the PyTorch checkpoint and of the exported ONNX on ONNX
Runtime (plain parity, reported), and each command's wall seconds on this machine.
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
sys.path.insert(0, str(ROOT / "tests"))  # real_models, crop_sets, face_photos: registry models and real faces
sys.path.insert(0, str(ROOT / "benchmarks"))  # ptq_recipes: the float models and the scoring faces

from ptq_recipes import float_model, scoring_faces  # noqa: E402
from qfsdk.calib.synth import synthesize  # noqa: E402
from qfsdk.eval.metrics import cosine_similarities  # noqa: E402
from qfsdk.quant.algorithms import best_recipe, recipe_text  # noqa: E402
from qfsdk.quant.config import preset  # noqa: E402

MODELS = ("sface", "fr_feature", "dlib_resnet")
SCORE_SETS = ["A", "B"]
INVERSION_IMAGES = 64  # benchmarks/ptq_recipes.py's
START_IMAGES = 256  # qfsdk qat's PTQ start calibrates on at most this many of its images


def cli(*args: object) -> float:
    """Run one qfsdk command; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qfsdk", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 1)


def cosines(embeddings: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = cosine_similarities(embeddings, reference)
    return {"min_cosine": round(float(cos.min()), 5), "mean_cosine": round(float(cos.mean()), 5)}


def scored(checkpoint: Path, onnx: Path, faces: dict[str, torch.Tensor], references: dict[str, np.ndarray]) -> dict:
    """Per scoring set: cosines vs the float model of the PyTorch checkpoint and of its ONNX export on ONNX Runtime."""
    import onnxruntime as ort

    import qfsdk

    model = qfsdk.load(checkpoint).eval()
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    result = {}
    for s, x in faces.items():
        with torch.no_grad():
            pytorch = model(x).numpy()
        exported = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
        result[s] = {"pytorch": cosines(pytorch, references[s]), "onnxruntime": cosines(exported, references[s])}
    return result


def data_args(source: str, model_name: str, work: Path, count: int) -> tuple[tuple, tuple]:
    """(calibrate's data options, qat's data options) for ``source``."""
    if source == "generator":
        return (("--synthetic", "--source", "generator", "--num-images", min(count, START_IMAGES)),
                ("--data", "synthetic", "--source", "generator", "--num-images", count))  # fmt: skip
    synthetic = work / f"{Path(model_name).stem.removesuffix('_float')}_synthetic"
    synthesize(model_name, synthetic, INVERSION_IMAGES, seed=0, progress=False)  # a complete dataset is reused
    return ("--data", synthetic), ("--data", synthetic)


def run_model(name: str, args: argparse.Namespace) -> dict:
    model = float_model(name, args.work)
    model_name = name if name == "dlib_resnet" else str(args.work / f"{name}_float.onnx")
    faces = scoring_faces(name, model, SCORE_SETS)
    with torch.no_grad():
        references = {s: model(x).numpy() for s, x in faces.items()}
    calibrate_data, qat_data = data_args(args.source, model_name, args.work, args.num_images)
    rows = {}
    for bits in args.bits:
        start = args.start or recipe_text(list(best_recipe(preset(bits).weight_bits))).replace("+", ",")
        tag = f"{name}_{bits}_{args.source}"
        commands = {
            f"ptq {start}": ("calibrate", *calibrate_data, "--recipe", start, "--batch-size", args.batch_size),
            f"qat {args.steps} steps": ("qat", *qat_data, "--recipe", start, "--steps", args.steps,
                                        "--batch-size", args.batch_size, "--validation-images", args.validation_images,
                                        "--validate-every", args.validate_every, "--checkpoint-every", args.validate_every),
        }  # fmt: skip
        for label, command in commands.items():
            checkpoint, onnx = args.work / f"{tag}_{command[0]}.safetensors", args.work / f"{tag}_{command[0]}.onnx"
            if command[0] == "qat":
                checkpoint.with_name(checkpoint.stem + ".qat-state.safetensors").unlink(missing_ok=True)
            seconds = cli(*command, "--model", model_name, "--bits", bits, "-o", checkpoint)
            cli("convert", checkpoint, "-o", onnx)
            rows[f"{bits} {label}"] = {"seconds": seconds, **scored(checkpoint, onnx, faces, references)}
            print(json.dumps({name: {f"{bits} {label}": rows[f"{bits} {label}"]}}), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sface", "fr_feature"], choices=MODELS)
    parser.add_argument("--bits", nargs="+", default=["w6a6"])
    parser.add_argument("--source", choices=("inversion", "generator"), default="inversion")
    parser.add_argument("--num-images", type=int, default=10_000, help="generator faces streamed to QAT")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--start", help="the PTQ start's recipe (default: qfsdk calibrate's default at each bits)")
    parser.add_argument("--validation-images", type=int, default=8)
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ptq-recipes", help="imports, synthetic images, outputs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "models": {name: run_model(name, args) for name in args.models}}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
