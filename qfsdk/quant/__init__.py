"""Quantization: fake-quant modules, PTQ calibration and QAT with distillation."""

from . import bias_correction as _bias_correction  # noqa: F401  (registers the PTQ steps)
from . import end_layers as _end_layers  # noqa: F401
from . import equalization as _equalization  # noqa: F401
from . import float_fallback as _float_fallback  # noqa: F401
from . import reconstruction as _reconstruction  # noqa: F401
from .api import calibrate, quantize, set_range_tracking
from .checkpoint import load, save_quantized
from .config import PRESETS, LayerOverride, QuantConfig, preset
from .recipe import Recipe
from .plugins import register_plugins

register_plugins()

__all__ = [
    "PRESETS",
    "LayerOverride",
    "QuantConfig",
    "Recipe",
    "calibrate",
    "load",
    "preset",
    "quantize",
    "save_quantized",
    "set_range_tracking",
]
