"""Verification metrics, numpy only (no torch): the insightface protocol and ROC/TAR@FAR.

* embeddings: ``emb(image) + emb(flipped image)``, then L2-normalised;
* distance: squared L2 between the two normalised embeddings of a pair (0..4);
* accuracy: 10-fold cross-validation without shuffling; on 9 folds the threshold with the best
  accuracy (0..4 step 0.01, ``same identity`` when ``distance < threshold``, first best wins),
  measured on the held-out fold; mean and (population) std over the folds;
* TAR@FAR: on the ROC of all pairs, the highest true-accept rate whose false-accept rate does not
  exceed the target (the strict reading; insightface's IJB script takes the nearest ROC point).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THRESHOLDS = np.arange(0.0, 4.0, 0.01)
FOLDS = 10


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, eps)


def cosine_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, ...) arrays (each row flattened)."""
    a, b = np.asarray(a).reshape(len(a), -1), np.asarray(b).reshape(len(b), -1)
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


def flip_sum(embeddings: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """The protocol's embedding: ``emb(image) + emb(flipped image)``, L2-normalised."""
    return l2_normalize(np.asarray(embeddings, np.float64) + np.asarray(flipped, np.float64))


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared L2 distance of each consecutive pair (rows 0-1, 2-3, ...)."""
    return np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)


def fold_slices(n: int, folds: int = FOLDS) -> list[slice]:
    """Contiguous folds in order, the first ``n % folds`` one item longer (as sklearn's KFold)."""
    if n < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} pairs, got {n}")
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    ends = np.cumsum(sizes)
    return [slice(int(end - size), int(end)) for size, end in zip(sizes, ends)]


def _accuracies(distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy at each threshold, ``same`` predicted when ``distance < threshold``."""
    predicted = distances[None, :] < thresholds[:, None]
    return np.mean(predicted == same[None, :], axis=1)


@dataclass(frozen=True)
class KFoldAccuracy:
    """10-fold verification accuracy: per fold, with the threshold chosen on the other folds."""

    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_accuracies))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_accuracies))


def kfold_accuracy(
    distances: np.ndarray, same: np.ndarray, thresholds: np.ndarray = THRESHOLDS, folds: int = FOLDS
) -> KFoldAccuracy:
    """Cross-validated accuracy of ``distance < threshold`` predicting ``same``."""
    distances = np.asarray(distances, np.float64)
    same = np.asarray(same, bool)
    accuracies, chosen = [], []
    for test in fold_slices(len(same), folds):
        train = np.ones(len(same), bool)
        train[test] = False
        best = thresholds[int(np.argmax(_accuracies(distances[train], same[train], thresholds)))]
        accuracies.append(float(np.mean((distances[test] < best) == same[test])))
        chosen.append(float(best))
    return KFoldAccuracy(tuple(accuracies), tuple(chosen))


@dataclass(frozen=True)
class Roc:
    """ROC over similarity scores (higher = more alike): one point per distinct score, FAR ascending."""

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray
    positives: int
    negatives: int

    def tar_at(self, far: float) -> float:
        """The highest TAR whose FAR is at most ``far``."""
        return float(np.max(self.tar[self.far <= far]))

    def sampled(self, points: int = 200) -> dict[str, list[float]]:
        """At most ``points`` ROC points, log-spaced in FAR, for reports and plots."""
        positive = self.far[self.far > 0]
        if positive.size == 0:
            keep = np.arange(len(self.far))
        else:
            targets = np.geomspace(positive.min(), 1.0, points)
            keep = np.unique(np.clip(np.searchsorted(self.far, targets, side="right") - 1, 0, len(self.far) - 1))
        return {"far": self.far[keep].tolist(), "tar": self.tar[keep].tolist()}


def roc(scores: np.ndarray, labels: np.ndarray) -> Roc:
    """ROC of accepting pairs whose ``score >= threshold``, over every distinct threshold."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"an ROC needs genuine and impostor pairs, got {positives} and {negatives}")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_accepts = np.cumsum(labels)[last_of_each]
    false_accepts = (last_of_each + 1) - true_accepts
    return Roc(
        far=np.r_[0.0, false_accepts / negatives],
        tar=np.r_[0.0, true_accepts / positives],
        thresholds=np.r_[np.inf, scores[last_of_each]],
        positives=positives,
        negatives=negatives,
    )
