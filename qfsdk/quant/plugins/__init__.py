"""Model families' own quantization layers, registered explicitly by the quantization side.

A model file never registers quantization code as it loads (behaviour would then depend on import
order), and the quantization core imports no model file: a family whose layers the generic rules
of :mod:`qfsdk.quant.modules` do not cover gets a plugin module here with a ``register()``, listed
in :data:`PLUGINS`; ``qfsdk.quant`` runs :func:`register_plugins` once.
"""

from __future__ import annotations

from typing import Callable

from . import dlib_resnet

PLUGINS: dict[str, Callable[[], None]] = {"dlib_resnet": dlib_resnet.register}


def register_plugins() -> None:
    """Register every model family's quantization layers."""
    for register in PLUGINS.values():
        register()
