"""Photos in, one embedding per face out: detect (:mod:`.detect`), align to the model's template, embed.

A model whose template is in a detector's points (ArcFace's: eye centres, nose tip, mouth corners)
gets the detector's landmarks fitted to it as they are; one whose template uses other points
(dlib's eye corners and nose base) gets them fitted to its stand-in of
:data:`qfsdk.runtime.align.DETECTOR_TEMPLATES`, measured against that model's own pipeline.

Faces are sampled as each template's own pipeline samples them (:data:`PYRAMID`): dlib's
``get_face_chip`` halves large faces first (the pyramid of qfsdk.runtime.align), insightface's
``norm_crop`` and OpenCV's ``alignCrop`` warp once, bilinear (``cv2.warpAffine``); on a face 6x
larger than the crop the two differ by a cosine of 0.91 for SFace, so the model's own way is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from .ahead import map_ahead
from .align import DETECTOR_TEMPLATES, TEMPLATES, check_landmarks, output_to_image
from .contract import FaceContract
from .detect import Faces, FaceDetector, detector_for
from .errors import ConfigError, LandmarkError
from .images import UnreadableImage, as_image_list, check_rgb_image, load_rgb
from .resize import warp

if TYPE_CHECKING:
    from .embedder import Embedder

MAX_WORKERS = 4  # photo decoding + detection threads ahead of the embedding
# Whether a template's own pipeline samples through the halving pyramid, by template name (else: one warp).
PYRAMID: dict[str, bool] = {"dlib": True, "arcface": False}


@dataclass
class PhotoEmbeddings:
    """One row per face: ``sources`` (K,) the index of its photo, ``boxes`` (K, 4) x, y, w, h,
    ``landmarks`` (K, 5, 2), ``scores`` (K,), ``embeddings`` (K, D) float32; ``faces`` (N,) the
    number of faces kept per photo (0: none found)."""

    sources: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    faces: np.ndarray

    def __len__(self) -> int:
        return len(self.sources)


def detector_template(contract: FaceContract) -> tuple[tuple[tuple[float, float], ...], str, bool]:
    """(template in the detector's landmark semantics, fit direction, pyramid sampling) for a model's contract."""
    if contract.template is None:
        raise ConfigError("the model's contract has no alignment template (imported with --template none): "
                          "detected faces cannot be aligned for it; pass aligned crops instead")
    name = next((n for n, t in TEMPLATES.items() if np.allclose(t, contract.template)), None)
    return DETECTOR_TEMPLATES.get(name, contract.template), contract.template_fit, PYRAMID.get(name, False)


def align_faces(image: np.ndarray, faces: Faces, contract: FaceContract) -> tuple[np.ndarray, np.ndarray]:
    """(crops (K', H, W, 3) uint8, indices of the K' faces of ``faces`` that could be aligned)."""
    template, fit, pyramid = detector_template(contract)
    crops, kept = [], []
    for i, points in enumerate(faces.landmarks):
        try:
            M, t = output_to_image(check_landmarks(points), template, fit)
            crops.append(warp(image, M, t, contract.input_size, pyramid))
            kept.append(i)
        except LandmarkError:  # degenerate points (all at one spot, on one line): no face to align
            continue
    shape = (len(crops), *contract.input_size, 3)
    return (np.stack(crops) if crops else np.zeros(shape, np.uint8)), np.asarray(kept, np.int64)


@dataclass
class _Photo:
    """One photo after detection and alignment (or why it has no faces)."""

    faces: Faces
    crops: np.ndarray
    grayscale: bool = False
    unreadable: str | None = None


def _prepare(image: np.ndarray, detector: FaceDetector, contract: FaceContract, max_faces: int | None,
             largest: bool, grayscale: bool = False) -> _Photo:
    faces = detector.detect(image).select(max_faces, largest)
    crops, kept = align_faces(image, faces, contract)
    return _Photo(faces.take(kept), crops, grayscale)


def _collect(embedder: "Embedder", photos: Iterable[_Photo], on_photo=None) -> PhotoEmbeddings:
    """Embed the crops of ``photos`` one batch at a time; ``on_photo(index, photo)`` sees each photo."""
    rows: list[tuple[int, Faces]] = []
    counts: list[int] = []
    pending: list[np.ndarray] = []
    chunks: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            chunks.append(embedder.embed(np.concatenate(pending)))
            pending.clear()

    for index, photo in enumerate(photos):
        if on_photo is not None:
            on_photo(index, photo)
        counts.append(len(photo.faces))
        if len(photo.faces):
            rows.append((index, photo.faces))
            pending.append(photo.crops)
            if sum(map(len, pending)) >= embedder.batch_size:
                flush()
    flush()
    size = embedder.contract.embedding_size
    return PhotoEmbeddings(
        sources=np.concatenate([np.full(len(f), i, np.int64) for i, f in rows]) if rows else np.zeros(0, np.int64),
        boxes=np.concatenate([f.boxes for _, f in rows]) if rows else np.zeros((0, 4), np.float32),
        landmarks=np.concatenate([f.landmarks for _, f in rows]) if rows else np.zeros((0, 5, 2), np.float32),
        scores=np.concatenate([f.scores for _, f in rows]) if rows else np.zeros(0, np.float32),
        embeddings=np.concatenate(chunks) if chunks else np.zeros((0, size), np.float32),
        faces=np.asarray(counts, np.int64),
    )


def embed_photos(embedder: "Embedder", images: np.ndarray | Sequence[np.ndarray], *, max_faces: int | None = None,
                 largest: bool = False, detector: FaceDetector | None = None) -> PhotoEmbeddings:
    """Detect the faces of each uint8 RGB photo, align each to ``embedder``'s template and embed it.

    ``max_faces``: the most faces kept per photo (best score first; with ``largest``, biggest box
    first); ``detector``: default the packaged YuNet on the embedder's backend.
    """
    detector_template(embedder.contract)  # a model without a template fails before any work
    detector = detector or detector_for(embedder, embedder.backend_name)
    items = [check_rgb_image(image, i) for i, image in enumerate(as_image_list(images))]
    contract = embedder.contract
    return _collect(embedder, (_prepare(image, detector, contract, max_faces, largest) for image in items))


@dataclass
class PhotoFileResult:
    """:class:`PhotoEmbeddings` of ``files`` plus the files that needed attention."""

    result: PhotoEmbeddings
    files: list[Path]
    unreadable: list[Path] = field(default_factory=list)
    no_face: list[Path] = field(default_factory=list)
    grayscale: list[Path] = field(default_factory=list)
    reasons: dict[Path, str] = field(default_factory=dict)

    @property
    def paths(self) -> list[Path]:
        """The photo of each face row."""
        return [self.files[i] for i in self.result.sources]


def embed_photo_files(embedder: "Embedder", files: Sequence[Path], *, max_faces: int | None = None,
                      largest: bool = False, detector: FaceDetector | None = None,
                      workers: int | None = None) -> PhotoFileResult:
    """:func:`embed_photos` over image files: decoding and detection run in ``workers`` threads ahead
    of the embedding; unreadable files and photos without a face are listed, never fatal."""
    detector_template(embedder.contract)  # a model without a template fails before any work
    detector = detector or detector_for(embedder, embedder.backend_name)
    contract = embedder.contract
    empty = np.zeros((0, *contract.input_size, 3), np.uint8)

    def prepare(path: Path) -> _Photo:
        try:
            pixels, grayscale = load_rgb(path)
        except UnreadableImage as exc:
            return _Photo(Faces(), empty, unreadable=exc.reason)
        return _prepare(pixels, detector, contract, max_faces, largest, grayscale)

    out = PhotoFileResult(None, list(files))  # type: ignore[arg-type]

    def note(index: int, photo: _Photo) -> None:
        path = out.files[index]
        if photo.unreadable is not None:
            out.unreadable.append(path)
            out.reasons[path] = photo.unreadable
        elif not len(photo.faces):
            out.no_face.append(path)
        if photo.grayscale:
            out.grayscale.append(path)

    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    out.result = _collect(embedder, map_ahead(prepare, out.files, workers, 2 * workers), note)
    return out
