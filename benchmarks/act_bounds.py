"""How far static per-tensor activation grids can go on the real models: oracle bounds under the PTQ results.

    python benchmarks/act_bounds.py                                    # fr_feature and SFace, W8A8 and W6A6
    python benchmarks/act_bounds.py --models dlib_resnet --bits w8a8 --acts symmetric asymmetric
    python benchmarks/act_bounds.py --bits w6a6 --recipe ends_8bit,equalize,ranges,bias_correction  # faster start
    python benchmarks/act_bounds.py --models fr_feature --bits w8a8 --score-sets B  # the second crop set only

Prints one JSON document. Per model, bits and activation form, the quantized model is made as
``benchmarks/ptq_recipes.py`` makes it (the same 64 synthetic images from its cache, percentile
ranges, ``--recipe`` or ``qfsdk calibrate``'s default recipe at those bits), then scored on the same
real faces, one row per scoring set (``score_set``: each of ``--score-sets``, ``chips`` for
dlib_resnet; min / mean cosine vs the float model, PyTorch) in these states:

* ``synthetic``: as calibrated, no real face seen (what ``qfsdk calibrate`` gives);
* ``weights_only`` / ``acts_only``: the activations / the weights left in float (what each half costs);
* ``oracle_minmax``: every activation range set to the min/max that the scored faces themselves reach;
* ``oracle_learned``: every activation range learned on the scored faces themselves (one gain per
  quantizer, the LSQ gradient, Adam, ``--steps`` steps on a loss that weights the worst face; the best
  state seen), the weights as calibrated.

The oracle rows calibrate on the very faces they are scored on, never a recipe. Ranges fitted to
the scored faces are as favourable as calibration gets, so ``oracle_learned`` is a ceiling in
practice for static per-tensor activation ranges with these weights (found by a gradient search, not
proven). A target above it needs another structure (8-bit activations, layers in float, or training),
not better calibration data.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import qfsdk  # noqa: E402
from ptq_recipes import ROOT, SCORE_SETS, float_model, scoring_faces, synthetic_images  # noqa: E402
from qfsdk.calib.sources import open_source  # noqa: E402
from qfsdk.quant.algorithms import act_quantizers, recipe_text, weight_quantizers  # noqa: E402
from qfsdk.quant.config import preset  # noqa: E402
from qfsdk.quant.reconstruction import LearnedRange  # noqa: E402

WORST_FACE_WEIGHT = 4.0  # the loss: mean cosine error + this x a soft maximum of the per-face errors
SOFTMAX_SHARPNESS = 200.0
EVALUATE_EVERY = 10


def cosines(model: torch.nn.Module, faces: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(model(faces), reference)


def summary(values: torch.Tensor) -> dict:
    return {"min_cosine": round(float(values.min()), 5), "mean_cosine": round(float(values.mean()), 5)}


def scored(model: torch.nn.Module, faces: torch.Tensor, reference: torch.Tensor) -> dict:
    with torch.no_grad():
        return summary(cosines(model, faces, reference))


@contextlib.contextmanager
def bypassing(quantizers: list) -> Iterator[None]:
    """Only these quantizers pass their values through unchanged (``qfsdk.quant.modules.bypassed`` does all)."""
    for quantizer in quantizers:
        quantizer.bypass = True
    try:
        yield
    finally:
        for quantizer in quantizers:
            quantizer.bypass = False


def with_bypassed(quantizers: list, model: torch.nn.Module, faces: torch.Tensor, reference: torch.Tensor) -> dict:
    with bypassing(quantizers):
        return scored(model, faces, reference)


def observed_ranges(model: torch.nn.Module, quantizers: list, faces: torch.Tensor) -> dict:
    """{quantizer: (min, max)} of each activation quantizer's input on ``faces`` (the float values it sees)."""
    seen = {}

    def record(module, args, _output):
        seen[module] = (float(args[0].min()), float(args[0].max()))

    hooks = [quantizer.register_forward_hook(record) for quantizer in quantizers]
    try:
        with bypassing(quantizers), torch.no_grad():
            model(faces)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def learned_on_faces(model: torch.nn.Module, quantizers: list, faces: torch.Tensor, reference: torch.Tensor,
                     steps: int, learning_rate: float) -> dict:
    """Fit one range gain per activation quantizer to ``faces``; the best minimum cosine seen, and its step."""
    learned = [LearnedRange(quantizer) for quantizer in quantizers]
    gradient_modes = [quantizer.clipped_gradient for quantizer in quantizers]
    for quantizer in quantizers:
        quantizer.clipped_gradient = True  # the asymmetric form's gradient reaches its range only this way
    optimizer = torch.optim.Adam([r.gain for r in learned], lr=learning_rate)
    best = {"min_cosine": -1.0}
    try:
        for step in range(steps + 1):
            for learned_range in learned:
                learned_range.apply()
            values = cosines(model, faces, reference)
            if step % EVALUATE_EVERY == 0 and float(values.detach().min()) > best["min_cosine"]:
                best = {**summary(values.detach()), "step": step}
            errors = 1 - values
            loss = errors.mean() + WORST_FACE_WEIGHT * torch.logsumexp(errors * SOFTMAX_SHARPNESS, 0) / SOFTMAX_SHARPNESS
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        for learned_range, mode in zip(learned, gradient_modes):
            learned_range.finish()
            learned_range.quantizer.clipped_gradient = mode
    return best


