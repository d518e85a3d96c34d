"""A stream of the packaged generator's faces for training: made on demand, never written to disk.

Image ``i`` of a stream is a pure function of (seed, i): the faces come in blocks of
:data:`BLOCK` drawn with :meth:`AlignedFaces.batch` at the block's own seed, so any subset can be
made in any order, by any process, and a resumed run sees the same pixels as an uninterrupted one.
A block is made the first time one of its images is asked for and kept as 8-bit pixels (10k faces
of 112x112: 376 MB), so the first epoch pays for generation and later ones only for preprocessing.
"""

from __future__ import annotations

import numpy as np
import torch

from qfsdk.calib.face_generator import AlignedFaces
from qfsdk.errors import ConfigError
from qfsdk.runtime.contract import FaceContract

BLOCK = 32  # faces generated together (one generator forward pass)
SEED_STRIDE = 1_000_003  # block seeds: seed * SEED_STRIDE + block, disjoint across seeds below it


class FaceStream:
    """``count`` aligned generator faces for ``contract``, indexed like a tensor of preprocessed images.

    ``stream[indices]`` (a 1-d integer tensor) is the float32 (k, 3, H, W) network input of those
    faces; ``stream[a:b]`` is a view of faces a..b-1 sharing the cache; ``len(stream)`` is its size.
    """

    def __init__(self, contract: FaceContract, count: int, seed: int = 0, faces: AlignedFaces | None = None):
        if count < 1:
            raise ConfigError(f"a face stream needs at least one image, got {count}")
        self.contract = contract
        self.seed = seed
        self._faces = faces or AlignedFaces(contract)
        self._blocks: dict[int, np.ndarray] = {}  # shared by every view
        self._dropped: dict[int, int] = {}  # per block: generated faces the detector missed (each drawn again)
        self._start, self._stop = 0, count

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, key: slice | torch.Tensor) -> "FaceStream | torch.Tensor":
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1 or stop <= start:
                raise ConfigError(f"a face stream slices into a non-empty contiguous range, not {key}")
            view = object.__new__(FaceStream)
            view.__dict__.update(self.__dict__)
            view._start, view._stop = self._start + start, self._start + stop
            return view
        indices = torch.as_tensor(key, dtype=torch.long).reshape(-1)
        if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"face stream index out of range 0..{len(self) - 1}")
        pixels = np.stack([self.pixels(self._start + int(i)) for i in indices])
        return torch.from_numpy(self.contract.preprocess(pixels))

    @property
    def dropped(self) -> int:
        """Generated faces the detector missed so far, over the blocks made (each replaced by another draw)."""
        return sum(self._dropped.values())

    def pixels(self, index: int) -> np.ndarray:
        """Face ``index`` of the whole stream as uint8 RGB (H, W, 3)."""
        block, offset = divmod(index, BLOCK)
        if block not in self._blocks:
            self._blocks[block], self._dropped[block] = self._faces.batch(BLOCK, seed=self.seed * SEED_STRIDE + block)
        return self._blocks[block][offset]
