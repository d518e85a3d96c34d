"""Embed many image files in batches: skip what cannot be read, report what was changed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from .embedder import Embedder
from .images import UnreadableImage, fit, load_rgb


@dataclass
class EmbedResult:
    """Embeddings of the files in ``paths`` (input order) and the files that needed attention."""

    embeddings: np.ndarray
    paths: list[Path]
    unreadable: list[Path] = field(default_factory=list)
    no_landmarks: list[Path] = field(default_factory=list)
    grayscale: list[Path] = field(default_factory=list)
    resized: list[Path] = field(default_factory=list)


def embed_files(embedder: Embedder, files: Sequence[Path], landmarks: dict[Path, np.ndarray] | None = None) -> EmbedResult:
    """Embed ``files`` one batch at a time (a progress bar appears after 2 s on a terminal).

    Without ``landmarks`` the files are aligned crops; crops of another size are resized to the
    model input and listed in ``resized``. With ``landmarks`` ({resolved path: (5, 2)}), full
    images are aligned and files without an entry are skipped. Unreadable files are skipped;
    grayscale ones are converted to RGB.
    """
    size = embedder.contract.input_size
    result = EmbedResult(np.empty((0, embedder.contract.embedding_size), np.float32), [])
    chunks = []
    with tqdm(total=len(files), unit="img", desc="embed", delay=2, disable=None, leave=False) as bar:
        for start in range(0, len(files), embedder.batch_size):
            images, points, kept = [], [], []
            for path in files[start : start + embedder.batch_size]:
                try:
                    pixels, grayscale = load_rgb(path)
                except UnreadableImage:
                    result.unreadable.append(path)
                    continue
                if landmarks is not None:
                    found = landmarks.get(path.resolve())
                    if found is None:
                        result.no_landmarks.append(path)
                        continue
                    points.append(found)
                elif pixels.shape[:2] != size:
                    pixels = fit(pixels, size)
                    result.resized.append(path)
                if grayscale:
                    result.grayscale.append(path)
                images.append(pixels)
                kept.append(path)
            if images:
                chunks.append(embedder.embed(images, np.stack(points) if landmarks is not None else None))
                result.paths.extend(kept)
            bar.update(min(embedder.batch_size, len(files) - start))
    if chunks:
        result.embeddings = np.concatenate(chunks)
    return result
