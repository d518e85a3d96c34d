"""Which layers to keep at 8 bit so a quantized model meets a cosine budget.

Greedy by sensitivity: layers are promoted to W8A8 in order of lowest ``output_sqnr_db`` (the
embedding's SQNR with only that layer quantized) until the minimum cosine to the float model over
the given images reaches the budget, then each promoted layer is dropped again if the budget still
holds without it. Every candidate is verified by actually re-quantizing (:func:`requantize`: the
quantized model's weights and activation ranges, only bit widths change) and, given calibration
data, recalibrating it with the quantized model's range method -- what ``qfsdk calibrate --config``
does with that data. Without data the ranges stay those of the low bit widths: right for ``minmax``
and ``percentile`` up to the small shift that quantized upstream weights cause; for ``mse``, whose
ranges depend on the bit width, raised layers stay clipped and the gain is underestimated. The
result is a ``QuantConfig`` with ``LayerOverride(name, 8, 8)`` entries, which ``qfsdk calibrate
--config`` accepts as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from qfsdk.models.card import card_of
from qfsdk.quant import LayerOverride, QuantConfig, calibrate
from qfsdk.quant.api import quant_config_of
from qfsdk.quant.requantize import requantize

from .sensitivity import LayerSensitivity


@dataclass
class Recommendation:
    """The layers to keep at 8 bit, the resulting config and the measured minimum cosines."""

    budget: float
    keep_8bit: list[str]
    config: QuantConfig
    min_cosine_before: float
    min_cosine_after: float
    evaluations: int
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.min_cosine_after >= self.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "met": self.met,
            "keep_8bit": self.keep_8bit,
            "min_cosine_before": self.min_cosine_before,
            "min_cosine_after": self.min_cosine_after,
            "evaluations": self.evaluations,
            "trace": self.trace,
            "config": self.config.to_dict(),
        }


class _Verifier:
    """Re-quantizes (and recalibrates) the float model with extra 8-bit layers; measures the minimum cosine."""

    def __init__(self, float_model: nn.Module, quant_model: nn.Module, images: torch.Tensor, calibration: object | None):
        self.float_model = float_model
        self.quant_model = quant_model
        self.calibration = calibration
        self.base = quant_config_of(quant_model)
        self.method = (card_of(quant_model).calibration or {}).get("method", self.base.observer)
        self.images = images
        with torch.no_grad():
            self.reference = float_model.eval()(images)
        self.evaluations = 0

    def config(self, keep: Sequence[str]) -> QuantConfig:
        return self.base.with_overrides(*(LayerOverride(name, 8, 8) for name in keep))

    def min_cosine(self, keep: Sequence[str]) -> float:
        model = requantize(self.float_model, self.quant_model, self.config(keep))
        if self.calibration is not None:
            calibrate(model, self.calibration, self.method)
        self.evaluations += 1
        with torch.no_grad():
            output = model(self.images)
        return float(torch.nn.functional.cosine_similarity(output, self.reference).min())


def recommend_mixed_precision(
    float_model: nn.Module,
    quant_model: nn.Module,
    images: torch.Tensor,
    sensitivities: Sequence[LayerSensitivity],
    budget: float,
    calibration: object | None = None,
) -> Recommendation:
    """Layers to keep at W8A8 for a minimum cosine of ``budget`` on ``images`` (preprocessed batch);
    ``calibration``: the data (any calibration source) to recalibrate each candidate on."""
    verifier = _Verifier(float_model, quant_model, images, calibration)
    candidates = [s.name for s in sorted(sensitivities, key=lambda s: s.output_sqnr_db) if min(s.weight_bits, s.act_bits) < 8]
    before = current = verifier.min_cosine([])
    keep: list[str] = []
    trace: list[dict[str, Any]] = []
    for name in candidates:
        if current >= budget:
            break
        keep.append(name)
        current = verifier.min_cosine(keep)
        trace.append({"step": "add", "layer": name, "min_cosine": current})
    if current >= budget:
        for name in reversed(keep[:-1]):
            trial = [n for n in keep if n != name]
            cosine = verifier.min_cosine(trial)
            if cosine >= budget:
                keep, current = trial, cosine
                trace.append({"step": "drop", "layer": name, "min_cosine": cosine})
    return Recommendation(budget, keep, verifier.config(keep), before, current, verifier.evaluations, trace)
