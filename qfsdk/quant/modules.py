"""Quantized drop-in modules and the per-scheme registry that swaps them in.

Float modules are converted in place (their class is swapped, parameters keep their names),
so checkpoint keys stay those of the float model plus the quantizers' range buffers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qfsdk.errors import ConfigError
from qfsdk.models.dlib_resnet import Affine, PaddedAdd
from qfsdk.models.layers import ResidualAdd

from .fake_quant import (
    EPS,
    fake_quant_asymmetric,
    fake_quant_levels,
    fake_quant_symmetric,
    per_channel_amax,
    per_channel_min_max,
    signed_range,
    symmetric_scale,
    unsigned_range,
)


class ActQuantizer(nn.Module):
    """Per-tensor activation fake-quantizer with a stored range.

    States: observing (calibration: pass-through, the observer sees the float values),
    tracking (QAT warm-up: running global min/max grows with every batch), or fixed.
    Until it has a range it passes values through unchanged.

    A symmetric quantizer below 8 bits whose range holds no negative values (``x_min == 0``,
    e.g. after ReLU) uses the unsigned levels [0, 2^b - 1]: still int8 with zero point 0, but
    twice the resolution of the signed grid's positive half (``allow_unsigned=False`` opts out).
    """

    def __init__(self, bits: int, symmetric: bool, allow_unsigned: bool = True):
        super().__init__()
        self.bits = bits
        self.symmetric = symmetric
        self.allow_unsigned = allow_unsigned
        self.register_buffer("x_min", torch.zeros(()))
        self.register_buffer("x_max", torch.zeros(()))
        self.register_buffer("has_range", torch.zeros((), dtype=torch.bool))
        self.observer = None
        self.tracking = False

    @property
    def amax(self) -> torch.Tensor:
        return torch.maximum(self.x_min.abs(), self.x_max.abs())

    @property
    def unsigned(self) -> bool:
        """Whether the symmetric form uses the unsigned sub-8-bit levels (see the class docstring)."""
        return self.symmetric and self.allow_unsigned and self.bits < 8 and bool(self.x_min >= 0)

    def levels(self) -> tuple[int, int]:
        """The symmetric form's integer range (qmin, qmax), zero point 0."""
        return unsigned_range(self.bits) if self.unsigned else signed_range(self.bits, narrow=False)

    def scale(self) -> torch.Tensor:
        """The symmetric step size (QuantizeLinear's y_scale)."""
        return self.amax.clamp_min(EPS) / self.levels()[1]

    def set_range(self, x_min: float, x_max: float) -> None:
        self.x_min.fill_(min(x_min, 0.0))
        self.x_max.fill_(max(x_max, 0.0))
        self.has_range.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer.update(x)
            return x
        if self.tracking:
            detached = x.detach()
            self.x_min.copy_(torch.minimum(self.x_min, detached.min()))
            self.x_max.copy_(torch.maximum(self.x_max, detached.max()))
            self.has_range.fill_(True)
        if not bool(self.has_range):
            return x
        if self.symmetric:
            return fake_quant_levels(x, self.scale(), *self.levels())
        return fake_quant_asymmetric(x, self.x_min, self.x_max, self.bits)

    def extra_repr(self) -> str:
        kind = ("unsigned" if self.unsigned else "symmetric") if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, range=[{float(self.x_min):.4g}, {float(self.x_max):.4g}]"


