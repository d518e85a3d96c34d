"""Fake-quantization formulas with straight-through gradients.

Symmetric (deployable, TensorRT): zero point 0, ``q = clamp(round(x / s), qmin, qmax)``,
``x_hat = q * s``; weights use the narrow range [-(2^(b-1)-1), 2^(b-1)-1], activations the full
range [-2^(b-1), 2^(b-1)-1], or, below 8 bits for a range with no negative values (after ReLU),
the unsigned range [0, 2^b - 1], which int8 still holds with zero point 0. Rounding is
half-to-even, as ONNX QuantizeLinear does.

Asymmetric (QuantFace reference, adapted from ZeroQ): for k bits, n = 2^k - 1,
``scale = n / max(x_max - x_min, 1e-8)``, ``zp = round(scale * x_min) + 2^(k-1)``,
``q = clamp(round(scale * x - zp), -2^(k-1), 2^(k-1) - 1)``, ``x_hat = (q + zp) / scale``,
with a plain straight-through gradient (no clip mask); :func:`fake_quant_affine` is the same grid with
the symmetric quantizers' clipped gradient (zero-point activations of the symmetric schemes).
"""

from __future__ import annotations

from typing import Callable

import torch

EPS = 1e-8


def signed_range(bits: int, narrow: bool) -> tuple[int, int]:
    """(qmin, qmax) of a signed ``bits``-bit integer; narrow drops the most negative value."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient."""
    return x + (torch.round(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Round toward -inf in the forward pass, identity gradient (learned rounding adds 0 or 1)."""
    return x + (torch.floor(x) - x).detach()


def symmetric_scale(amax: torch.Tensor, bits: int, narrow: bool) -> torch.Tensor:
    """Scale mapping ``amax`` to the largest positive level."""
    return amax.clamp_min(EPS) / signed_range(bits, narrow)[1]


def unsigned_range(bits: int) -> tuple[int, int]:
    """(0, 2^b - 1): a ``bits``-bit grid for non-negative values, inside int8 for ``bits`` < 8."""
    return 0, 2**bits - 1


def fake_quant_symmetric(x: torch.Tensor, scale: torch.Tensor, bits: int, narrow: bool) -> torch.Tensor:
    """Quantize-dequantize with zero point 0; gradient passes inside the range, 0 outside."""
    return fake_quant_levels(x, scale, *signed_range(bits, narrow))


def fake_quant_levels(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize onto the integer levels [qmin, qmax] with zero point 0 (straight-through)."""
    return torch.clamp(round_ste(x / scale), qmin, qmax) * scale


def per_channel_amax(weight: torch.Tensor) -> torch.Tensor:
    """max |w| per output channel, shaped to broadcast against ``weight``."""
    amax = weight.detach().abs().flatten(1).amax(1)
    return amax.view(-1, *([1] * (weight.ndim - 1)))


def _affine_levels(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int,
                   rounding: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The reference grid: quantize-dequantize ``x`` with the zero point of [x_min, x_max]."""
    scale, zero_point = asymmetric_params(x_min, x_max, bits)
    half = 2 ** (bits - 1)
    return (torch.clamp(rounding(scale * x - zero_point), -half, half - 1) + zero_point) / scale


class _AsymmetricQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> torch.Tensor:
        return _affine_levels(x, x_min, x_max, bits, torch.round)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None, None


def asymmetric_params(x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference (scale, zero_point); ``scale`` multiplies (it is 1 / step size)."""
    scale = (2**bits - 1) / torch.clamp(x_max - x_min, min=EPS)
    zero_point = torch.round(scale * x_min) + 2 ** (bits - 1)
    return scale, zero_point


def fake_quant_asymmetric(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> torch.Tensor:
    """The QuantFace reference quantizer with a plain straight-through gradient."""
    return _AsymmetricQuant.apply(x, x_min, x_max, bits)


def fake_quant_affine(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> torch.Tensor:
    """The same values as :func:`fake_quant_asymmetric`; the gradient passes inside the range only, as
    the symmetric quantizers' does (a plain straight-through gradient lets train-mode BatchNorms blow up
    the gradients of near-dead activations)."""
    return _affine_levels(x, x_min, x_max, bits, round_ste)


def per_channel_min_max(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Live per-output-channel (min, max), shaped to broadcast against ``weight``."""
    flat = weight.detach().flatten(1)
    shape = (-1, *([1] * (weight.ndim - 1)))
    return flat.amin(1).view(shape), flat.amax(1).view(shape)
