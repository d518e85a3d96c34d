"""Quantizers, the quantized module mixins and the built-in rules of the quant-module registry.

Float modules are converted in place (their class becomes ``(mixin, own class)``, parameters keep
their names), so checkpoint keys stay those of the float model plus the quantizers' buffers. Each
quantizer owns its export path: inside :func:`exporting` it emits its Q/DQ form instead of
fake-quantizing, so what PyTorch computes and what the ONNX file stores come from one formula.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from qfsdk.models.layers import ResidualAdd

from .export_forms import INT8_MAX, INT8_MIN, ActForm, FloatConstant, WeightDQ, WeightForm, act_plugin, act_qdq
from .fake_quant import (
    EPS,
    asymmetric_params,
    fake_quant_affine,
    fake_quant_asymmetric,
    fake_quant_levels,
    floor_ste,
    per_channel_amax,
    per_channel_min_max,
    round_ste,
    signed_range,
    symmetric_scale,
    unsigned_range,
)
from .registry import float_class, quant_class, register_quant_module
from .schemes import SCHEMES

EXPORT_FORMS = ("qdq", "plugin")  # what a quantizer emits inside exporting(): Q/DQ pairs, or FakeQuantize below 8 bits


class Quantizer(nn.Module):
    """Base of the activation and weight quantizers; ``export_as`` is set only during an export,
    ``bypass`` only inside :func:`bypassed` (values pass unchanged: the float model, same weights)."""

    export_as: str | None = None
    bypass: bool = False


class ActQuantizer(Quantizer):
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
        self.clipped_gradient = False  # asymmetric form: no gradient outside the range (QuantFace's STE passes it)

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
        if not (math.isfinite(x_min) and math.isfinite(x_max)):
            from qfsdk.errors import QfsdkError

            raise QfsdkError(f"an activation range came out as [{x_min}, {x_max}]: the calibration images or the model's "
                             "weights hold NaN or infinity; check both (qfsdk eval --fidelity on the float model)")
        self.x_min.fill_(min(x_min, 0.0))
        self.x_max.fill_(max(x_max, 0.0))
        self.has_range.fill_(True)

    def form(self) -> ActForm:
        """The Q/DQ parameters (scale, zero point, integer range) of this calibrated quantizer."""
        from qfsdk.errors import QfsdkError

        if not bool(self.has_range):
            raise QfsdkError("an activation quantizer has no range: calibrate the model (qfsdk calibrate) before exporting")
        if self.symmetric:
            qmin, qmax = self.levels()
            return ActForm(scale=float(self.scale()), zero_point=0, qmin=qmin, qmax=qmax)
        # The reference scale multiplies: y_scale = 1 / scale, y_zero_point = -zero_point (0 is always in range).
        scale, zero_point = asymmetric_params(self.x_min, self.x_max, self.bits)
        half = 2 ** (self.bits - 1)
        return ActForm(scale=float(1.0 / scale), zero_point=int(-zero_point), qmin=-half, qmax=half - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return x
        if self.export_as is not None:
            form = self.form()
            return act_plugin(x, form) if self.export_as == "plugin" and self.bits < 8 else act_qdq(x, form)
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
        if self.clipped_gradient:
            return fake_quant_affine(x, self.x_min, self.x_max, self.bits)
        return fake_quant_asymmetric(x, self.x_min, self.x_max, self.bits)

    def extra_repr(self) -> str:
        kind = ("unsigned" if self.unsigned else "symmetric") if self.symmetric else "asymmetric"
        return f"bits={self.bits}, {kind}, range=[{float(self.x_min):.4g}, {float(self.x_max):.4g}]"


class WeightQuantizer(Quantizer):
    """Per-output-channel weight fake-quantizer; it owns the step and the rounding of its codes.

    Symmetric (narrow range, zero point 0): ``code = clamp(round(w / step), -q, q)`` with
    ``step = max|w| / q`` per output channel from the live weights. A PTQ algorithm may fix either:
    ``step`` (e.g. a clipping search) and ``rounding`` (learned rounding: ``code = floor(w / step) +
    rounding``, rounding in {0, 1} per weight). Both are optional buffers, saved only when set.
    Asymmetric (QuantFace): the reference quantizer on each channel's live min/max.
    """

    OPTIONAL_STATE = ("step", "rounding")

    def __init__(self, bits: int, symmetric: bool):
        super().__init__()
        self.bits = bits
        self.symmetric = symmetric
        self.register_buffer("step", None)
        self.register_buffer("rounding", None)

    def step_size(self, weight: torch.Tensor) -> torch.Tensor:
        """The per-channel step, shaped to broadcast against ``weight``."""
        if self.step is not None:
            return self.step
        return symmetric_scale(per_channel_amax(weight), self.bits, narrow=True)

    def set_step(self, step: torch.Tensor | None) -> None:
        """Fix the per-channel step (shape (out, 1, ...)) or return to max |w| (None)."""
        self.step = None if step is None else step.detach().clone().float()

    def set_rounding(self, rounding: torch.Tensor | None) -> None:
        """Fix each weight's rounding (0: down, 1: up from floor(w / step)) or return to nearest (None)."""
        self.rounding = None if rounding is None else rounding.detach().clone().to(torch.int8)

    def _integer(self, scaled: torch.Tensor, straight_through: bool) -> torch.Tensor:
        """The one code formula of the symmetric form (float codes; gradients pass when ``straight_through``)."""
        qmin, qmax = signed_range(self.bits, narrow=True)
        if self.rounding is None:
            codes = round_ste(scaled) if straight_through else torch.round(scaled)
        else:
            codes = (floor_ste(scaled) if straight_through else torch.floor(scaled)) + self.rounding.to(scaled.dtype)
        return torch.clamp(codes, qmin, qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return weight
        if self.export_as is not None:
            return self._export(weight)
        if self.symmetric:
            step = self.step_size(weight)
            return self._integer(weight / step, straight_through=True) * step
        w_min, w_max = per_channel_min_max(weight)
        return fake_quant_asymmetric(weight, w_min, w_max, self.bits)

    def form(self, weight: torch.Tensor) -> WeightForm | None:
        """The int8 codes and DequantizeLinear parameters of ``weight``; None for a QuantFace weight
        with a channel of one sign, whose zero point leaves int8 (it is then stored as float)."""
        weight = weight.detach()
        if self.symmetric:
            step = self.step_size(weight)
            return WeightForm(
                codes=self._integer(weight / step, straight_through=False).to(torch.int8).numpy(),
                scale=step.expand(weight.shape[0], *step.shape[1:]).flatten().float().numpy(),
                zero_point=torch.zeros(weight.shape[0], dtype=torch.int8).numpy(),
            )
        w_min, w_max = per_channel_min_max(weight)
        scale, zero_point = asymmetric_params(w_min, w_max, self.bits)
        onnx_zero_point = -zero_point.flatten()
        if onnx_zero_point.min() < INT8_MIN or onnx_zero_point.max() > INT8_MAX:
            return None
        half = 2 ** (self.bits - 1)
        codes = torch.clamp(torch.round(scale * weight - zero_point), -half, half - 1)
        return WeightForm(
            codes=codes.to(torch.int8).numpy(),
            scale=(1.0 / scale).flatten().float().numpy(),
            zero_point=onnx_zero_point.to(torch.int8).numpy(),
        )

    def _export(self, weight: torch.Tensor) -> torch.Tensor:
        form = self.form(weight)
        if form is None:
            with exporting(self, None):
                value = self(weight).detach().numpy()
            return FloatConstant.apply(weight, value)
        return WeightDQ.apply(weight, form)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.OPTIONAL_STATE:  # optional buffers exist once a checkpoint holds them
            if prefix + name in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        learned = ", fixed step" * (self.step is not None) + ", learned rounding" * (self.rounding is not None)
        return f"bits={self.bits}, per-channel, {'symmetric' if self.symmetric else 'asymmetric'}{learned}"


def prepare_optional_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Create the optional quantizer buffers that ``state`` holds, so it loads strictly into ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, WeightQuantizer):
            prefix = f"{name}." if name else ""
            for key in module.OPTIONAL_STATE:
                if prefix + key in state and getattr(module, key) is None:
                    setattr(module, key, torch.empty_like(state[prefix + key]))


