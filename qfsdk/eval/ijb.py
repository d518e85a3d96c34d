"""IJB-B / IJB-C 1:1 template verification, as insightface's IJB evaluation does it.

Layout (insightface's ``IJB_release/IJBB`` or ``IJBC``)::

    meta/ijbb_face_tid_mid.txt         image_name template_id media_id      (one line per face)
    meta/ijbb_template_pair_label.txt  template_id template_id label(0/1)
    meta/ijbb_name_5pts_score.txt      image_name x1 y1 ... x5 y5 detector_score (same order)
    loose_crop/<image_name>

Per face: align the loose crop with its 5 landmarks, embed it and its mirror image and add the two
(not normalised: the norm carries quality), times the detector score. Per template: average the
faces of each media, sum the media, L2-normalise. Pair score: cosine of the two templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from qfsdk.progress import progress_bar

from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract

from .align import align_face
from .metrics import l2_normalize, roc
from .models import DEFAULT_BATCH_SIZE, FaceEmbedder

IJB_FARS = (1e-5, 1e-4)
PAIR_CHUNK = 1 << 18


@dataclass(frozen=True)
class IJBProtocol:
    """The faces, templates and pairs of one IJB release folder."""

    name: str
    root: Path
    images: list[str]
    landmarks: np.ndarray  # (N, 5, 2) x, y in loose-crop pixels
    detector_scores: np.ndarray  # (N,)
    templates: np.ndarray  # (N,) template id of each face
    medias: np.ndarray  # (N,) media id of each face
    pairs: np.ndarray  # (P, 2) template ids
    labels: np.ndarray  # (P,) genuine


def _rows(path: Path, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of ``path``, each with ``columns`` fields (blank lines skipped)."""
    if not path.is_file():
        raise QfsdkError(f"{path}: missing IJB protocol file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise QfsdkError(f"{path}:{number}: expected {columns} fields, got {len(fields)}")
        rows.append(fields)
    if not rows:
        raise QfsdkError(f"{path}: empty IJB protocol file")
    return rows


def _numbers(rows: list[list[str]], path: Path, dtype: type) -> np.ndarray:
    try:
        return np.array(rows, dtype=dtype)
    except ValueError as exc:
        raise QfsdkError(f"{path}: not numeric ({exc})") from None


def read_ijb(root: str | Path) -> IJBProtocol:
    """Read the protocol files of an IJB-B/IJB-C folder (see the module docstring)."""
    root = Path(root)
    found = sorted((root / "meta").glob("*_face_tid_mid.txt"))
    if len(found) != 1:
        raise QfsdkError(f"{root}: expected one meta/<name>_face_tid_mid.txt (insightface IJB layout), found {len(found)}")
    prefix = found[0].name.removesuffix("_face_tid_mid.txt")
    faces = _rows(found[0], 3)
    points_file = root / "meta" / f"{prefix}_name_5pts_score.txt"
    points = _rows(points_file, 12)
    if [row[0] for row in points] != [row[0] for row in faces]:
        raise QfsdkError(f"{points_file}: image names differ from {found[0].name} (both list every face, in the same order)")
    pairs_file = root / "meta" / f"{prefix}_template_pair_label.txt"
    pairs = _numbers(_rows(pairs_file, 3), pairs_file, np.int64)
    ids = _numbers([row[1:] for row in faces], found[0], np.int64)
    values = _numbers([row[1:] for row in points], points_file, np.float64)
    return IJBProtocol(
        name=prefix.upper(),
        root=root,
        images=[row[0] for row in faces],
        landmarks=values[:, :10].reshape(-1, 5, 2),
        detector_scores=values[:, 10],
        templates=ids[:, 0],
        medias=ids[:, 1],
        pairs=pairs[:, :2],
        labels=pairs[:, 2].astype(bool),
    )


def template_features(features: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted template ids, their pooled unit features): mean per media, sum over a template's media, L2."""
    media_keys, media_of_face = np.unique(np.stack([templates, medias], axis=1), axis=0, return_inverse=True)
    media_of_face = media_of_face.ravel()
    media_sums = np.zeros((len(media_keys), features.shape[1]))
    np.add.at(media_sums, media_of_face, features)
    media_means = media_sums / np.bincount(media_of_face, minlength=len(media_keys))[:, None]
    template_ids, template_of_media = np.unique(media_keys[:, 0], return_inverse=True)
    pooled = np.zeros((len(template_ids), features.shape[1]))
    np.add.at(pooled, template_of_media.ravel(), media_means)
    return template_ids, l2_normalize(pooled)


def pair_scores(template_ids: np.ndarray, pooled: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each template pair (chunked to bound memory)."""
    rows = np.searchsorted(template_ids, pairs)
    rows = np.minimum(rows, len(template_ids) - 1)
    missing = template_ids[rows] != pairs
    if missing.any():
        raise QfsdkError(f"template {int(pairs[missing][0])} of the pair list has no faces in the metadata")
    scores = np.empty(len(pairs))
    for start in range(0, len(pairs), PAIR_CHUNK):
        a, b = rows[start : start + PAIR_CHUNK].T
        scores[start : start + PAIR_CHUNK] = np.sum(pooled[a] * pooled[b], axis=1)
    return scores


def _aligned(protocol: IJBProtocol, index: int, contract: FaceContract) -> np.ndarray:
    path = protocol.root / "loose_crop" / protocol.images[index]
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise QfsdkError(f"{path}: cannot read the loose crop ({exc})") from None
    return align_face(pixels, protocol.landmarks[index], contract)


def face_features(model: FaceEmbedder, protocol: IJBProtocol, batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False) -> np.ndarray:
    """``(emb(face) + emb(mirrored face)) * detector score`` for every face, unnormalised."""
    count = len(protocol.images)
    features = []
    for start in progress_bar(range(0, count, batch_size), desc=f"embed {protocol.name}", unit="batch", disable=not progress):
        crops = np.stack([_aligned(protocol, index, model.contract) for index in range(start, min(start + batch_size, count))])
        mirrored = np.ascontiguousarray(crops[:, :, ::-1])
        features.append(model.embed(crops).astype(np.float64) + model.embed(mirrored))
    return np.concatenate(features) * protocol.detector_scores[:, None]


def ijb_metrics(features: np.ndarray, protocol: IJBProtocol) -> dict[str, Any]:
    """TAR at each FAR of :data:`IJB_FARS` and the sampled ROC, from per-face features."""
    template_ids, pooled = template_features(features, protocol.templates, protocol.medias)
    curve = roc(pair_scores(template_ids, pooled, protocol.pairs), protocol.labels)
    return {
        "pairs": int(len(protocol.labels)),
        "templates": int(len(template_ids)),
        "faces": int(len(features)),
        "tar_at_far": {f"{far:g}": curve.tar_at(far) for far in IJB_FARS},
        "far_resolution": 1.0 / curve.negatives,
        "roc": curve.sampled(),
    }


def evaluate_ijb(model: FaceEmbedder, protocol: IJBProtocol, batch_size: int = DEFAULT_BATCH_SIZE,
                 progress: bool = False) -> dict[str, Any]:
    """1:1 template verification of ``model`` on ``protocol`` (see :func:`read_ijb`)."""
    return ijb_metrics(face_features(model, protocol, batch_size, progress), protocol)
