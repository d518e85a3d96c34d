"""Activation range observers for post-training calibration.

``minmax`` keeps the global min/max; ``percentile`` and ``mse`` build a histogram of |x| that
grows by powers of two (so re-binning is exact) and choose the clipping range from it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from qfsdk.errors import ConfigError

HISTOGRAM_BINS = 2048
MSE_CANDIDATES = 128


class MinMaxObserver:
    """Global min and max of everything seen (0 always inside, as in QuantFace)."""

    def __init__(self) -> None:
        self.min = 0.0
        self.max = 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def min_max(self) -> tuple[float, float]:
        return self.min, self.max

    def amax(self, unsigned: bool = False) -> float:
        """The clipping bound for a zero-point-0 grid (``unsigned``: levels [0, 2^b - 1])."""
        return max(abs(self.min), abs(self.max))


class HistogramObserver(MinMaxObserver):
    """Histogram of |x| over [0, edge]; the edge doubles as needed and bins merge exactly."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.edge = 0.0
        self.hist = torch.zeros(bins, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        values = x.detach().abs().flatten().float()
        top = float(values.max()) if values.numel() else 0.0
        if top <= 0:
            self.hist[0] += values.numel()
            return
        if self.edge == 0.0:
            self.edge = top
        while top > self.edge:
            self._double()
        self.hist += torch.histc(values, self.bins, 0.0, self.edge).double().cpu()

    def _double(self) -> None:
        merged = self.hist.view(-1, 2).sum(1)
        self.hist = torch.cat([merged, torch.zeros(self.bins // 2, dtype=torch.float64)])
        self.edge *= 2

    def bin_centers(self) -> torch.Tensor:
        width = self.edge / self.bins
        return (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width


class PercentileObserver(HistogramObserver):
    """Clip at the given percentile of |x|."""

    def __init__(self, percentile: float = 99.999, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def amax(self, unsigned: bool = False) -> float:
        total = float(self.hist.sum())
        if total == 0 or self.edge == 0:
            return super().amax()
        cdf = torch.cumsum(self.hist, 0) / total
        index = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100, dtype=torch.float64)))
        return min(self.edge * (index + 1) / self.bins, super().amax())


class MSEObserver(HistogramObserver):
    """Choose the clipping range that minimises the quantization MSE of the observed values."""

    def __init__(self, bits: int, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(bins)
        self.bits = bits

    def amax(self, unsigned: bool = False) -> float:
        if float(self.hist.sum()) == 0 or self.edge == 0:
            return super().amax()
        centers, counts = self.bin_centers(), self.hist
        qmax = 2**self.bits - 1 if unsigned else 2 ** (self.bits - 1) - 1
        candidates = torch.linspace(self.edge / MSE_CANDIDATES, self.edge, MSE_CANDIDATES, dtype=torch.float64)
        scale = (candidates / qmax)[:, None]
        dequant = torch.clamp(torch.round(centers[None] / scale), max=qmax) * scale
        errors = ((centers[None] - dequant) ** 2 * counts[None]).sum(1)
        best = float(candidates[int(torch.argmin(errors))])
        return min(best, super().amax()) if math.isfinite(best) else super().amax()


# name -> factory(bits, percentile argument or the config's percentile); the single place an observer is added.
OBSERVERS: dict[str, Callable[[int, float], MinMaxObserver]] = {
    "minmax": lambda bits, percentile: MinMaxObserver(),
    "percentile": lambda bits, percentile: PercentileObserver(percentile),
    "mse": lambda bits, percentile: MSEObserver(bits),
}


def make_observer(method: str, bits: int, percentile: float = 99.999) -> MinMaxObserver:
    """Observer for ``method``: a key of :data:`OBSERVERS`, ``percentile:P`` choosing the percentile."""
    name, _, arg = method.partition(":")
    if name not in OBSERVERS:
        choices = ", ".join(f"{n}[:P]" if n == "percentile" else n for n in OBSERVERS)
        raise ConfigError(f"unknown calibration method {method!r}; choose {choices}")
    return OBSERVERS[name](bits, float(arg) if arg else percentile)
