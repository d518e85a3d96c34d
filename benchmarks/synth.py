"""Synthetic calibration data: speed, W8A8 quality vs real faces, and pictures to look at.

    .venv/bin/python benchmarks/synth.py [--out DIR] [--quick] [--threads N]

Prints one JSON document. For ``mobilefacenet`` and ``dlib_resnet`` and every synthesis method
each supports: generation speed (images/s on this CPU, default settings) and the W8A8 error
(mean 1 - cosine vs float over held-out real face chips; qfsdk.quant, the preset's observer)
when calibrated on synthetic images vs on the same number of real chips. For dlib_resnet also
the time/quality curve over --iterations and --num-images, and the check of the assumption
behind affine-inversion (real faces give ~N(0, 1) affine outputs). Writes, under --out, a grid
of generated images (``synth_grid.png``) and the per-layer activation ranges of synthetic vs
real images (``activation_ranges.png``).

Real faces: the dlib-aligned chips of tests/face_photos.py (12 faces; the first 6 and their
mirror images calibrate, the other 6 and their mirror images are held out). mobilefacenet has
no pretrained weights here: it runs with seeded random weights whose BatchNorm statistics are
re-estimated on all real chips, standing in for a trained model (its BN statistics describe
faces, which is what bn-inversion relies on); its random filters make its synthetic images
look like noise in the grid (structure needs trained weights), while dlib_resnet's show faces.
Needs the `dev` extra (matplotlib). ``--threads 1`` gives steadier timings on a shared CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from face_photos import face_chips  # noqa: E402

from qfsdk.calib.data import TensorBatches  # noqa: E402
from qfsdk.calib.inversion import InversionSettings, supported_methods  # noqa: E402
from qfsdk.calib.synth import DEFAULT_BATCH_SIZE, DEFAULT_COUNT, synthetic_source  # noqa: E402
from qfsdk.models import create, get_spec  # noqa: E402
from qfsdk.models.dlib_resnet import Affine  # noqa: E402
from qfsdk.quant import calibrate, quantize  # noqa: E402

MODELS = ("mobilefacenet", "dlib_resnet")
CALIBRATION_CHIPS = 6  # the rest are held out
SEED = 0
CURVE_ITERATIONS = (10, 25, 50)  # plus the default (100), taken from the default-count run
CURVE_COUNTS = (16, 32, 64)
GRID_IMAGES = 8


def real_images(contract, chips: list[np.ndarray]) -> torch.Tensor:
    """Real chips (and their mirror images) in ``contract``, resized when the model is not 150x150."""
    height, width = contract.input_size
    resized = [np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.BICUBIC)) for c in chips]
    x = torch.from_numpy(contract.preprocess(np.stack(resized)))
    return torch.cat([x, x.flip(3)])


def load_model(name: str, faces: torch.Tensor) -> nn.Module:
    """dlib_resnet pretrained; mobilefacenet seeded random with BN statistics re-estimated on ``faces``."""
    if name == "dlib_resnet":
        return create(name)
    torch.manual_seed(SEED)
    model = create(name)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the pass
    with torch.no_grad():
        model.train()(faces)
    return model.eval()


def w8a8_error(model: nn.Module, calibration: torch.Tensor, held_out: torch.Tensor) -> dict[str, float]:
    """Mean 1 - cosine and min cosine (quantized vs float) on ``held_out`` after calibrating on ``calibration``."""
    quantized = calibrate(quantize(copy.deepcopy(model), "w8a8"), TensorBatches(calibration, 16))
    with torch.no_grad():
        cosine = F.cosine_similarity(quantized(held_out), model(held_out))
    return {"error": float((1 - cosine).mean()), "min_cosine": float(cosine.min())}


def activation_ranges(model: nn.Module, images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) of the input of every conv/linear layer over ``images``."""
    ranges: dict[str, tuple[float, float]] = {}

    def record(name):
        def hook(module, inputs):
            ranges[name] = (float(inputs[0].min()), float(inputs[0].max()))

        return hook

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return ranges


