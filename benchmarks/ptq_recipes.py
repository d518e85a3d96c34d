"""PTQ recipes x models x bit widths from synthetic data (real faces side by side), scored on real faces: what picks the default.

    python benchmarks/ptq_recipes.py                                   # every model, bits and recipe below
    python benchmarks/ptq_recipes.py --models dlib_resnet --bits w4a8 \\
        --recipes ranges ranges,reconstruct --work /tmp/ptq                # one cell
    python benchmarks/ptq_recipes.py --bits w8a8 --recipes equalize,ranges,bias_correction \\
        --acts symmetric asymmetric                                        # the CPU targets' activations
    python benchmarks/ptq_recipes.py --bits w8a8 --recipes equalize,ranges,bias_correction \\
        --calibration synthetic real                                       # real calibration side by side
    python benchmarks/ptq_recipes.py --models fr_feature --score-sets B   # scored on the second crop set only

Prints one JSON document. Per model, 64 synthetic images are made once from the model itself
(``qfsdk synth``'s ``auto`` inversion, seed 0) and kept in ``--work``, so reruns reuse them and
every recipe sees the same images; no real face is used for their calibration or reconstruction. Each
(acts, bits, recipe) is run through ``qfsdk.calibrate`` with percentile ranges (``--acts asymmetric``:
``asymmetric_acts``, zero-point activations over their min/max, the CPU backends' form) and scored in PyTorch
(fake quantization: the ONNX export reproduces it, see ``benchmarks/export_real.py``): minimum and
mean cosine vs the float model over real faces, per scoring set (dlib_resnet: its 12 real chips, key
``chips``, with its decision flips over their 66 pairs at its threshold; SFace and fr_feature: each of
``--score-sets`` of ``tests/crop_sets.py``, ``A``: the 10 scoring crops of
``tests/real_models.crop_halves``, ``B``: the 22 crops cut from other photos, as the peers of
``benchmarks/peers.py`` are scored), and the recipe's wall-clock seconds on ``--threads`` threads
(synthesis excluded).
``default`` marks the recipe ``qfsdk calibrate`` runs at those bits.

``--calibration synthetic real`` adds rows calibrated on real faces instead, the same recipe side by
side: the peers' calibration half of set A's crops for SFace and fr_feature (never scored), and for
dlib_resnet the dlib chips of insightface's photos (``t1.jpg``, ``Tom_Hanks_54745.png``: other people
than the 12 scored chips).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # real_models, face_photos: registry models, crops and chips

import qfsdk  # noqa: E402
from crop_sets import SETS as SCORE_SETS, scoring_crops  # noqa: E402
from qfsdk.calib.sources import open_source  # noqa: E402
from qfsdk.calib.synth import synthesize  # noqa: E402
from fidelity import fidelity as pair_fidelity  # noqa: E402  (benchmarks/fidelity.py)
from qfsdk.models import create  # noqa: E402
from qfsdk.models.card import card_of  # noqa: E402
from qfsdk.quant.algorithms import best_recipe, parse_recipe, recipe_text  # noqa: E402
from qfsdk.quant.config import preset  # noqa: E402

SYNTHETIC_IMAGES = 64
MODELS = ("dlib_resnet", "sface", "fr_feature")
BITS = ("w8a8", "w6a6", "w4a8")
ACTS = ("symmetric",)  # --acts asymmetric adds ``asymmetric_acts`` rows
CALIBRATIONS = ("synthetic", "real")
RECIPES = ("ranges", "ranges,bias_correction", "equalize,ranges,bias_correction",
           "equalize,ranges,keep_float:layers=3,bias_correction", "ranges,reconstruct",
           "ranges,reconstruct:ranges=false", "ends_8bit,ranges,reconstruct", "ends_8bit,ranges,reconstruct:drop=0.5",
           "ends_8bit,ranges,reconstruct:blocks=true")


def float_model(name: str, work: Path) -> torch.nn.Module:
    """The float model: an imported ONNX for the registry models, made once in ``work``."""
    if name == "dlib_resnet":
        return create(name)
    from qfsdk.converters.onnx_import import ImportOptions, import_onnx
    from real_models import REAL_MODELS

    real = REAL_MODELS[name]
    imported = work / f"{name}_float.onnx"
    if not imported.is_file():
        import_onnx(real.onnx(), imported, ImportOptions(mean=(real.mean,) * 3, std=(real.std,) * 3))
    return create(str(imported))


def scoring_faces(name: str, model: torch.nn.Module, sets: list[str]) -> dict[str, torch.Tensor]:
    """{scoring set: its real faces, preprocessed for ``model``}: dlib_resnet's chips (``chips``, whatever
    ``sets`` says), else each crop set of ``sets`` (tests/crop_sets.py)."""
    if name == "dlib_resnet":
        from face_photos import face_chips

        faces = {"chips": face_chips()}
    else:
        faces = {s: [crop for _, crop in scoring_crops(s)] for s in sets}
    return {s: torch.from_numpy(model.contract.preprocess(np.stack(crops))) for s, crops in faces.items()}


def real_calibration_faces(name: str) -> np.ndarray:
    """Real aligned faces (uint8, N x H x W x 3) that calibrate ``name`` and are never scored."""
    if name == "dlib_resnet":
        from face_photos import photo_chips
        from real_models import INSIGHTFACE_PHOTOS, photo_paths

        photo_paths()  # fetches insightface's photos
        return np.stack([chip for photo in INSIGHTFACE_PHOTOS.names for chip in photo_chips(photo)])
    from real_models import crop_halves

    calibration, _ = crop_halves()
    return np.stack([crop for _, crop in calibration])


def synthetic_images(source: str, folder: Path) -> Path:
    """The model's synthetic images in ``folder``, made once: a complete set is reused as it is (``qfsdk
    synth`` would refuse one made on another thread count, whose last bits may differ)."""
    manifest = folder / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
        synthesize(source, folder, SYNTHETIC_IMAGES, seed=0)
    return folder


def run_cell(model: torch.nn.Module, data, faces: dict[str, torch.Tensor], references: dict[str, torch.Tensor],
             bits: str, recipe: str, acts: str, calibration: str) -> dict:
    steps = parse_recipe(recipe)
    asymmetric = acts == "asymmetric"
    config = preset(bits, asymmetric_acts=asymmetric)
    start = time.perf_counter()
    quantized = qfsdk.quantize(copy.deepcopy(model), qfsdk.Recipe.create(config, steps=steps), data)
    seconds = time.perf_counter() - start
    default = list(best_recipe(preset(bits).weight_bits))
    return {"calibration": calibration, "images": card_of(quantized).calibration["images"], "acts": acts, "recipe": recipe_text(steps),
            "default": steps == default and not asymmetric and calibration == "synthetic",
            **{s: scored(quantized, faces[s], references[s]) for s in faces}, "seconds": round(seconds, 1)}


def scored(quantized: torch.nn.Module, faces: torch.Tensor, reference: torch.Tensor) -> dict:
    """Minimum and mean cosine of ``quantized``'s embeddings of ``faces`` vs ``reference`` (and, for a
    euclidean model such as dlib_resnet, its same/different-person decision flips at its threshold)."""
    with torch.no_grad():
        embeddings = quantized(faces)
    cosines = torch.nn.functional.cosine_similarity(embeddings, reference)
    contract = card_of(quantized).contract
    flips = {}
    if contract.distance == "euclidean":
        flips = {"decision_flips": pair_fidelity(embeddings, reference, contract.threshold)["decision_flips"]}
    return {"min_cosine": round(float(cosines.min()), 5), "mean_cosine": round(float(cosines.mean()), 5), **flips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--bits", nargs="+", default=list(BITS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="each a `qfsdk calibrate --recipe` value")
    parser.add_argument("--acts", nargs="+", default=list(ACTS), choices=("symmetric", "asymmetric"),
                        help="activation form: symmetric (every target) and/or asymmetric (--asymmetric-acts: CPU backends)")
    parser.add_argument("--calibration", nargs="+", default=["synthetic"], choices=CALIBRATIONS,
                        help="synthetic (64 images made from the model) and/or real (held-out real faces, see above)")
    parser.add_argument("--score-sets", nargs="+", default=list(SCORE_SETS), choices=SCORE_SETS,
                        help="real crop sets SFace and fr_feature are scored on (tests/crop_sets.py: A's odd half, all of B)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ptq-recipes", help="imports and synthetic images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "synthetic_images": SYNTHETIC_IMAGES, "models": {}}
    for name in args.models:
        model = float_model(name, args.work)
        faces = scoring_faces(name, model, args.score_sets)
        synthetic = args.work / f"{name}_synthetic"
        source = name if name == "dlib_resnet" else str(args.work / f"{name}_float.onnx")
        sources = {}
        if "synthetic" in args.calibration:
            synthetic_images(source, synthetic)
            sources["synthetic"], _ = open_source(synthetic, model)
        if "real" in args.calibration:
            sources["real"] = real_calibration_faces(name)
        with torch.no_grad():
            references = {s: model(x) for s, x in faces.items()}
        rows = [dict(bits=bits, **run_cell(model, data, faces, references, bits, recipe, acts, calibration))
                for calibration, data in sources.items() for acts in args.acts for bits in args.bits for recipe in args.recipes]
        result["models"][name] = rows
        print(json.dumps({name: rows}), file=sys.stderr, flush=True)  # progress: one model at a time
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