def bounds(model: torch.nn.Module, data, faces: torch.Tensor, reference: torch.Tensor, bits: str, acts: str,
           recipe: str | None, steps: int, learning_rate: float) -> dict:
    config = preset(bits, asymmetric_acts=acts == "asymmetric")
    ptq = qfsdk.Recipe.create(config, steps=recipe or None)
    quantized = qfsdk.quantize(copy.deepcopy(model), ptq, data)
    for parameter in quantized.parameters():
        parameter.requires_grad_(False)
    activations = [quantizer for _, quantizer in act_quantizers(quantized)]
    weights = [quantizer for _, quantizer in weight_quantizers(quantized)]
    row = {"bits": bits, "acts": acts, "recipe": recipe_text(ptq.steps), "synthetic": scored(quantized, faces, reference),
           "weights_only": with_bypassed(activations, quantized, faces, reference),
           "acts_only": with_bypassed(weights, quantized, faces, reference)}
    calibrated = [(q.x_min.clone(), q.x_max.clone()) for q in activations]
    for quantizer, (low, high) in observed_ranges(quantized, activations, faces).items():
        quantizer.set_range(low, high)
    row["oracle_minmax"] = scored(quantized, faces, reference)
    for quantizer, (low, high) in zip(activations, calibrated):
        quantizer.set_range(float(low), float(high))
    row["oracle_learned"] = learned_on_faces(quantized, activations, faces, reference, steps, learning_rate)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fr_feature", "sface"], choices=("dlib_resnet", "sface", "fr_feature"))
    parser.add_argument("--bits", nargs="+", default=["w8a8", "w6a6"])
    parser.add_argument("--acts", nargs="+", default=["symmetric"], choices=("symmetric", "asymmetric"))
    parser.add_argument("--score-sets", nargs="+", default=list(SCORE_SETS), choices=SCORE_SETS,
                        help="real crop sets SFace and fr_feature are scored on (tests/crop_sets.py)")
    parser.add_argument("--recipe", default=None, help="a `qfsdk calibrate --recipe` value (default: calibrate's default at each bits)")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of oracle_learned")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate on the range gains")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "ptq-recipes", help="imports and synthetic images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "models": {}}
    for name in args.models:
        model = float_model(name, args.work)
        source = name if name == "dlib_resnet" else str(args.work / f"{name}_float.onnx")
        data, _ = open_source(synthetic_images(source, args.work / f"{name}_synthetic"), model)
        rows = []
        for score_set, faces in scoring_faces(name, model, args.score_sets).items():
            with torch.no_grad():
                reference = model(faces)
            rows += [{"score_set": score_set, **bounds(model, data, faces, reference, bits, acts, args.recipe, args.steps, args.lr)}
                     for acts in args.acts for bits in args.bits]
        result["models"][name] = rows
        print(json.dumps({name: rows}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
