"""PTQ recipes x models x bit widths from synthetic data (real faces side by side), scored on real faces: what picks the default.

    python benchmarks/ptq_recipes.py                                   # every model, bits and recipe below
    python benchmarks/ptq_recipes.py --models dlib_resnet --bits w4a8 \\
        --recipes ranges ranges,reconstruct --work /tmp/ptq                # one cell
    python benchmarks/ptq_recipes.py --bits w8a8 --recipes equalize,ranges,bias_correction \\
        --acts symmetric asymmetric                                        # the CPU targets' activations
    python benchmarks/ptq_recipes.py --bits w8a8 --recipes equalize,ranges,bias_correction \\
        --calibration synthetic real                                       # real calibration side by side

Prints one JSON document. Per model, 64 synthetic images are made once from the model itself
(``qfsdk synth``'s ``auto`` inversion, seed 0) and kept in ``--work``, so reruns reuse them and
every recipe sees the same images; no real face is used for their calibration or reconstruction. Each
(acts, bits, recipe) is run through ``qfsdk.calibrate`` with percentile ranges (``--acts asymmetric``:
``asymmetric_acts``, zero-point activations over their min/max, the CPU backends' form) and scored in PyTorch
(fake quantization: the ONNX export reproduces it, see ``benchmarks/export_real.py``): minimum and
mean cosine vs the float model over real faces (dlib_resnet: its 12 real chips; SFace and
fr_feature: the 10 scoring crops of ``tests/real_models.crop_halves``, the half the peers of
``benchmarks/peers.py`` are scored on; dlib_resnet also its decision flips over the chips' 66 pairs at
its threshold), and the recipe's wall-clock seconds on ``--threads`` threads (synthesis excluded).
``default`` marks the recipe ``qfsdk calibrate`` runs at those bits.

``--calibration synthetic real`` adds rows calibrated on real faces instead, the same recipe side by
side: the peers' calibration half of the crops for SFace and fr_feature (scored on the other half, as
in ``benchmarks/peers.py``), and for dlib_resnet the dlib chips of insightface's photos (``t1.jpg``,
``Tom_Hanks_54745.png``: other people than the 12 scored chips).
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


def float_model(name: str, work: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The float model (an imported ONNX for the registry models) and its real scoring faces, preprocessed."""
    if name == "dlib_resnet":
        from face_photos import face_chips

        model = create(name)
        return model, torch.from_numpy(model.contract.preprocess(np.stack(face_chips())))
    from qfsdk.converters.onnx_import import ImportOptions, import_onnx
    from real_models import REAL_MODELS, crop_halves

    real = REAL_MODELS[name]
    imported = work / f"{name}_float.onnx"
    if not imported.is_file():
        import_onnx(real.onnx(), imported, ImportOptions(mean=(real.mean,) * 3, std=(real.std,) * 3))
    model = create(str(imported))
    _, scoring = crop_halves()
    return model, torch.from_numpy(model.contract.preprocess(np.stack([crop for _, crop in scoring])))


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


def run_cell(model: torch.nn.Module, data, faces: torch.Tensor, reference: torch.Tensor, bits: str, recipe: str,
             acts: str, calibration: str) -> dict:
    steps = parse_recipe(recipe)
    asymmetric = acts == "asymmetric"
    config = preset(bits, asymmetric_acts=asymmetric)
    start = time.perf_counter()
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), config), data,
                                method=config.range_method(default="percentile"), algorithm=steps)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        embeddings = quantized(faces)
    cosines = torch.nn.functional.cosine_similarity(embeddings, reference)
    default = list(best_recipe(preset(bits).weight_bits))
    contract = card_of(model).contract
    flips = {}
    if contract.distance == "euclidean":  # dlib_resnet: same/different-person decisions at its threshold
        flips = {"decision_flips": pair_fidelity(embeddings, reference, contract.threshold)["decision_flips"]}
    return {"calibration": calibration, "images": card_of(quantized).calibration["images"], "acts": acts, "recipe": recipe_text(steps),
            "default": steps == default and not asymmetric and calibration == "synthetic", "min_cosine": round(float(cosines.min()), 5),
            "mean_cosine": round(float(cosines.mean()), 5), **flips, "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--bits", nargs="+", default=list(BITS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help="each a `qfsdk calibrate --recipe` value")
    parser.add_argument("--acts", nargs="+", default=list(ACTS), choices=("symmetric", "asymmetric"),
                        help="activation form: symmetric (every target) and/or asymmetric (--asymmetric-acts: CPU backends)")
    parser.add_argument("--calibration", nargs="+", default=["synthetic"], choices=CALIBRATIONS,
                        help="synthetic (64 images made from the model) and/or real (held-out real faces, see above)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ptq-recipes", help="imports and synthetic images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "synthetic_images": SYNTHETIC_IMAGES, "models": {}}
    for name in args.models:
        model, faces = float_model(name, args.work)
        synthetic = args.work / f"{name}_synthetic"
        source = name if name == "dlib_resnet" else str(args.work / f"{name}_float.onnx")
        sources = {}
        if "synthetic" in args.calibration:
            synthetic_images(source, synthetic)
            sources["synthetic"], _ = open_source(synthetic, model)
        if "real" in args.calibration:
            sources["real"] = real_calibration_faces(name)
        with torch.no_grad():
            reference = model(faces)
        rows = [dict(bits=bits, **run_cell(model, data, faces, reference, bits, recipe, acts, calibration))
                for calibration, data in sources.items() for acts in args.acts for bits in args.bits for recipe in args.recipes]
        result["models"][name] = rows
        print(json.dumps({name: rows}), file=sys.stderr, flush=True)  # progress: one model at a time
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
