"""One interface for calibration and training data.

A data source is any iterable of float32 batches shaped (B, 3, H, W), already in the target
model's preprocessing contract, with ``len()`` = number of batches. Synthetic generators,
image folders and a user's own iterator all plug in the same way; :func:`as_batches`
adapts the common forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from qfsdk.calib.folder import ImageFolderSource
from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract


@runtime_checkable
class BatchSource(Protocol):
    """What calibration and QAT consume."""

    def __iter__(self) -> Iterator[torch.Tensor]: ...

    def __len__(self) -> int: ...


class TensorBatches:
    """Fixed preprocessed images served in batches (the last batch may be smaller)."""

    def __init__(self, images: torch.Tensor, batch_size: int = 32):
        if images.ndim != 4 or images.shape[1] != 3:
            raise QfsdkError(f"expected preprocessed images shaped (N, 3, H, W), got {tuple(images.shape)}")
        if len(images) == 0:
            raise QfsdkError("no calibration images")
        self.images = images.float()
        self.batch_size = max(1, int(batch_size))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.images), self.batch_size):
            yield self.images[start : start + self.batch_size]


class IterableBatches:
    """A user's iterable of batches with a known number of batches."""

    def __init__(self, batches: Iterable[torch.Tensor], length: int):
        self.batches = batches
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in self.batches:
            yield torch.as_tensor(batch).float()


def as_batches(data: object, contract: FaceContract | None, batch_size: int = 32) -> BatchSource:
    """Adapt ``data`` to a :class:`BatchSource`.

    Accepts a BatchSource, a float tensor/array (N, 3, H, W) already preprocessed, uint8 crops
    (N, H, W, 3) that are preprocessed here with ``contract``, a folder of aligned face images
    (:class:`~qfsdk.calib.folder.ImageFolderSource`), or a sized iterable of batches.
    Without a contract only already-preprocessed data is accepted.
    """
    if isinstance(data, (str, Path)):
        if contract is None:
            raise QfsdkError(f"{data}: a folder of images needs the model's preprocessing contract; pass preprocessed float images")
        return ImageFolderSource(Path(data), contract, batch_size)
    if contract is None and isinstance(data, (np.ndarray, torch.Tensor)) and data.dtype in (np.uint8, torch.uint8):
        raise QfsdkError("uint8 images need the model's preprocessing contract; pass preprocessed float images")
    if isinstance(data, np.ndarray):
        data = contract.preprocess(data) if data.dtype == np.uint8 else data
        data = torch.from_numpy(np.ascontiguousarray(data))
    if isinstance(data, torch.Tensor):
        if data.dtype == torch.uint8:
            data = torch.from_numpy(contract.preprocess(data.numpy()))
        expected = (3, *contract.input_size) if contract else tuple(data.shape[1:])
        if tuple(data.shape[1:]) != expected:
            raise QfsdkError(f"calibration images are {tuple(data.shape[1:])}, the model expects {expected}")
        return TensorBatches(data, batch_size)
    if isinstance(data, BatchSource):
        return data
    if hasattr(data, "__iter__") and hasattr(data, "__len__"):
        return IterableBatches(data, len(data))
    raise QfsdkError(
        f"cannot use {type(data).__name__} as calibration data: pass a tensor/array of images, "
        "a folder dataset, or an iterable of (B, 3, H, W) batches with a known length"
    )


def pixels_to_input(pixels: torch.Tensor, contract: FaceContract) -> torch.Tensor:
    """RGB pixels (N, 3, H, W) in 0..255 (float, differentiable) -> the model's normalised input
    (:meth:`FaceContract.normalise <qfsdk.runtime.contract.FaceContract.normalise>` on torch tensors)."""
    return contract.normalise(pixels, lambda values: torch.as_tensor(values, dtype=pixels.dtype, device=pixels.device))


def batch_seed(seed: int, batch_index: int) -> int:
    """A torch seed for batch ``batch_index`` of a run seeded with ``seed``: batches are independent,
    so any batch can be regenerated (or a run resumed) without replaying the ones before it."""
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)
