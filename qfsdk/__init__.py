"""qfsdk: low-bit face recognition, from full-precision network to edge runtime.

Importing ``qfsdk`` stays light (no torch) so that ``qfsdk.runtime`` works in deployment
environments without PyTorch; ``qfsdk.quantize``/``calibrate``/``load`` import torch on first use.
"""

from __future__ import annotations

import importlib

from ._version import __version__

_LAZY = {
    "quantize": "qfsdk.quant",
    "calibrate": "qfsdk.quant",
    "load": "qfsdk.quant",
    "save_quantized": "qfsdk.quant",
    "QuantConfig": "qfsdk.quant",
    "Recipe": "qfsdk.quant",
    "LayerOverride": "qfsdk.quant",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qfsdk' has no attribute {name!r}")
