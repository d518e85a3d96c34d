"""A model on a ``.bin`` verification set: 10-fold accuracy, ROC and TAR@FAR."""

from __future__ import annotations

from typing import Any

import numpy as np
from qfsdk.progress import progress_bar

from .binset import BinSet
from .metrics import flip_sum, kfold_accuracy, pair_distances, roc
from .models import DEFAULT_BATCH_SIZE, FaceEmbedder

BIN_FARS = (1e-3,)


def flip_embed(model: FaceEmbedder, crops: np.ndarray) -> np.ndarray:
    """The protocol embedding of each crop: L2-normalised ``emb(crop) + emb(mirrored crop)``."""
    return flip_sum(model.embed(crops), model.embed(np.ascontiguousarray(crops[:, :, ::-1])))


def bin_embeddings(
    model: FaceEmbedder, binset: BinSet, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False
) -> np.ndarray:
    """Protocol embeddings of every image of ``binset``, decoded batch by batch."""
    count = 2 * len(binset)
    size = model.contract.input_size
    batches = range(0, count, batch_size)
    return np.concatenate([
        flip_embed(model, binset.decode(start, min(start + batch_size, count), size))
        for start in progress_bar(batches, desc=f"embed {binset.name}", unit="batch", disable=not progress)
    ])  # fmt: skip


def verification_metrics(embeddings: np.ndarray, issame: np.ndarray) -> dict[str, Any]:
    """Accuracy (10-fold mean/std), TAR at each FAR of :data:`BIN_FARS` and the sampled ROC."""
    distances = pair_distances(embeddings)
    accuracy = kfold_accuracy(distances, issame)
    curve = roc(-distances, issame)
    return {
        "pairs": int(len(issame)),
        "accuracy": accuracy.mean,
        "accuracy_std": accuracy.std,
        "fold_accuracies": list(accuracy.fold_accuracies),
        "fold_thresholds": list(accuracy.fold_thresholds),
        "tar_at_far": {f"{far:g}": curve.tar_at(far) for far in BIN_FARS},
        "far_resolution": 1.0 / curve.negatives,
        "roc": curve.sampled(),
    }


def evaluate_bin(
    model: FaceEmbedder, binset: BinSet, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False
) -> dict[str, Any]:
    """The insightface protocol for one model on one set."""
    return verification_metrics(bin_embeddings(model, binset, batch_size, progress), binset.issame)
