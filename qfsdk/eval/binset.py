"""insightface ``.bin`` verification sets (lfw, cfp_fp, agedb_30, calfw, cplfw), read safely.

A ``.bin`` file is a pickled tuple ``(images, issame)``: 2N encoded image byte strings (JPEG or
PNG, consecutive pairs) and N booleans (same identity). The files were written by Python 2, so
byte strings are read with ``encoding="bytes"``. The unpickler refuses every global, so a file
that would import or call anything is rejected before any of it runs; the result is then checked
to be exactly that tuple.

The sets hold aligned 112x112 faces. A model with another input size (``dlib_resnet``: 150x150)
gets them resized, which is not its own alignment (dlib's chip has more margin): its accuracy
on these sets understates what it reaches on its own chips.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from qfsdk.errors import QfsdkError
from qfsdk.eval.metrics import FOLDS


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler for plain data only: any reference to a global (class or function) is refused."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


@dataclass(frozen=True)
class BinSet:
    """A verification set: ``images[2i]`` and ``images[2i+1]`` form pair ``i``, ``issame[i]`` its label."""

    name: str
    path: Path
    images: Sequence[bytes]
    issame: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    def decode(self, start: int, stop: int, size: tuple[int, int]) -> np.ndarray:
        """Images ``start:stop`` as uint8 RGB (N, H, W, 3), resized to ``size`` (H, W) if needed."""
        return np.stack([self._decode_one(index, size) for index in range(start, stop)])

    def _decode_one(self, index: int, size: tuple[int, int]) -> np.ndarray:
        height, width = size
        try:
            with Image.open(io.BytesIO(self.images[index])) as image:
                image = image.convert("RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BICUBIC)
                return np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise QfsdkError(f"{self.path}: image {index} is not a readable JPEG/PNG ({exc})") from None


def read_bin(path: str | Path) -> BinSet:
    """Read and validate an insightface ``.bin`` set without executing anything it contains."""
    from qfsdk.file_kinds import require

    path = Path(path)
    if not path.is_file():
        raise QfsdkError(f"{path}: no such verification set")
    # protocol 0/1 pickles read as text, damaged ones as unknown data: the unpickler below judges those
    require(path, ["pickle", "text", "unknown"], "an insightface .bin verification set",
            "a .bin set is a pickled (images, issame) tuple")
    try:
        with path.open("rb") as handle:
            data = _NoGlobalsUnpickler(handle, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise QfsdkError(
                f"{path}: refused: the pickle references a Python global ({str(exc).removeprefix('refused global ')}); "
                "a .bin set holds only byte strings and booleans (re-save lists of bytes/bools with pickle protocol >= 3)"
            ) from None
        raise QfsdkError(f"{path}: truncated or corrupt .bin set ({' '.join(str(exc).split())})") from None
    except (EOFError, ValueError, IndexError, MemoryError) as exc:
        raise QfsdkError(f"{path}: truncated or corrupt .bin set ({' '.join(str(exc).split()) or 'pickle data ended early'})") from None
    return BinSet(path.stem, path, *_validated(data, path))


def _validated(data: object, path: Path) -> tuple[Sequence[bytes], np.ndarray]:
    """The (images, issame) of a well-formed set, or a QfsdkError saying what is wrong."""
    if not (isinstance(data, tuple) and len(data) == 2):
        raise QfsdkError(f"{path}: not an insightface .bin set (expected a pickled (images, issame) tuple)")
    images, issame = data
    if not isinstance(images, (list, tuple)) or not all(isinstance(item, bytes) for item in images):
        raise QfsdkError(f"{path}: the first element must be a list of encoded image byte strings")
    if not isinstance(issame, (list, tuple)) or not all(isinstance(item, bool) for item in issame):
        raise QfsdkError(f"{path}: the second element must be a list of booleans (same identity per pair)")
    if len(images) != 2 * len(issame) or not issame:
        raise QfsdkError(f"{path}: {len(images)} images for {len(issame)} pairs (expected two per pair, at least one pair)")
    if len(issame) < FOLDS:
        raise QfsdkError(f"{path}: {len(issame)} pairs; {FOLDS}-fold accuracy needs at least {FOLDS} pairs (one per fold)")
    return images, np.asarray(issame, dtype=bool)
