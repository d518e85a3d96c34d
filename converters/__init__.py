"""qfsdk.converters: PyTorch models and checkpoints to ONNX (float or Q/DQ), graph checks, deploy repositories.

``export_quantized`` is imported lazily, so ``graph_check`` (``qfsdk check``) works without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_quantized"]


def __getattr__(name: str) -> Any:
    if name == "export_quantized":
        from .qdq_export import export_quantized

        return export_quantized
    raise AttributeError(f"module 'qfsdk.converters' has no attribute {name!r}")
