"""Synthetic calibration sources side by side: generator, hybrid and inversion, speed and W8A8 fidelity on real faces.

    .venv/bin/python benchmarks/generator.py                                       # fr_feature and SFace
    .venv/bin/python benchmarks/generator.py --models fr_feature --sources generator hybrid \\
        --hybrid 4:0.01 8:0.01 8:0.05 --counts 64                                  # hybrid's steps:lr, quickly

Prints one JSON document. Per model and source (``qfsdk synth --source``: the packaged DCGAN's faces
re-aligned with YuNet, those faces refined by hybrid's inversion steps, or inversion from noise with
its default 100 steps), ``synthesize`` writes ``--counts`` images (inversion: ``--inversion-images``)
to ``--work`` (seed 0, each set made afresh and timed: images/s on ``--threads`` threads), then
``qfsdk.quantize`` quantizes the float model at W8A8 with ``qfsdk calibrate``'s default recipe and
percentile ranges on them, and the result is scored in PyTorch: min and mean cosine vs the float
model over the real crops of tests/crop_sets.py (``A``: the scoring half of
``real_models.crop_halves``, ``B``: the 22 crops of other photos; dlib_resnet: its 12 real chips,
``chips``), none of which calibrates anything. ``hybrid_vs_inversion`` gives, at the inversion's
image count, each hybrid row's speed ratio to inversion and whether its min and mean cosine are
at least inversion's on every scoring set. ``default`` marks the rows of the sources' default settings.
Models: the registry ONNX files of tests/real_models.py imported as ``qfsdk import`` does (made
once in ``--work``), and the packaged dlib_resnet (``--models dlib_resnet``; its inversion is slow).
Needs the ``generator`` extra (``pip install --no-deps gan-face-generate``) and the ``dev`` extra.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # real_models, face_photos, crop_sets: registry models and real faces

import qfsdk  # noqa: E402
from qfsdk.calib.inversion import InversionSettings  # noqa: E402
from qfsdk.calib.sources import open_source  # noqa: E402
from qfsdk.calib.synth import SOURCES, synthesize  # noqa: E402
from qfsdk.models import create  # noqa: E402
from qfsdk.quant.algorithms import best_recipe, recipe_text  # noqa: E402

MODELS = ("fr_feature", "sface", "dlib_resnet")
SCORE_SETS = ("A", "B")
BITS = "w8a8"
SEED = 0


def float_model(name: str, work: Path) -> tuple[torch.nn.Module, str]:
    """(the float model, what ``synthesize`` names it by): dlib_resnet from the zoo, else a registry ONNX
    imported once into ``work``."""
    if name == "dlib_resnet":
        return create(name), name
    from qfsdk.converters.onnx_import import ImportOptions, import_onnx
    from real_models import REAL_MODELS

    real = REAL_MODELS[name]
    imported = work / f"{name}_float.onnx"
    if not imported.is_file():
        import_onnx(real.onnx(), imported, ImportOptions(mean=(real.mean,) * 3, std=(real.std,) * 3))
    return create(str(imported)), str(imported)


def scoring_faces(name: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{scoring set: its real faces preprocessed for ``model``}: dlib_resnet's chips, else crop sets A and B."""
    if name == "dlib_resnet":
        from face_photos import face_chips

        faces = {"chips": face_chips()}
    else:
        from crop_sets import scoring_crops

        faces = {s: [crop for _, crop in scoring_crops(s)] for s in SCORE_SETS}
    return {s: torch.from_numpy(model.contract.preprocess(np.stack(crops))) for s, crops in faces.items()}


def hybrid_settings(text: str) -> InversionSettings:
    """``STEPS:LR`` as hybrid's settings (the rest: its defaults)."""
    steps, lr = text.split(":")
    return InversionSettings(**{**SOURCES["hybrid"].settings.to_dict(), "iterations": int(steps), "lr": float(lr)})