@contextlib.contextmanager
def exporting(model: nn.Module, form: str | None = "qdq") -> Iterator[nn.Module]:
    """Every quantizer in ``model`` emits its export form (``qdq`` or ``plugin``; None: fake-quant)."""
    if form is not None and form not in EXPORT_FORMS:
        raise ValueError(f"unknown export form {form!r}; choose one of {EXPORT_FORMS}")
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    previous = [q.export_as for q in quantizers]
    for quantizer in quantizers:
        quantizer.export_as = form
    try:
        yield model
    finally:
        for quantizer, value in zip(quantizers, previous):
            quantizer.export_as = value


@contextlib.contextmanager
def bypassed(model: nn.Module) -> Iterator[nn.Module]:
    """Every quantizer in ``model`` passes values through: the float model with the same weights."""
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    for quantizer in quantizers:
        quantizer.bypass = True
    try:
        yield model
    finally:
        for quantizer in quantizers:
            quantizer.bypass = False


class QuantModule:
    """Mixin marking converted modules; ``setup`` adds the quantizers a scheme asks for."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        raise NotImplementedError


class WeightedQuantMixin(QuantModule):
    """Conv/Linear: a quantized weight and (symmetric schemes) a quantized input."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.weight_quantizer = WeightQuantizer(weight_bits, symmetric)
        self.input_quantizer = ActQuantizer(act_bits, symmetric) if symmetric else None

    def quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return x, self.weight_quantizer(self.weight)


