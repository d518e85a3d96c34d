"""qfsdk.runtime: torch-free embedding runtime (numpy + a backend such as ONNX Runtime)."""

from .contract import FaceContract

__all__ = ["FaceContract"]
