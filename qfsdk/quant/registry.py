"""The open quant-module registry: which float module types each scheme converts, and into what.

A rule pairs a float type with a quantized mixin. Matching is by ``isinstance`` (a subclass of
``nn.Conv2d`` is a conv), the most specific registered type winning; the converted module's class
is ``(mixin, its own class)``, so a subclass keeps its methods and stays an instance of its type.
Model families register their own special layers (dlib's affine is registered next to dlib).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

from .schemes import SCHEMES


@dataclass(frozen=True)
class QuantRule:
    """Convert instances of ``float_type`` with ``mixin`` under ``schemes``.

    ``after_conv_only``: convert a module only when its input is a Conv2d's output (a BatchNorm or
    affine that finishes a conv, which the export folds into it).
    """

    float_type: type
    mixin: type
    schemes: frozenset[str]
    after_conv_only: bool = False


_RULES: list[QuantRule] = []
_CLASSES: dict[tuple[type, type], type] = {}
_FLOAT_CLASSES: dict[type, type] = {}  # converted class -> the float class it was made from


def register_quant_module(float_type: type, mixin: type, schemes: Iterable[str], *, after_conv_only: bool = False) -> QuantRule:
    """Register (or replace, for the same type and schemes) how ``float_type`` is quantized."""
    schemes = frozenset(schemes)
    unknown = schemes - set(SCHEMES)
    if unknown:
        raise ValueError(f"unknown schemes {sorted(unknown)}; registered: {', '.join(SCHEMES)}")
    rule = QuantRule(float_type, mixin, schemes, after_conv_only)
    _RULES[:] = [r for r in _RULES if not (r.float_type is float_type and r.schemes & schemes)] + [rule]
    return rule


def rule_for(module: nn.Module, scheme: str) -> QuantRule | None:
    """The rule of ``scheme`` for ``module``: the registered type nearest in its class's MRO."""
    mro = type(module).__mro__
    candidates = [r for r in _RULES if scheme in r.schemes and isinstance(module, r.float_type)]
    return min(candidates, key=lambda r: mro.index(r.float_type), default=None)


def quant_class(mixin: type, float_cls: type) -> type:
    """The converted class for ``float_cls`` (made once per pair, so converted models deep-copy and compare)."""
    key = (mixin, float_cls)
    if key not in _CLASSES:
        if issubclass(float_cls, mixin):
            _CLASSES[key] = float_cls
        else:
            name = f"Quant{float_cls.__name__}"
            _CLASSES[key] = type(name, (mixin, float_cls), {"__module__": mixin.__module__, "__qualname__": name})
            _FLOAT_CLASSES[_CLASSES[key]] = float_cls
    return _CLASSES[key]


def float_class(quant_cls: type) -> type | None:
    """The float class :func:`quant_class` made ``quant_cls`` from; None for a class that is quantized itself."""
    return _FLOAT_CLASSES.get(quant_cls)
