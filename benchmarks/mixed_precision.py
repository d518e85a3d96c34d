"""Mixed precision for a cosine budget on dlib_resnet, calibrated only on synthetic data.

1. PTQ of the pretrained dlib_resnet at a low-bit preset, calibrated on synthetic images only;
2. per-layer sensitivity and the recommended 8-bit layers for the budget (``qfsdk.eval``), chosen
   on the held-out real face chips (tests/face_photos.py), as ``qfsdk eval --fidelity`` does;
3. applied as ``qfsdk calibrate --config`` would: the float model quantized with the recommended
   config and calibrated afresh on the same synthetic images; then exported to ONNX Q/DQ and run
   with ONNX Runtime. Minimum cosine to the float model on the real chips at every stage;
4. an honest split: the recommendation chosen on half of the chips, measured on the other half.

Prints one JSON document; ``--out FILE`` also writes it.

    python benchmarks/mixed_precision.py        # W6A6, budget 0.995: ~30 s on 2 cores (first run: +4-8 min synthesis)
    python benchmarks/mixed_precision.py --preset w4a4 --budget 0.98
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import qfsdk  # noqa: E402
from qfsdk.calib.synth import load_synthetic_dir, synthesize  # noqa: E402
from qfsdk.eval.fidelity import compare_embeddings  # noqa: E402
from qfsdk.eval.mixed_precision import Recommendation, recommend_mixed_precision  # noqa: E402
from qfsdk.eval.sensitivity import LayerSensitivity, layer_sensitivity  # noqa: E402
from qfsdk.models import create  # noqa: E402


def fidelity(reference: np.ndarray, output: np.ndarray, contract, budget: float) -> dict:
    """Min/mean cosine and decision flips of ``output`` vs the float embeddings."""
    names = [str(i) for i in range(len(reference))]
    result = compare_embeddings(reference, output, contract, names)
    return {
        "min_cosine": round(result["min_cosine"], 6),
        "mean_cosine": round(result["mean_cosine"], 6),
        "decision_flips": result["decision_flips"],
        "pairs": result["pairs"],
        "budget_met": result["min_cosine"] >= budget,
    }


def embed(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(images).numpy()


def exported_section(model: torch.nn.Module, crops: np.ndarray, reference: np.ndarray, budget: float) -> dict:
    """Export to ONNX Q/DQ (onnxruntime target) and measure with the runtime Embedder on ONNX Runtime."""
    try:
        from qfsdk.converters.qdq_export import export_quantized
        from qfsdk.runtime import Embedder
    except ImportError as exc:
        return {"skipped": f"export or runtime not available: {exc}"}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_quantized(model, Path(tmp) / "mixed.onnx", target="onnxruntime")
        with Embedder(path, backend="onnxruntime") as embedder:
            output = embedder.embed(crops)
            backend = embedder.backend_name
    return {"target": "onnxruntime", "backend": backend, **fidelity(reference, output, model.contract, budget)}


def recommend(float_model, quantized, images: torch.Tensor, budget: float, batch_size: int, synthetic: torch.Tensor
              ) -> tuple[list[LayerSensitivity], Recommendation, float]:
    """Per-layer sensitivity on ``images``, the recommendation for ``budget`` (candidates recalibrated on
    ``synthetic``, as `qfsdk eval --fidelity --calib-data` does) and the seconds both took."""
    start = time.time()
    sensitivity = layer_sensitivity(float_model, quantized, images.split(batch_size))
    recommendation = recommend_mixed_precision(float_model, quantized, images, sensitivity, budget, synthetic)
    return sensitivity, recommendation, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="w6a6")
    parser.add_argument("--method", default="mse", help="PTQ range observer (mse is best for W6A6 in benchmarks/fidelity.py)")
    parser.add_argument("--budget", type=float, default=0.995)
    parser.add_argument("--num-synthetic", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path(".cache/benchmarks/mixed_precision"),
                        help="where the synthetic images are kept between runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from face_photos import face_chips

    float_model = create("dlib_resnet")
    contract = float_model.contract
    crops = np.stack(face_chips())
    chips = torch.from_numpy(contract.preprocess(crops))
    reference = embed(float_model, chips)

    start = time.time()
    directory = args.cache / f"synthetic-dlib_resnet-{args.num_synthetic}-seed{args.seed}"
    synthesize("dlib_resnet", directory, args.num_synthetic, seed=args.seed, progress=False)  # resumes / reuses
    synthetic = torch.cat(list(load_synthetic_dir(directory, contract)))
    synthesis_seconds = time.time() - start

    def ptq(config) -> torch.nn.Module:
        return qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), config), synthetic, method=args.method)

    quantized = ptq(args.preset)
    sensitivity, recommendation, seconds = recommend(float_model, quantized, chips, args.budget, args.batch_size, synthetic)
    applied = ptq(recommendation.config)

    # Honest split: choose on the even chips, measure on the odd ones.
    even, odd = chips[0::2], chips[1::2]
    _, split, _ = recommend(float_model, quantized, even, args.budget, args.batch_size, synthetic)
    split_applied = ptq(split.config)

    total = len(sensitivity)
    report = {
        "benchmark": "mixed_precision",
        "model": "dlib_resnet (pretrained)",
        "preset": args.preset,
        "method": args.method,
        "budget_min_cosine": args.budget,
        "torch_threads": torch.get_num_threads(),
        "synthetic_images": len(synthetic),
        "synthesis_or_cache_seconds": round(synthesis_seconds, 1),
        "held_out_real_chips": len(chips),
        "ptq": fidelity(reference, embed(quantized, chips), contract, args.budget),
        "most_sensitive_layers": [
            {"layer": s.name, "output_sqnr_db": round(s.output_sqnr_db, 2), "local_sqnr_db": round(s.local_sqnr_db, 2)}
            for s in sorted(sensitivity, key=lambda s: s.output_sqnr_db)[:8]
        ],
        "recommendation": {
            "keep_8bit": recommendation.keep_8bit,
            "layers_at_8bit": f"{len(recommendation.keep_8bit)} of {total}",
            "evaluations": recommendation.evaluations,
            "seconds": round(seconds, 1),
            "min_cosine_before": round(recommendation.min_cosine_before, 6),
            "min_cosine_verified": round(recommendation.min_cosine_after, 6),
            "met_when_verified": recommendation.met,
        },
        "applied_recalibrated": fidelity(reference, embed(applied, chips), contract, args.budget),
        "exported": exported_section(applied, crops, reference, args.budget),
        "split": {
            "chosen_on_chips": len(even),
            "keep_8bit": split.keep_8bit,
            "min_cosine_chosen_on": round(split.min_cosine_after, 6),
            "held_out": fidelity(reference[1::2], embed(split_applied, odd), contract, args.budget),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
