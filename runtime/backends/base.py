"""The interface every runtime backend implements, and its optional-import helper."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Mapping

import numpy as np

from ..errors import MissingDependencyError


@dataclass(frozen=True)
class TensorInfo:
    """One named input or output of a model: ``shape`` with None for a dynamic dimension, numpy ``dtype`` name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, value: object) -> None:
        """Raise a ValueError saying how ``value`` does not fit this input."""
        if not isinstance(value, np.ndarray):
            raise ValueError(f"input {self.name!r}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(self.dtype):
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {value.dtype}")
        if value.ndim != len(self.shape) or any(d is not None and d != v for d, v in zip(self.shape, value.shape)):
            raise ValueError(f"input {self.name!r}: expected shape {self.shape} (None: any size), got {value.shape}")


class Backend(ABC):
    """Runs one model artifact: named numpy arrays in, named numpy arrays out.

    ``inputs`` and ``outputs`` describe the artifact's tensors in its order; ``max_batch`` is the
    largest batch (first dimension of the first input) it accepts (None: no limit). ``infer``
    (and so ``run``) is safe to call from several threads at once. Subclasses implement
    ``_infer`` and ``close``, and may extend ``check_feeds``.
    """

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch: int | None = None

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """The first input's shape, None for a dynamic dimension."""
        return self.inputs[0].shape

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name, for one array per input by name (checked first: names, dtypes, shapes)."""
        self.check_feeds(feeds)
        return self._infer(dict(feeds))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """For single-input models: the first output as float32, ``batch`` cast to the input's dtype."""
        if len(self.inputs) != 1:
            raise ValueError(f"run() feeds one input; this model has {[t.name for t in self.inputs]}: use infer()")
        first = self.inputs[0]
        outputs = self.infer({first.name: np.asarray(batch).astype(first.dtype, copy=False)})
        return np.asarray(outputs[self.outputs[0].name], np.float32)

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise a ValueError unless ``feeds`` holds exactly the inputs, each of its dtype and shape."""
        names = [t.name for t in self.inputs]
        missing = [name for name in names if name not in feeds]
        unexpected = sorted(set(feeds) - set(names))
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"missing {missing}")
            if unexpected:
                problems.append(f"unexpected {unexpected}")
            raise ValueError(f"feeds must name the model's inputs {names}: {', '.join(problems)}")
        for info in self.inputs:
            info.check(feeds[info.name])

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name for checked ``feeds``."""

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
