"""Quantizer placement schemes: the registry is :data:`qfsdk.runtime.placement.PLACEMENTS`, the one table
of what each scheme is and which backends it is made for (the torch-free runtime reads it too)."""

from __future__ import annotations

from qfsdk.errors import ConfigError, did_you_mean
from qfsdk.runtime.placement import PLACEMENTS, Placement

Scheme = Placement
SCHEMES: dict[str, Scheme] = PLACEMENTS


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``, or a ConfigError that names the choices."""
    if name not in SCHEMES:
        raise ConfigError(f"unknown scheme {name!r}{did_you_mean(name, SCHEMES)}; choose one of {', '.join(SCHEMES)}")
    return SCHEMES[name]
