"""``qfsdk embed --detect``: every face (or the largest) of each photo, one .npz row per face (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from qfsdk.cli.common import listed
from qfsdk.errors import QfsdkError
from qfsdk.runtime import Embedder
from qfsdk.runtime.detect import DEFAULT_MAX_SIZE, DETECTOR_BACKEND, DetectorOptions, FaceDetector
from qfsdk.runtime.distributed import PhotoOptions
from qfsdk.runtime.files import atomic_output
from qfsdk.runtime.photos import embed_photo_files

# --detect MODE -> (faces kept per photo, largest first)
DETECT_MODES: dict[str, tuple[int | None, bool]] = {"all": (None, False), "largest": (1, True)}


def photo_options(mode: str, max_size: int, score_threshold: float) -> PhotoOptions:
    """The settings of ``--detect MODE --detect-size N --detect-threshold T`` (size 0: full size)."""
    max_faces, largest = DETECT_MODES[mode]
    return PhotoOptions(DetectorOptions(score_threshold, max_size=max_size or None), max_faces, largest)


def embed_detected(model: Path, files: list[Path], output: Path, mode: str, *, backend: str, batch_size: int,
                   flip: bool, normalize: bool, threads: int | None, max_size: int | None = DEFAULT_MAX_SIZE,
                   score_threshold: float = 0.6) -> None:
    """Detect, align and embed the faces of ``files`` into ``output``; report photos without a face."""
    settings = photo_options(mode, max_size or 0, score_threshold)
    with Embedder(model, backend, batch_size=batch_size, flip=flip, normalize=normalize, threads=threads) as embedder:
        detector = FaceDetector(backend=DETECTOR_BACKEND.get(embedder.backend_name, embedder.backend_name),
                                threads=threads, options=settings.detector)
        with detector:
            done = embed_photo_files(embedder, files, max_faces=settings.max_faces, largest=settings.largest, detector=detector)
        backend_name = embedder.backend_name
    if len(done.unreadable) == len(files):
        raise QfsdkError(f"none of the {len(files)} images could be read: {listed(done.unreadable, done.reasons, '; ')}")
    faces = done.result
    with atomic_output(output) as tmp, open(tmp, "wb") as file:
        np.savez(file, embeddings=faces.embeddings, paths=np.array([str(p) for p in done.paths], dtype=str),
                 boxes=faces.boxes, landmarks=faces.landmarks, scores=faces.scores,
                 no_face=np.array([str(p) for p in done.no_face], dtype=str))
    photos = len(files) - len(done.unreadable) - len(done.no_face)
    click.echo(f"embedded {len(faces)} faces of {photos} of {len(files)} images "
               f"({faces.embeddings.shape[1]}-d, {backend_name}, --detect {mode}) -> {output}")
    for count_of, what in ((done.no_face, "found no face in {}"), (done.unreadable, "skipped {} unreadable"),
                           (done.grayscale, "converted {} grayscale to RGB")):
        if count_of:
            click.echo(f"{what.format(len(count_of))}: {listed(count_of, done.reasons)}", err=True)