class QuantConvMixin(WeightedQuantMixin):
    """Fake-quantized convolution (any ``nn.Conv2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        return self._conv_forward(x, weight, self.bias)


class QuantLinearMixin(WeightedQuantMixin):
    """Fake-quantized linear layer (any ``nn.Linear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, weight = self.quantized_operands(x)
        bias = self.bias
        if bias is None and self.weight_quantizer.export_as is not None:
            # A bias-free linear exports as DequantizeLinear -> Transpose -> MatMul, which TensorRT cannot fuse;
            # a zero bias makes it Gemm(transB=1) with the weight's DequantizeLinear feeding it directly.
            bias = torch.zeros(self.out_features, dtype=x.dtype)
        return F.linear(x, weight, bias)


class QuantAddMixin(QuantModule):
    """A residual add (``forward(main, skip)``): symmetric schemes quantize the skip input (the add
    fuses into the main branch's conv); QuantFace quantizes the output."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.skip_quantizer = ActQuantizer(act_bits, True) if symmetric else None
        self.output_quantizer = None if symmetric else ActQuantizer(act_bits, False)

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.skip_quantizer is not None:
            skip = self.skip_quantizer(skip)
        out = super().forward(main, skip)
        return out if self.output_quantizer is None else self.output_quantizer(out)


class QuantPReLUMixin(QuantModule):
    """QuantFace: the slope is quantized per tensor at the activation bit width, and so is the output."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.slope_bits = act_bits
        self.output_quantizer = ActQuantizer(act_bits, symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In an export the slope is a constant: its fake-quantized value is baked in.
        slope = self.weight if self.output_quantizer.export_as is None else self.weight.detach()
        slope = fake_quant_asymmetric(slope, slope.detach().min(), slope.detach().max(), self.slope_bits)
        return self.output_quantizer(F.prelu(x, slope))


class OutputQuantMixin(QuantModule):
    """The float module's output, then an activation quantizer."""

    def setup(self, weight_bits: int, act_bits: int, symmetric: bool) -> None:
        self.output_quantizer = ActQuantizer(act_bits, symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quantizer(super().forward(x))


QuantConv2d = quant_class(QuantConvMixin, nn.Conv2d)
QuantLinear = quant_class(QuantLinearMixin, nn.Linear)
QuantResidualAdd = quant_class(QuantAddMixin, ResidualAdd)
QuantPReLU = quant_class(QuantPReLUMixin, nn.PReLU)
QuantReLU = quant_class(OutputQuantMixin, nn.ReLU)  # QuantFace wraps ReLU as it wraps PReLU
# A BatchNorm that finishes a conv, output quantized (the onnxruntime scheme: the export folds it into
# the conv, which then ends in a Q/DQ pair that ONNX Runtime fuses into QLinearConv).
QuantBatchNorm2d = quant_class(OutputQuantMixin, nn.BatchNorm2d)

ALL_SCHEMES = tuple(SCHEMES)
register_quant_module(nn.Conv2d, QuantConvMixin, ALL_SCHEMES)
register_quant_module(nn.Linear, QuantLinearMixin, ALL_SCHEMES)
register_quant_module(ResidualAdd, QuantAddMixin, ALL_SCHEMES)
register_quant_module(nn.BatchNorm2d, OutputQuantMixin, ("onnxruntime",), after_conv_only=True)
register_quant_module(nn.PReLU, QuantPReLUMixin, ("quantface",))
register_quant_module(nn.ReLU, OutputQuantMixin, ("quantface",))


def convert(module: nn.Module, mixin: type, weight_bits: int, act_bits: int, symmetric: bool) -> None:
    """Give ``module`` the quantized class for its own class and ``mixin``, in place, and add its quantizers."""
    module.__class__ = quant_class(mixin, type(module))
    module.setup(weight_bits=weight_bits, act_bits=act_bits, symmetric=symmetric)


def unconvert(module: nn.Module) -> bool:
    """The inverse of :func:`convert`, in place: the float class back, the quantizers gone; False when
    ``module``'s class is quantized by definition (it has no float class to return to)."""
    float_cls = float_class(type(module))
    if float_cls is None:
        return False
    for name, child in list(module.named_children()):
        if isinstance(child, Quantizer):
            del module._modules[name]
    for name in [n for n, v in vars(module).items() if n.endswith("_quantizer") and v is None]:
        delattr(module, name)
    module.__class__ = float_cls
    return True
