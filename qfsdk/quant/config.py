"""Typed, validated quantization configs; presets are data."""

from __future__ import annotations

import difflib
import fnmatch
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from qfsdk.errors import ConfigError, did_you_mean

from .observers import OBSERVERS as OBSERVER_REGISTRY
from .schemes import SCHEMES as SCHEME_REGISTRY
from .schemes import get_scheme

PRESETS: dict[str, dict[str, int]] = {
    "w8a8": {"weight_bits": 8, "act_bits": 8},
    "w6a6": {"weight_bits": 6, "act_bits": 6},
    "w4a8": {"weight_bits": 4, "act_bits": 8},
    "w4a4": {"weight_bits": 4, "act_bits": 4},
}
SCHEMES = tuple(SCHEME_REGISTRY)
ASYMMETRIC_SCHEMES = tuple(name for name, s in SCHEME_REGISTRY.items() if not s.symmetric)  # the paper's quantizer
OBSERVERS = tuple(OBSERVER_REGISTRY)
MIN_BITS, MAX_BITS = 2, 8
KD_LOSS_CHOICES = ("auto", "normalized", "raw")  # QAT distillation losses (qfsdk.quant.qat.KD_LOSSES, plus auto)


def _check_bits(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS} (int8 containers), got {value!r}")


def _unknown_keys(data: Mapping[str, Any], known: Iterable[str], what: str) -> None:
    known = list(known)
    for key in data:
        if key not in known:
            hint = did_you_mean(key, known) or f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown {what} key {key!r}{hint}")


@dataclass(frozen=True)
class LayerOverride:
    """Bit widths for the layers whose qualified name matches ``pattern`` (fnmatch syntax).

    ``enabled=False`` keeps matching layers in float.
    """

    pattern: str
    weight_bits: int | None = None
    act_bits: int | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.pattern:
            raise ConfigError("a layer override needs a non-empty name pattern")
        for name in ("weight_bits", "act_bits"):
            if getattr(self, name) is not None:
                _check_bits(getattr(self, name), f"override {self.pattern!r}: {name}")

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerOverride":
        _unknown_keys(data, [f.name for f in fields(cls)], "layer override")
        return cls(**data)


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    ``scheme='tensorrt'``: symmetric int (zero point 0), per-output-channel weights, per-tensor
    activations at Conv/Gemm inputs and residual skip inputs. ``scheme='onnxruntime'``: the same
    plus the output of every BatchNorm (or dlib affine) that finishes a conv, so ONNX Runtime's CPU
    kernels fuse each conv into an int8 QLinearConv (a conv whose output is not quantized runs in
    float there). ``scheme='quantface'``: the paper's asymmetric quantizer, after every PReLU and
    residual add. ``unsigned_acts``: sub-8-bit symmetric activations that calibrate to no negative
    values use [0, 2^b - 1] (still int8, zero point 0; one more bit of resolution after ReLU).
    ``asymmetric_acts``: activations of a symmetric scheme get a zero point over their observed
    [min, max] (weights stay symmetric): the whole int8 grid spans a one-sided PReLU/ReLU output.
    ONNX Runtime and OpenVINO run it (their CPU kernels take zero points); TensorRT does not.
    """

    weight_bits: int = 8
    act_bits: int = 8
    scheme: str = "tensorrt"
    observer: str = "minmax"
    percentile: float = 99.999
    unsigned_acts: bool = True
    asymmetric_acts: bool = False
    overrides: tuple[LayerOverride, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check_bits(self.weight_bits, "weight_bits")
        _check_bits(self.act_bits, "act_bits")
        get_scheme(self.scheme)
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}")
        for name in ("unsigned_acts", "asymmetric_acts"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.asymmetric_acts and not get_scheme(self.scheme).symmetric:
            raise ConfigError(f"scheme {self.scheme!r} is asymmetric already: asymmetric_acts is for the symmetric schemes")
        if not get_scheme(self.scheme).symmetric and self.observer != "minmax":
            raise ConfigError("scheme 'quantface' uses the paper's running min/max ranges: use observer 'minmax'")
        if self.asymmetric_acts and self.observer != "minmax":
            raise ConfigError("asymmetric_acts takes each activation's observed [min, max] as its range: use observer "
                              "'minmax' (clipping a one-sided range costs more than it saves on real faces)")
        object.__setattr__(self, "overrides", tuple(self.overrides))

    def range_method(self, method: str | None = None, default: str | None = None) -> str:
        """The activation range method of a PTQ run: ``method``, else ``default``, else the observer.
        Activations with zero points always take their observed [min, max]; another method is refused."""
        if self.asymmetric_activations:
            if method not in (None, "minmax"):
                raise ConfigError(f"method {method!r} does not apply: activations with zero points (asymmetric_acts, "
                                  "--asymmetric-acts, or scheme quantface) take their observed [min, max] as range; "
                                  "omit the method (--method), or use symmetric activations")
            return "minmax"
        return method or default or self.observer

    @property
    def asymmetric_activations(self) -> bool:
        """Whether activation quantizers carry a zero point (``asymmetric_acts`` or an asymmetric scheme)."""
        return self.asymmetric_acts or not get_scheme(self.scheme).symmetric

    def bits_for(self, name: str) -> tuple[int, int, bool]:
        """(weight_bits, act_bits, enabled) for the layer ``name``; the last matching override wins."""
        weight_bits, act_bits, enabled = self.weight_bits, self.act_bits, True
        for override in self.overrides:
            if override.matches(name):
                weight_bits = override.weight_bits or weight_bits
                act_bits = override.act_bits or act_bits
                enabled = override.enabled
        return weight_bits, act_bits, enabled

    def check_patterns(self, layer_names: Iterable[str]) -> None:
        """Fail when an override matches no quantizable layer (a typo would silently do nothing)."""
        names = list(layer_names)
        for override in self.overrides:
            if not any(override.matches(n) for n in names):
                close = difflib.get_close_matches(override.pattern, names, n=3)
                hint = f"; close names: {', '.join(close)}" if close else f"; e.g. {', '.join(names[:3])}"
                raise ConfigError(f"layer pattern {override.pattern!r} matches no quantizable layer{hint}")

    def with_overrides(self, *overrides: LayerOverride) -> "QuantConfig":
        return replace(self, overrides=self.overrides + tuple(overrides))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overrides"] = [asdict(o) for o in self.overrides]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuantConfig":
        data = dict(data)
        preset = data.pop("preset", None)
        _unknown_keys(data, [f.name for f in fields(cls)], "quantization config")
        base = PRESETS[_preset_name(preset)] if preset else {}
        overrides = tuple(o if isinstance(o, LayerOverride) else LayerOverride.from_dict(o) for o in data.pop("overrides", ()))
        return cls(**{**base, **data, "overrides": overrides})

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        return cls.from_dict(json.loads(text))


def _preset_name(name: str) -> str:
    key = name.lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(key, PRESETS)} (presets: {', '.join(PRESETS)})")
    return key


def preset(name: str, **changes: Any) -> QuantConfig:
    """A preset (``w8a8``, ``w6a6``, ``w4a8``, ``w4a4``) with optional field changes."""
    return QuantConfig.from_dict({"preset": name, **changes})


def resolve_config(config: "QuantConfig | str | Mapping[str, Any]") -> QuantConfig:
    """Accept a QuantConfig, a preset name or a dict (which may name a ``preset``)."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(config)
    raise ConfigError(f"expected a QuantConfig, preset name or dict, got {type(config).__name__}")