def range_ratio_summary(synthetic: dict, real: dict) -> dict[str, float]:
    """Synthetic/real ratio of each layer's largest |activation| (the proxy metric)."""
    ratios = [max(map(abs, synthetic[k])) / max(max(map(abs, real[k])), 1e-12) for k in real]
    return {"median": float(np.median(ratios)), "min": float(min(ratios)), "max": float(max(ratios))}


def generate(model, method: str, count: int, iterations: int | None = None) -> tuple[torch.Tensor, float]:
    """``count`` synthetic images with default settings (``iterations`` overridden) and the seconds taken."""
    settings = InversionSettings() if iterations is None else InversionSettings(iterations=iterations)
    start = time.perf_counter()
    source = synthetic_source(model, model.contract, count, method, SEED, DEFAULT_BATCH_SIZE, settings=settings)
    images = torch.cat(list(source))
    return images, time.perf_counter() - start


def affine_statistics(model: nn.Module, faces: torch.Tensor) -> dict[str, float]:
    """How close real faces bring dlib's affine outputs to N(0, 1) per channel (affine-inversion's target)."""
    means, stds = [], []

    def hook(module, inputs, output):
        means.append(output.mean((0, 2, 3)))
        stds.append(output.std((0, 2, 3)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Affine)]
    with torch.no_grad():
        model(faces)
    for handle in handles:
        handle.remove()
    mean, std = torch.cat(means), torch.cat(stds)
    return {
        "channel_mean_abs_mean": float(mean.abs().mean()),
        "channel_std_mean": float(std.mean()),
        "channel_std_spread": float(std.std()),
        "layers": len(means),
    }


def to_pixels(images: torch.Tensor, contract) -> np.ndarray:
    mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
    std = torch.tensor(contract.std).view(1, 3, 1, 1)
    return (images * std + mean).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(rows: dict[str, tuple[torch.Tensor, object]], path: Path, size: int = 112) -> None:
    """One row of images per (label -> (images, contract)), resized to a common height."""
    lines = []
    for images, contract in rows.values():
        pixels = to_pixels(images[:GRID_IMAGES], contract)
        tiles = [np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BICUBIC)) for p in pixels]
        lines.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(lines, axis=0)).save(path)


