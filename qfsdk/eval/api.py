"""The two evaluations ``qfsdk eval`` runs: verification benchmarks and a fidelity report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from qfsdk._version import __version__
from qfsdk.errors import QfsdkError

from .binset import read_bin
from .fidelity import compare_embeddings, load_crops
from .ijb import evaluate_ijb, read_ijb
from .models import DEFAULT_BATCH_SIZE, LoadedModel
from .verification import evaluate_bin

SENSITIVITY_BATCHES = 2
SENSITIVITY_NOTE = (
    "per-layer sensitivity and mixed precision need FLOAT as a PyTorch model (zoo name or NAME=PATH) "
    "and QUANT as a qfsdk quantized checkpoint"
)

MSE_NOTE = (
    "QUANT was calibrated with the mse observer, whose ranges depend on the bit width: without --calib-data "
    "the candidates are not recalibrated and layers raised to 8 bit keep their low-bit ranges, so the "
    "recommendation may keep more layers than needed"
)


def _describe(models: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    return [{"label": m.label, "kind": m.kind, "contract": m.contract.to_dict()} for m in models]


def evaluate(
    models: Sequence[LoadedModel],
    bins: Sequence[str | Path] = (),
    ijbs: Sequence[str | Path] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict[str, Any]:
    """Every model on every ``.bin`` set and IJB folder; ``results[set][model label]`` holds the metrics."""
    if not bins and not ijbs:
        raise QfsdkError("nothing to evaluate on: give at least one .bin set or IJB folder")
    results: dict[str, dict[str, Any]] = {}
    for path in bins:
        binset = read_bin(path)
        results[binset.name] = {m.label: evaluate_bin(m, binset, batch_size, progress) for m in models}
    for root in ijbs:
        protocol = read_ijb(root)
        results[protocol.name] = {m.label: evaluate_ijb(m, protocol, batch_size, progress) for m in models}
    return {"qfsdk_version": __version__, "models": _describe(models), "results": results, "notes": []}


def fidelity_report(
    float_model: LoadedModel,
    quant_model: LoadedModel,
    images: str | Path,
    budget: float = 0.99,
    threshold: float | None = None,
    sensitivity_batches: int = SENSITIVITY_BATCHES,
    calibration: object | None = None,
) -> dict[str, Any]:
    """Cosine and decision flips on the face crops in ``images``; for PyTorch models also per-layer
    SQNR (on the first ``sensitivity_batches`` batches) and a verified mixed-precision recommendation
    (``calibration``: data to recalibrate each candidate config on, see :mod:`.mixed_precision`)."""
    contract = float_model.contract
    if quant_model.contract.input_size != contract.input_size:
        raise QfsdkError(f"FLOAT takes {contract.input_size} crops, QUANT {quant_model.contract.input_size}: not the same model")
    names, crops = load_crops(images, contract.input_size)
    fidelity = compare_embeddings(float_model.embed(crops), quant_model.embed(crops), contract, names, threshold)
    notes = [fidelity.pop("note")] if "note" in fidelity else []
    report: dict[str, Any] = {
        "qfsdk_version": __version__,
        "models": _describe([float_model, quant_model]),
        "fidelity": {"float": float_model.label, "quantized": quant_model.label, **fidelity},
        "notes": notes,
    }
    if float_model.module is None or getattr(quant_model.module, "quant_config", None) is None:
        report["notes"].append(SENSITIVITY_NOTE)
        return report
    import torch

    from qfsdk.eval.mixed_precision import recommend_mixed_precision
    from .sensitivity import layer_sensitivity

    inputs = torch.from_numpy(contract.preprocess(crops))
    batch_size = quant_model.embedder.batch_size
    sensitivity = layer_sensitivity(float_model.module, quant_model.module, inputs.split(batch_size)[:sensitivity_batches])
    recommendation = recommend_mixed_precision(float_model.module, quant_model.module, inputs, sensitivity, budget, calibration)
    if calibration is None and (quant_model.module.calibration or {}).get("method") == "mse":
        report["notes"].append(MSE_NOTE)
    report["sensitivity"] = [s.to_dict() for s in sensitivity]
    report["recommendation"] = recommendation.to_dict()
    return report