def make_images(model_name: str, folder: Path, source: str, count: int, settings: InversionSettings | None) -> dict:
    """Write ``count`` images of ``source`` to ``folder`` afresh; their speed and dropped generator faces."""
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    synthesize(model_name, folder, count, seed=SEED, settings=settings, progress=False, source=source)
    seconds = time.perf_counter() - start
    dropped = sum(json.loads((folder / "manifest.json").read_text())["dropped_faces"])
    return {"seconds": round(seconds, 2), "images_per_s": round(count / seconds, 3), "dropped_faces": dropped}


def scored(model: torch.nn.Module, folder: Path, faces: dict[str, torch.Tensor],
           references: dict[str, torch.Tensor]) -> dict:  # fmt: skip
    """Min and mean cosine vs float per scoring set after calibrating ``model`` at W8A8 on ``folder``'s images."""
    data, _ = open_source(folder, model)
    quantized = qfsdk.quantize(copy.deepcopy(model), BITS, data)  # qfsdk calibrate's defaults
    with torch.no_grad():
        cosines = {s: torch.nn.functional.cosine_similarity(quantized(x), references[s]) for s, x in faces.items()}
    return {s: {"min_cosine": round(float(c.min()), 5), "mean_cosine": round(float(c.mean()), 5)} for s, c in cosines.items()}


def comparison(rows: list[dict], images: int) -> list[dict]:
    """Each hybrid row at ``images`` images against the inversion row: speed ratio, fidelity at least as good."""
    inversion = next(r for r in rows if r["source"] == "inversion")
    sets = [k for k in inversion if isinstance(inversion[k], dict)]
    return [{"iterations": row["iterations"], "lr": row["lr"], "default": row["default"],
             "speed_ratio": round(row["images_per_s"] / inversion["images_per_s"], 1),
             "min_and_mean_at_least_inversion": all(row[s][m] >= inversion[s][m] for s in sets
                                                    for m in ("min_cosine", "mean_cosine"))}
            for row in rows if row["source"] == "hybrid" and row["images"] == images]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fr_feature", "sface"], choices=MODELS)
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--counts", nargs="+", type=int, default=[64, 256], help="images per generator/hybrid set")
    parser.add_argument("--inversion-images", type=int, default=64, help="images of the (slow) inversion set")
    hybrid = SOURCES["hybrid"].settings
    parser.add_argument("--hybrid", nargs="+", type=hybrid_settings, default=[hybrid], metavar="STEPS:LR",
                        help=f"hybrid's inversion steps per batch and learning rate, one row each at every --counts "
                             f"(default: {hybrid.iterations}:{hybrid.lr}, the source's)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "generator-bench", help="imports and images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "bits": BITS,
              "recipe": recipe_text(list(best_recipe(8))), "models": {}}
    for name in args.models:
        model, model_name = float_model(name, args.work)
        faces = scoring_faces(name, model)
        with torch.no_grad():
            references = {s: model(x) for s, x in faces.items()}
        runs = [("inversion", args.inversion_images, SOURCES["inversion"].settings)] if "inversion" in args.sources else []
        runs += [("generator", n, None) for n in args.counts if "generator" in args.sources]
        runs += [("hybrid", n, settings) for n in args.counts for settings in args.hybrid if "hybrid" in args.sources]
        rows = []
        for source, count, settings in runs:
            steps = settings.iterations if settings else 0
            folder = args.work / name / (f"{source}-{count}" + (f"-{steps}-{settings.lr}" if source == "hybrid" else ""))
            speed = make_images(model_name, folder, source, count, settings)
            rows.append({"source": source, "images": count, "iterations": steps, "lr": settings.lr if settings else None,
                         "default": settings == SOURCES[source].settings, **speed,
                         **scored(model, folder, faces, references)})
            print(json.dumps({name: rows[-1]}), file=sys.stderr, flush=True)  # progress: one row at a time
        result["models"][name] = {"rows": rows}
        if "inversion" in args.sources and "hybrid" in args.sources:
            result["models"][name]["hybrid_vs_inversion"] = comparison(rows, args.inversion_images)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
