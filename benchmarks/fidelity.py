"""Fidelity of quantized dlib_resnet calibrated and trained only on synthetic data.

Held-out data: real face chips from registry packages (tests/face_photos.py), never used for
calibration or training. Prints one JSON document; `--out FILE` also writes it.

    python benchmarks/fidelity.py                 # full run (~40 min on 2 CPU cores; --num-synthetic 256: ~55 min)
    python benchmarks/fidelity.py --qat-minutes 1 --mfn-steps 20 --num-synthetic 16   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import qfsdk  # noqa: E402
from qfsdk.calib.synth import synthetic_source  # noqa: E402
from qfsdk.models import create  # noqa: E402
from qfsdk.quant.config import KD_LOSS_CHOICES  # noqa: E402
from qfsdk.quant.qat import QATSettings, QATRun  # noqa: E402

PRESETS = ("w8a8", "w6a6", "w4a8", "w4a4")
METHODS = ("minmax", "percentile", "mse")
PACE_STEPS = 20
TARGETS = {"w8a8_ptq_min_cosine": 0.999, "w6a6_qat_min_cosine": 0.99}


def embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        return model.eval()(images.to(device)).cpu()


def fidelity(quantized: torch.Tensor, reference: torch.Tensor, threshold: float) -> dict:
    """Per-image cosine and same/different-person decision flips over all pairs."""
    cosine = torch.nn.functional.cosine_similarity(quantized, reference)
    flips = 0
    pairs = list(itertools.combinations(range(len(reference)), 2))
    for i, j in pairs:
        same_float = torch.dist(reference[i], reference[j]) < threshold
        same_quant = torch.dist(quantized[i], quantized[j]) < threshold
        flips += int(same_float != same_quant)
    return {
        "min_cosine": round(float(cosine.min()), 6),
        "mean_cosine": round(float(cosine.mean()), 6),
        "per_image_cosine": [round(float(c), 6) for c in cosine],
        "decision_flips": flips,
        "pairs": len(pairs),
    }


def qat_for(minutes: float, student, teacher, images, batch_size: int, state: Path, device: str, **settings) -> dict:
    """QAT for a wall-clock budget; returns steps done and the final training cosine.

    The first steps set the pace; the run is then planned for the steps that fit the budget, so
    the schedule's last-1/11 lr drop (the paper's last epoch) happens inside it.
    """
    start = time.time()
    deadline = start + minutes * 60
    run = QATRun(student, teacher, images, QATSettings(steps=10**6, batch_size=batch_size, checkpoint_every=10**6, **settings), state,
                 device=device)
    while run.step < PACE_STEPS and time.time() < deadline:
        run.train_step()
    pace = (time.time() - start) / max(1, run.step)
    run.settings = dataclasses.replace(run.settings, steps=run.step + int(0.97 * (deadline - time.time()) / pace))
    while run.step < run.settings.steps and time.time() < deadline:
        run.train_step()
    steps = run.step
    run.finish()
    best = run.best or {}
    return {"steps": steps, "planned_steps": run.settings.steps, "minutes": round((time.time() - start) / 60, 2),
            "kd_loss": run.kd_loss, "final_cosine_on_train": run.history[-1]["cosine"] if run.history else None,
            "validation_images": len(run.validation) if run.validation is not None else 0,
            "kept_step": best.get("step", steps), "kept_validation_min_cosine": best.get("score"),
            "validation_curve": [(h["step"], round(h["validation_min_cosine"], 6)) for h in run.history if "validation_min_cosine" in h]}


def chunk_means(values: list[float], chunks: int = 10) -> list[float]:
    """Means of ``chunks`` consecutive equal slices: the smoothed curve."""
    return [float(np.mean(part)) for part in np.array_split(np.asarray(values), chunks)]


def dlib_section(args) -> dict:
    teacher = create("dlib_resnet").to(args.device)
    contract = teacher.contract
    from face_photos import face_chips

    chips = torch.from_numpy(contract.preprocess(np.stack(face_chips())))
    reference = embed(teacher, chips)
    start = time.time()
    synthetic = torch.cat(list(synthetic_source(teacher, contract, args.num_synthetic, seed=args.seed)))
    result: dict = {
        "model": "dlib_resnet",
        "held_out_real_chips": len(chips),
        "synthetic_images": len(synthetic),
        "synthesis_seconds": round(time.time() - start, 1),
        "ptq": {},
        "qat": {},
    }
    # QAT starts from the PTQ method with the best min cosine on the synthetic images: no real face decides it.
    best_method = {}
    synthetic_reference = embed(teacher, synthetic)
    for preset in args.presets.split(","):
        result["ptq"][preset] = {}
        for method in METHODS:
            model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(teacher), preset), synthetic, method=method)
            on_synthetic = torch.nn.functional.cosine_similarity(embed(model, synthetic), synthetic_reference).min()
            result["ptq"][preset][method] = {"synthetic_min_cosine": round(float(on_synthetic), 6),
                                             **fidelity(embed(model, chips), reference, contract.threshold)}
        best_method[preset] = max(METHODS, key=lambda m: result["ptq"][preset][m]["synthetic_min_cosine"])
    for preset, minutes in (("w6a6", args.qat_minutes), ("w4a8", args.qat_minutes_low), ("w4a4", args.qat_minutes_low)):
        if minutes <= 0 or preset not in result["ptq"]:
            continue
        init = args.qat_init or best_method[preset]
        student = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(teacher), preset), synthetic, method=init)
        info = qat_for(minutes, student, teacher, synthetic, args.batch_size, args.state_dir / f"dlib_{preset}.safetensors",
                       args.device, seed=args.seed, kd_loss=args.kd_loss, validation_images=args.validation_images)
        result["qat"][preset] = {"init": init, **info,
                                 **fidelity(embed(student, chips), reference, contract.threshold)}
    result["targets"] = {
        "w8a8_ptq_min_cosine": max((v["min_cosine"] for v in result["ptq"].get("w8a8", {}).values()), default=None),
        "w6a6_qat_min_cosine": result["qat"].get("w6a6", {}).get("min_cosine"),
        "w8a8_decision_flips": min((v["decision_flips"] for v in result["ptq"].get("w8a8", {}).values()), default=None),
        "w6a6_qat_decision_flips": result["qat"].get("w6a6", {}).get("decision_flips"),
    }
    return result


def mobilefacenet_section(args) -> dict:
    """W4A4 QAT KD-loss curve on a random-weight MobileFaceNet (no pretrained weights ship)."""
    torch.manual_seed(args.seed)
    teacher = create("mobilefacenet")
    synthetic = torch.cat(list(synthetic_source(teacher, teacher.contract, args.num_synthetic, seed=args.seed)))
    # Give the random BatchNorms data-dependent statistics with a few momentum updates. (Exact
    # statistics make this random network chaotic: W4A4 then keeps cosine ~0.06 and nothing trains.)
    with torch.no_grad():
        teacher.train()
        for batch in synthetic.split(args.batch_size)[:3]:
            teacher(batch)
        teacher.eval()
    student = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(teacher), "w4a4"), synthetic)
    run = QATRun(student, teacher, synthetic, QATSettings(steps=args.mfn_steps, batch_size=args.batch_size, freeze_bn=True,
                                                          checkpoint_every=10**6, seed=args.seed), args.state_dir / "mfn.safetensors")
    start = time.time()
    run.run(progress=False)
    losses = [h["loss"] for h in run.history]
    curve = chunk_means(losses)
    return {
        "model": "mobilefacenet (seeded random weights, BN statistics warmed on 3 synthetic batches)",
        "preset": "w4a4",
        "steps": run.step,
        "seconds_per_step": round((time.time() - start) / max(1, run.step), 3),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_means_per_10pct_of_steps": [round(v, 8) for v in curve],
        "smoothed_loss_falls_monotonically": all(b < a for a, b in zip(curve, curve[1:])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-synthetic", type=int, default=64)
    parser.add_argument("--qat-minutes", type=float, default=20.0, help="W6A6 QAT budget for dlib_resnet")
    parser.add_argument("--qat-minutes-low", type=float, default=3.0, help="W4A8 and W4A4 QAT budget each")
    parser.add_argument("--mfn-steps", type=int, default=200)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to calibrate (and train)")
    parser.add_argument("--kd-loss", default="auto", choices=KD_LOSS_CHOICES, help="QAT distillation loss (auto: raw for dlib)")
    parser.add_argument("--qat-init", choices=METHODS, help="PTQ method QAT starts from (default: best min cosine on the synthetic images)")
    parser.add_argument("--validation-images", type=int, default=32,
                        help="synthetic images held out of QAT to pick its best step (0: keep the last step)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, default=Path(".cache/bench-state"))
    parser.add_argument("--sections", default="dlib_resnet,mobilefacenet_kd", help="comma-separated subset to run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    sections = {"dlib_resnet": dlib_section, "mobilefacenet_kd": mobilefacenet_section}
    report = {"benchmark": "fidelity", "torch_threads": torch.get_num_threads(), "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    for name in args.sections.split(","):
        report[name] = sections[name](args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
