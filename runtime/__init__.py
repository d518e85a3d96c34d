"""qfsdk.runtime: torch-free embedding runtime (numpy + a backend such as ONNX Runtime).

Self-contained: it imports nothing from qfsdk outside ``qfsdk.runtime``. The names below load
on first use, so ``qfsdk.errors`` and ``qfsdk._version`` (which live here) stay cheap to import.
"""

from __future__ import annotations

import importlib

_LAZY = {"Embedder": ".embedder", "FaceContract": ".contract"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
