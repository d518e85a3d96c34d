"""A folder of face images (nested; the suffixes ``qfsdk embed`` reads) as a :class:`~qfsdk.calib.data.BatchSource`.

Images are found (hidden files and folders skipped) and decoded batch by batch (memory stays
bounded) by the runtime (:mod:`qfsdk.runtime.images`, as ``qfsdk embed`` finds and decodes
crops): EXIF-rotated, converted to RGB (grayscale, palette and RGBA are fine; alpha is
dropped) and fitted to the contract's size (:func:`~qfsdk.runtime.images.fit`): a pure resize
when the aspect ratio already matches, else a centre crop to the contract's aspect ratio
followed by the resize. Files that cannot be read are skipped, never a crash:
one warning (count and first names) when the source is built, and one more only if a file
with a valid header turns out to hold corrupt pixels while iterating. A folder without a
single readable image is an error naming the folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.images import IMAGE_SUFFIXES, READ_ERRORS, find_images, load_image

NAMED_IN_WARNING = 3  # unreadable files listed by name in the warning


def _header_readable(path: Path) -> bool:
    """Whether Pillow recognises the file (reads the header only, not the pixels)."""
    try:
        with Image.open(path) as image:
            return image.width > 0 and image.height > 0
    except READ_ERRORS:
        return False


def _warn_skipped(root: Path, skipped: list[Path], when: str) -> None:
    names = ", ".join(str(path.relative_to(root)) for path in skipped[:NAMED_IN_WARNING])
    more = f" and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s) {when}: {names}{more}", stacklevel=3)


class ImageFolderSource:
    """Batches of images found under ``root``, preprocessed with ``contract``.

    Unreadable headers (zero-byte files, text named ``.png``) are found when the source is
    built; pixels are decoded while iterating, so a file whose data is corrupt (a truncated
    JPEG) is skipped then, the batch is topped up from the next files, and from the next pass
    on ``len()`` is exact. ``shuffle`` draws a new order each pass from ``seed``.
    """

    def __init__(
        self,
        root: str | Path,
        contract: FaceContract,
        batch_size: int = 32,
        shuffle: bool = False,
        seed: int = 0,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise QfsdkError(f"{self.root}: no such image folder")
        self.contract = contract
        self.batch_size = max(1, int(batch_size))
        self.shuffle = shuffle
        self.seed = seed
        self._passes = 0
        candidates = find_images(self.root)
        readable = {path: _header_readable(path) for path in candidates}
        self.files = [path for path, ok in readable.items() if ok]
        self.skipped = [path for path, ok in readable.items() if not ok]
        if not self.files:
            raise self._no_images_error(len(candidates))
        if self.skipped:
            _warn_skipped(self.root, self.skipped, "(not a readable image)")

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        failed: list[Path] = []
        pending: list[np.ndarray] = []
        yielded = 0
        for path in self._order():
            try:
                pending.append(load_image(path, self.contract.input_size))
            except READ_ERRORS:
                failed.append(path)
                continue
            if len(pending) == self.batch_size:
                yield self._to_batch(pending)
                yielded, pending = yielded + 1, []
        if pending:
            yield self._to_batch(pending)
            yielded += 1
        self._forget(failed)
        if not yielded:
            raise self._no_images_error(len(failed))

    def _order(self) -> list[Path]:
        """This pass's file order: sorted, or a seeded permutation per pass."""
        self._passes += 1
        if not self.shuffle:
            return list(self.files)
        rng = np.random.default_rng([self.seed, self._passes])
        return [self.files[i] for i in rng.permutation(len(self.files))]

    def _to_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(self.contract.preprocess(np.stack(images)))

    def _forget(self, failed: list[Path]) -> None:
        """Drop files whose pixels failed to decode, once, with one warning."""
        if not failed:
            return
        dropped = set(failed)
        self.files = [path for path in self.files if path not in dropped]
        self.skipped += failed
        _warn_skipped(self.root, failed, "(corrupt image data)")

    def _no_images_error(self, unreadable: int) -> QfsdkError:
        found = f" ({unreadable} file(s) with image suffixes could not be read)" if unreadable else ""
        return QfsdkError(
            f"{self.root}: no readable images{found}; expected image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), possibly in subfolders"
        )
