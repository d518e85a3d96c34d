"""How far a quantized model's embeddings are from its float model's, on the same face crops.

Per image: cosine between the two raw embeddings. Over all image pairs: how many same/different
decisions change at the model's threshold (``euclidean``: distance of the raw embeddings below the
threshold, dlib's 0.6; ``cosine``: cosine similarity at or above it). A cosine model without a
threshold has no decisions to flip unless one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract

from .metrics import l2_normalize


def load_crops(folder: str | Path, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """(relative names, uint8 RGB crops (N, H, W, 3)) of every image under ``folder``, fitted to ``size``."""
    from qfsdk.runtime.images import READ_ERRORS, find_images, load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise QfsdkError(f"{folder}: no such image folder")
    names, crops = [], []
    for path in find_images(folder):
        try:
            crops.append(load_image(path, size))
        except READ_ERRORS:
            continue
        names.append(str(path.relative_to(folder)))
    if len(crops) < 2:
        raise QfsdkError(f"{folder}: fidelity needs at least 2 readable face images, found {len(crops)}")
    return names, np.stack(crops)


def same_person(embeddings: np.ndarray, distance: str, threshold: float) -> np.ndarray:
    """Decision for every pair i < j (upper triangle, row-major) at ``threshold``."""
    first, second = np.triu_indices(len(embeddings), k=1)
    if distance == "euclidean":
        return np.linalg.norm(embeddings[first] - embeddings[second], axis=1) < threshold
    unit = l2_normalize(embeddings)
    return np.sum(unit[first] * unit[second], axis=1) >= threshold


def compare_embeddings(
    reference: np.ndarray, quantized: np.ndarray, contract: FaceContract, names: list[str], threshold: float | None = None
) -> dict[str, Any]:
    """Per-image cosine and decision flips of ``quantized`` vs ``reference`` embeddings."""
    cosine = np.sum(l2_normalize(reference) * l2_normalize(quantized), axis=1)
    threshold = contract.threshold if threshold is None else threshold
    result: dict[str, Any] = {
        "images": len(names),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "per_image": [{"image": name, "cosine": float(c)} for name, c in zip(names, cosine)],
        "distance": contract.distance,
        "threshold": threshold,
        "pairs": len(names) * (len(names) - 1) // 2,
    }
    if threshold is None:
        result["decision_flips"] = None
        result["note"] = "cosine model without a threshold: no decision flips counted (pass --threshold)"
    else:
        flips = same_person(reference, contract.distance, threshold) != same_person(quantized, contract.distance, threshold)
        result["decision_flips"] = int(flips.sum())
    return result
