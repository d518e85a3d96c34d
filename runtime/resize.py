"""Resize an image with the alignment's sampler (pure numpy), so the C runtime can match it exactly.

A resize is the alignment warp (:mod:`qfsdk.runtime.align`, steps 2-4) with a scale-only map:
output pixel (u, v) samples the image at ``((u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5)`` with
``sx = W / w``, ``sy = H / h`` (pixel centres at integers), after halving the image while
``sqrt(sx * sy) >= 2``.
"""

from __future__ import annotations

import numpy as np

from .align import _halve, _sample


def scale_map(source: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)`` taking output pixels of ``size`` (h, w) to the image pixels of ``source`` (H, W)."""
    sy, sx = source[0] / size[0], source[1] / size[1]
    return np.diag([sx, sy]), np.array([(sx - 1) / 2, (sy - 1) / 2])


def warp(image: np.ndarray, M: np.ndarray, t: np.ndarray, size: tuple[int, int], pyramid: bool = True) -> np.ndarray:
    """uint8 output pixels (u, v) of ``size`` sampled at ``M @ (u, v) + t`` in the uint8 ``image``
    (qfsdk.runtime.align steps 2-4; ``pyramid=False`` skips step 2: one bilinear warp, as
    ``cv2.warpAffine`` with INTER_LINEAR, which insightface's and OpenCV's face crops use)."""
    pixels = image if image.dtype == np.uint8 else image.astype(np.float32)
    while pyramid and np.sqrt(abs(np.linalg.det(M))) >= 2 and min(pixels.shape[:2]) >= 2:
        pixels = _halve(pixels)
        M, t = M / 2, (t - 0.5) / 2
    return np.clip(np.floor(_sample(pixels, M, t, size) + np.float32(0.5)), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W, C) image resized to ``size`` (height, width); the same size comes back unchanged."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return warp(image, *scale_map(image.shape[:2], size), size)
