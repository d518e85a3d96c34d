"""qfsdk.runtime: torch-free embedding runtime (numpy + a backend such as ONNX Runtime)."""

from .contract import FaceContract
from .embedder import Embedder

__all__ = ["Embedder", "FaceContract"]