def plot_ranges(plots: dict[str, dict[str, dict]], path: Path) -> None:
    """Per-layer min/max of activations, real vs each synthetic set, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(plots), 1, figsize=(12, 4 * len(plots)), squeeze=False)
    for axis, (model_name, sets) in zip(axes[:, 0], plots.items()):
        for label, ranges in sets.items():
            layers = list(ranges)
            x = np.arange(len(layers))
            lows, highs = zip(*(ranges[k] for k in layers))
            style = {"color": "black", "linewidth": 2} if label == "real" else {"alpha": 0.8}
            line = axis.plot(x, highs, label=f"{label} max", **style)[0]
            axis.plot(x, lows, linestyle="--", color=line.get_color(), label=f"{label} min")
        axis.set_title(f"{model_name}: activation range at each conv/linear input")
        axis.set_xlabel("layer (network order)")
        axis.set_ylabel("activation value")
        axis.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_model(name: str, chips: list[np.ndarray], quick: bool, grid: dict, plots: dict) -> dict:
    """Speed and quality of every supported method for one model."""
    contract = get_spec(name).contract
    faces = real_images(contract, chips)
    half = len(faces) // 2
    calibration = torch.cat([faces[:CALIBRATION_CHIPS], faces[half : half + CALIBRATION_CHIPS]])
    held_out = torch.cat([faces[CALIBRATION_CHIPS:half], faces[half + CALIBRATION_CHIPS :]])
    model = load_model(name, faces)
    real = w8a8_error(model, calibration, held_out)
    noise_images = torch.randn(calibration.shape, generator=torch.Generator().manual_seed(SEED)) * 0.5
    noise = w8a8_error(model, noise_images, held_out)
    report = {
        "real_faces": {"calibration": len(calibration), "held_out": len(held_out)},
        "real_calibrated": real,
        "gaussian_noise_calibrated": {**noise, "ratio_to_real": noise["error"] / real["error"]},
        "auto_picks": supported_methods(model)[0],
        "methods": {},
    }
    plots[name] = {"real": activation_ranges(model, calibration)}
    for method in supported_methods(model):
        full_run = name == "dlib_resnet" and method == report["auto_picks"] and not quick
        count = DEFAULT_COUNT if full_run else DEFAULT_BATCH_SIZE  # one batch, except dlib's default run
        images, seconds = generate(model, method, count)
        report["methods"][method] = evaluate_method(model, images, seconds, calibration, held_out, real, plots[name])
        plots[name][method] = activation_ranges(model, images[: len(calibration)])
        grid[f"{name} {method}"] = (images, contract)
        if full_run:
            report["count_curve"] = count_curve(model, images, held_out, real["error"])
            report["iteration_curve"] = iteration_curve(model, method, images, seconds, held_out, real["error"])
    same_n = f"w8a8_same_n_{len(calibration)}"
    report["best_measured"] = min(report["methods"], key=lambda m: report["methods"][m][same_n]["error"])
    if name == "dlib_resnet":
        report["affine_outputs_on_real_faces"] = affine_statistics(model, faces)
    grid[f"{name} real"] = (faces, contract)
    return report


def evaluate_method(model, images: torch.Tensor, seconds: float, calibration: torch.Tensor, held_out: torch.Tensor,
                    real: dict, ranges: dict) -> dict:  # fmt: skip
    """Speed, W8A8 error (on as many synthetic images as real ones, and on all) and range ratios."""
    n = len(calibration)
    same_n = w8a8_error(model, images[:n], held_out)
    all_images = w8a8_error(model, images, held_out)
    return {
        "images": len(images),
        "seconds": round(seconds, 1),
        "images_per_s": round(len(images) / seconds, 3),
        "iterations": InversionSettings().iterations,
        f"w8a8_same_n_{n}": {**same_n, "ratio_to_real": same_n["error"] / real["error"]},
        f"w8a8_all_{len(images)}": {**all_images, "ratio_to_real": all_images["error"] / real["error"]},
        "activation_range_ratio": range_ratio_summary(activation_ranges(model, images[:n]), ranges["real"]),
    }


def count_curve(model, images: torch.Tensor, held_out: torch.Tensor, real_error: float) -> list[dict]:
    """W8A8 error against the number of synthetic calibration images (default iterations)."""
    rows = []
    for count in CURVE_COUNTS:
        result = w8a8_error(model, images[:count], held_out)
        rows.append({"images": count, **result, "ratio_to_real": result["error"] / real_error})
    return rows


def iteration_curve(model, method: str, default_run: torch.Tensor, default_seconds: float, held_out: torch.Tensor,
                    real_error: float) -> list[dict]:  # fmt: skip
    """Generation time and W8A8 error against --iterations, for one batch of images.

    The default-iterations point is the first batch of the default run (same seed, same images).
    """
    rows = []
    for iterations in CURVE_ITERATIONS:
        images, seconds = generate(model, method, DEFAULT_BATCH_SIZE, iterations)
        rows.append({"iterations": iterations, "seconds": round(seconds, 1), **w8a8_error(model, images, held_out)})
    default = w8a8_error(model, default_run[:DEFAULT_BATCH_SIZE], held_out)
    batch_share = DEFAULT_BATCH_SIZE / len(default_run)
    rows.append({"iterations": InversionSettings().iterations, "seconds": round(default_seconds * batch_share, 1),
                 **default})  # fmt: skip
    return [{**row, "images": DEFAULT_BATCH_SIZE, "ratio_to_real": row["error"] / real_error} for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".cache" / "benchmarks" / "synth")
    parser.add_argument("--quick", action="store_true", help="One batch per method, no curves.")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    chips = face_chips()
    grid: dict = {}
    plots: dict = {}
    started = time.perf_counter()
    results = {name: evaluate_model(name, chips, args.quick, grid, plots) for name in MODELS}
    save_grid(grid, args.out / "synth_grid.png")
    plot_ranges(plots, args.out / "activation_ranges.png")
    report = {
        "cpu_threads": torch.get_num_threads(),
        "defaults": {"count": DEFAULT_COUNT, "batch_size": DEFAULT_BATCH_SIZE, **InversionSettings().to_dict()},
        "models": results,
        "grid_png": str(args.out / "synth_grid.png"),
        "grid_rows": list(grid),
        "activation_ranges_png": str(args.out / "activation_ranges.png"),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