class WeightQuantizer(nn.Module):
    """Per-output-channel weight fake-quantizer on the live weights (no stored range)."""

    def __init__(self, bits: int, symmetric: bool):
        super().__init__()
        self.bits = bits
        self.symmetric = symmetric

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        return symmetric_scale(per_channel_amax(weight), self.bits, narrow=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return fake_quant_symmetric(weight, self.scale(weight), self.bits, narrow=True)
        w_min, w_max = per_channel_min_max(weight)
        return fake_quant_asymmetric(weight, w_min, w_max, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per-channel, {'symmetric' if self.symmetric else 'asymmetric'}"


class QuantModule:
    """Mixin marking converted modules; ``setup`` adds the quantizers a scheme asks for."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        raise NotImplementedError


class _WeightedQuantMixin(QuantModule):
    """Conv/Linear: a quantized weight and (TensorRT scheme) a quantized input."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.weight_quantizer = WeightQuantizer(weight_bits, symmetric)
        self.input_quantizer = ActQuantizer(act_bits, symmetric) if symmetric else None

    def quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return x, self.weight_quantizer(self.weight)


class QuantConv2d(_WeightedQuantMixin, nn.Conv2d):
    """Fake-quantized Conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuantLinear(_WeightedQuantMixin, nn.Linear):
    """Fake-quantized Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return F.linear(x, weight, self.bias)


class _QuantAddMixin(QuantModule):
    """TensorRT scheme: quantize the skip input (the add fuses into the conv). QuantFace: the output."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.skip_quantizer = ActQuantizer(act_bits, True) if symmetric else None
        self.output_quantizer = None if symmetric else ActQuantizer(act_bits, False)

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.skip_quantizer is not None:
            skip = self.skip_quantizer(skip)
        out = super().forward(main, skip)
        return out if self.output_quantizer is None else self.output_quantizer(out)


class QuantResidualAdd(_QuantAddMixin, ResidualAdd):
    """Quantized residual add."""


class QuantPaddedAdd(_QuantAddMixin, PaddedAdd):
    """Quantized zero-padding residual add (dlib)."""


class QuantPReLU(nn.PReLU, QuantModule):
    """QuantFace: the slope is quantized per tensor at the activation bit width, and so is the output."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.slope_bits = act_bits
        self.output_quantizer = ActQuantizer(act_bits, symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.weight
        slope = fake_quant_asymmetric(slope, slope.detach().min(), slope.detach().max(), self.slope_bits)
        return self.output_quantizer(F.prelu(x, slope))


class _OutputQuantMixin(QuantModule):
    """The float module's output, then an activation quantizer."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.output_quantizer = ActQuantizer(act_bits, symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(super().forward(x))


class QuantReLU(_OutputQuantMixin, nn.ReLU):
    """QuantFace: ReLU followed by an activation quantizer (as the reference wraps ReLU)."""


class QuantBatchNorm2d(_OutputQuantMixin, nn.BatchNorm2d):
    """A BatchNorm that finishes a conv, output quantized (the ``onnxruntime`` scheme: the export folds
    it into the conv, which then ends in a Q/DQ pair that ONNX Runtime fuses into QLinearConv)."""


class QuantAffine(_OutputQuantMixin, Affine):
    """dlib's affine layer after a conv, output quantized (as :class:`QuantBatchNorm2d`)."""


CONV_FINISHERS = (nn.BatchNorm2d, Affine)  # float types the onnxruntime scheme quantizes only right after a conv


def conv_finishers(model: nn.Module) -> set[str]:
    """Names of the :data:`CONV_FINISHERS` modules whose input is a Conv2d's output, found by one
    forward pass on zeros of the model's contract input size."""
    contract = getattr(model, "contract", None)
    if contract is None:
        raise ConfigError(f"scheme 'onnxruntime' traces {type(model).__name__} on its contract's input size, and it has "
                          "no contract: set model.contract = FaceContract(...) first")
    conv_outputs: dict[int, torch.Tensor] = {}  # holding the tensors keeps their ids from being reused
    found: set[str] = set()
    names = {module: name for name, module in model.named_modules()}
    hooks = [m.register_forward_hook(lambda _m, _i, out: conv_outputs.setdefault(id(out), out))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(lambda m, args: found.add(names[m]) if id(args[0]) in conv_outputs else None)
              for m in model.modules() if type(m) in CONV_FINISHERS]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *contract.input_size))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return found


# Which float module types each placement scheme converts, and into what.
SCHEME_RULES: dict[str, dict[type, type]] = {
    "tensorrt": {
        nn.Conv2d: QuantConv2d,
        nn.Linear: QuantLinear,
        ResidualAdd: QuantResidualAdd,
        PaddedAdd: QuantPaddedAdd,
    },
    "onnxruntime": {
        nn.Conv2d: QuantConv2d,
        nn.Linear: QuantLinear,
        ResidualAdd: QuantResidualAdd,
        PaddedAdd: QuantPaddedAdd,
        nn.BatchNorm2d: QuantBatchNorm2d,
        Affine: QuantAffine,
    },
    "quantface": {
        nn.Conv2d: QuantConv2d,
        nn.Linear: QuantLinear,
        nn.PReLU: QuantPReLU,
        nn.ReLU: QuantReLU,
        ResidualAdd: QuantResidualAdd,
        PaddedAdd: QuantPaddedAdd,
    },
}


def convert(module: nn.Module, quant_cls: type, weight_bits: int, act_bits: int, symmetric: bool) -> None:
    """Swap ``module``'s class for ``quant_cls`` in place and add its quantizers."""
    module.__class__ = quant_cls
    module.setup(weight_bits=weight_bits, act_bits=act_bits, symmetric=symmetric)
