"""The interface every runtime backend implements, and its optional-import helper."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from types import ModuleType

import numpy as np

from qfsdk.errors import MissingDependencyError


class Backend(ABC):
    """Runs one model artifact on (N, 3, H, W) float32 batches.

    ``input_shape`` is (batch, channels, height, width) with None for a dynamic dimension;
    ``max_batch`` is the largest batch the artifact accepts (None: no limit).
    ``run`` is safe to call from several threads at once.
    """

    name: str
    input_shape: tuple[int | None, ...]
    max_batch: int | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) float32 of a float32 NCHW batch."""

    @abstractmethod
    def close(self) -> None:
        """Release the artifact's resources (idempotent)."""


def import_optional(module: str, package: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, feature, f"pip install 'qfsdk[{extra}]'") from None


def dims(shape: list[object]) -> tuple[int | None, ...]:
    """A shape with symbolic or unknown dimensions as None."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
