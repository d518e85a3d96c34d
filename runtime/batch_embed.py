"""Embed many image files in batches: skip what cannot be read, report what was changed.

Decoding, resizing and alignment run in a thread pool a few batches ahead of inference (Pillow,
numpy and the backends release the GIL), so a folder embeds about as fast as the model runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from tqdm.auto import tqdm

from .ahead import map_ahead
from .errors import LandmarkError
from .images import UnreadableImage, fit, load_rgb

if TYPE_CHECKING:
    from .embedder import Embedder

MAX_WORKERS = 4  # decoding threads; more gain nothing beside a backend that uses the cores
BATCHES_AHEAD = 2  # batches decoded ahead of the one being embedded
FILES_PER_TASK = 8  # files one thread decodes per task (a task per file costs more in hand-offs)


@dataclass
class EmbedResult:
    """Embeddings of the files in ``paths`` (input order) and the files that needed attention.

    ``reasons`` says why each file in ``unreadable`` and ``bad_landmarks`` was skipped.
    """

    embeddings: np.ndarray
    paths: list[Path]
    unreadable: list[Path] = field(default_factory=list)
    no_landmarks: list[Path] = field(default_factory=list)
    bad_landmarks: list[Path] = field(default_factory=list)
    grayscale: list[Path] = field(default_factory=list)
    resized: list[Path] = field(default_factory=list)
    reasons: dict[Path, str] = field(default_factory=dict)

    @property
    def skipped(self) -> list[Path]:
        """Every file that was not embedded, in the order of the categories above."""
        return [*self.unreadable, *self.no_landmarks, *self.bad_landmarks]


@dataclass
class _Crop:
    """One file after decoding: its model-size crop, or which list it is skipped into and why."""

    path: Path
    pixels: np.ndarray | None = None
    grayscale: bool = False
    resized: bool = False
    skip: str | None = None  # an EmbedResult list name
    reason: str | None = None


def embed_files(embedder: "Embedder", files: Sequence[Path], landmarks: dict[Path, np.ndarray] | None = None,
                *, workers: int | None = None) -> EmbedResult:
    """Embed ``files`` one batch at a time (a progress bar appears after 2 s on a terminal).

    Without ``landmarks`` the files are aligned crops; crops of another size are resized to the
    model input and listed in ``resized``. With ``landmarks`` ({resolved path: (5, 2)}), full
    images are aligned; files without an entry are skipped into ``no_landmarks``, those whose
    landmarks cannot align a face (outside the image, degenerate) into ``bad_landmarks``.
    Unreadable files (and anything but a regular file) are skipped; grayscale ones are converted
    to RGB. ``workers`` decoding threads (default: up to 4) run ahead of inference.
    """
    size = embedder.contract.input_size

    def prepare(path: Path) -> _Crop:
        try:
            pixels, grayscale = load_rgb(path)
        except UnreadableImage as exc:
            return _Crop(path, skip="unreadable", reason=exc.reason)
        if landmarks is not None:
            points = landmarks.get(path.resolve())
            if points is None:
                return _Crop(path, skip="no_landmarks")
            try:
                return _Crop(path, embedder.align(pixels, points), grayscale)
            except LandmarkError as exc:
                return _Crop(path, skip="bad_landmarks", reason=str(exc))
        if pixels.shape[:2] != size:
            return _Crop(path, fit(pixels, size), grayscale, resized=True)
        return _Crop(path, pixels, grayscale)

    result = EmbedResult(np.empty((0, embedder.contract.embedding_size), np.float32), [])
    chunks: list[np.ndarray] = []
    batch: list[_Crop] = []

    def flush() -> None:
        chunks.append(embedder.embed(np.stack([item.pixels for item in batch])))
        result.paths.extend(item.path for item in batch)
        batch.clear()

    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    tasks = [files[i : i + FILES_PER_TASK] for i in range(0, len(files), FILES_PER_TASK)]
    ahead = max(workers, BATCHES_AHEAD * embedder.batch_size // FILES_PER_TASK)
    decoded = map_ahead(lambda task: [prepare(path) for path in task], tasks, workers, ahead)
    with tqdm(total=len(files), unit="img", desc="embed", delay=2, disable=None, leave=False) as bar:
        for item in (item for task in decoded for item in task):
            bar.update(1)
            if item.skip is not None:
                getattr(result, item.skip).append(item.path)
                if item.reason is not None:
                    result.reasons[item.path] = item.reason
                continue
            if item.grayscale:
                result.grayscale.append(item.path)
            if item.resized:
                result.resized.append(item.path)
            batch.append(item)
            if len(batch) == embedder.batch_size:
                flush()
        if batch:
            flush()
    if chunks:
        result.embeddings = np.concatenate(chunks)
    return result
