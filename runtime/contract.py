"""The contract a model is meant to be used with: its task, preprocessing and outputs.

Torch-free: the runtime reads the same contract from ONNX metadata or an engine sidecar,
so preprocessing is identical wherever a model runs. Each task has one contract class in
:data:`CONTRACTS` (``embedder``: :class:`FaceContract`); the JSON form names the task, and
JSON without one (files written before tasks existed) is an embedder's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import numpy as np

DISTANCES = ("cosine", "euclidean")
# Which way the alignment's least-squares similarity is fitted (see qfsdk.runtime.align).
TEMPLATE_FITS = ("landmarks_to_template", "template_to_landmarks")
DEFAULT_TASK = "embedder"  # the task of a contract JSON that names none (written before tasks)

C = TypeVar("C", bound="ModelContract")
A = TypeVar("A")  # an array type: numpy, or torch in the calibration code


@dataclass(frozen=True)
class ModelContract:
    """What every task's contract shares: the ``task`` name and a JSON form that carries it.

    A new task (a face detector) subclasses this as a frozen dataclass with its own ``task`` and
    fields, decorated with :func:`register_contract`; model files then read back as that class.
    """

    task: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        values = dict(data)
        task = values.pop("task", DEFAULT_TASK)
        if task != cls.task:
            raise ValueError(f"a {task!r} contract is not a {cls.__name__} (task {cls.task!r})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown contract fields {unknown}; known: {sorted(known)}")
        return cls(**{key: _tuples(value) for key, value in values.items()})

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))


CONTRACTS: dict[str, type[ModelContract]] = {}


def register_contract(cls: type[C]) -> type[C]:
    """Class decorator: ``cls`` becomes the contract of its ``task``."""
    CONTRACTS[cls.task] = cls
    return cls


def contract_from_dict(data: Mapping[str, Any]) -> ModelContract:
    """The contract of the task ``data`` names (none: :data:`DEFAULT_TASK`)."""
    task = data.get("task", DEFAULT_TASK)
    if task not in CONTRACTS:
        raise ValueError(f"unknown contract task {task!r}; known: {sorted(CONTRACTS)}")
    return CONTRACTS[task].from_dict(data)


def contract_from_json(text: str) -> ModelContract:
    """:func:`contract_from_dict` of a JSON text."""
    return contract_from_dict(json.loads(text))


def _tuples(value: Any) -> Any:
    """JSON lists as (nested) tuples, as the frozen contracts hold them."""
    return tuple(map(_tuples, value)) if isinstance(value, list) else value



@register_contract
@dataclass(frozen=True)
class FaceContract(ModelContract):
    """How to feed a face embedding model and how to compare its embeddings.

    Pixels are normalised per channel as ``(pixel - mean) / std`` with ``pixel`` in 0..255,
    in ``channel_order``, laid out NCHW.

    ``template`` holds the five landmark positions (x, y) in the model input's pixel coordinates
    (pixel centres at integers) that full images are warped to; ``template_fit`` says in which
    direction the similarity transform is fitted (:mod:`qfsdk.runtime.align`).
    ``embedding_output`` names the model output that holds the embedding (None: its only, or
    first, output).
    """

    task: ClassVar[str] = DEFAULT_TASK

    input_size: tuple[int, int]
    embedding_size: int
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channel_order: str = "RGB"
    alignment: str = "arcface_5pt"
    distance: str = "cosine"
    threshold: float | None = None
    template: tuple[tuple[float, float], ...] | None = None
    template_fit: str = "landmarks_to_template"
    embedding_output: str | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in (*self.mean, *self.std)) \
                or min(self.std) <= 0:
            raise ValueError(f"mean and std need three finite values each, std > 0; got mean {self.mean}, std {self.std}")
        if len(self.input_size) != 2 or min(self.input_size) < 1 or self.embedding_size < 1:
            raise ValueError(f"input_size needs two sizes >= 1 and embedding_size >= 1; got {self.input_size}, {self.embedding_size}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number, got {self.threshold}")
        if self.template is not None and not all(math.isfinite(v) for point in self.template for v in point):
            raise ValueError(f"template points must be finite, got {self.template!r}")
        if self.template is not None and (len(self.template) != 5 or any(len(p) != 2 for p in self.template)):
            raise ValueError(f"template needs five (x, y) points, got {self.template!r}")
        if self.template_fit not in TEMPLATE_FITS:
            raise ValueError(f"template_fit must be one of {TEMPLATE_FITS}, got {self.template_fit!r}")

    @property
    def height(self) -> int:
        return self.input_size[0]

    @property
    def width(self) -> int:
        return self.input_size[1]

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Turn aligned uint8 RGB crops (H, W, 3) or (N, H, W, 3) into the model's float32 NCHW input."""
        batch = np.asarray(images)
        if batch.ndim == 3:
            batch = batch[None]
        expected = (self.height, self.width, 3)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"expected aligned RGB crops of shape {expected} or (N, *{expected}), got {batch.shape}")
        if batch.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels, got {batch.dtype}")
        return np.ascontiguousarray(self.normalise(batch.astype(np.float32).transpose(0, 3, 1, 2)))

    def normalise(self, pixels: A, constant: Callable[[np.ndarray], A] | None = None) -> A:
        """RGB pixel values 0..255 as floats (N, 3, H, W) -> the model input: ``channel_order``, then
        ``(pixel - mean) / std``; what :meth:`preprocess` does after the layout change.

        ``pixels`` may be any array with numpy's indexing and arithmetic (a torch tensor stays
        differentiable); ``constant`` turns the float64 (1, 3, 1, 1) mean and std into that kind of
        array (None: numpy arrays of the pixels' dtype).
        """
        constant = constant or (lambda values: values.astype(pixels.dtype))
        if self.channel_order == "BGR":
            pixels = pixels[:, [2, 1, 0]]
        mean, std = (constant(np.asarray(values, np.float64).reshape(1, 3, 1, 1)) for values in (self.mean, self.std))
        return (pixels - mean) / std
