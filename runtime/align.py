"""Five-point face alignment: warp a full image to a model's template (pure numpy).

The C runtime replicates this algorithm; keep the two in step. Exactly:

1. **Fit** (float64). A least-squares similarity (scale, rotation, translation; no reflection)
   between the 5 landmarks ``L`` (image pixels) and the contract's ``template`` ``T`` (output
   pixels). With ``P``, ``Q`` the source and target points centred on their means ``p``, ``q``::

       n = sum(|P_i|^2);  a = sum(P_i.x*Q_i.x + P_i.y*Q_i.y) / n;  b = sum(P_i.x*Q_i.y - P_i.y*Q_i.x) / n
       A = [[a, -b], [b, a]];  c = q - A p            (maps source -> target; Umeyama without reflection)

   ``template_fit == "landmarks_to_template"`` (insightface) fits ``L -> T`` and inverts it:
   ``M = A^-1``, ``t = -A^-1 c``. ``"template_to_landmarks"`` (dlib) fits ``T -> L``: ``M = A``,
   ``t = c``. Either way, output pixel (u, v) = (column, row) samples the image at
   ``M @ (u, v) + t``. Pixel centres are at integer coordinates.
2. **Pyramid** (float32). While ``s = sqrt(|det M|) >= 2`` and the image has at least 2 rows and
   2 columns: halve the image (drop an odd last row
   or column; each new pixel = ``((p[2y,2x] + p[2y,2x+1]) + (p[2y+1,2x] + p[2y+1,2x+1])) * 0.25``),
   then ``M = M / 2`` and ``t = (t - 0.5) / 2``.
3. **Sample** (float32). ``x, y`` = the float64 coordinates rounded to float32; ``x0 = floor(x)``,
   ``fx = x - x0`` (likewise y); bilinear
   ``((p00*(1-fx)*(1-fy) + p01*fx*(1-fy)) + p10*(1-fx)*fy) + p11*fx*fy`` where ``p01`` is the pixel
   at (x0+1, y0) and a neighbour outside the image counts as 0 (constant-0 border).
4. **Round** half up to uint8: ``clip(floor(value + 0.5), 0, 255)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import LandmarkError

Points = Sequence[Sequence[float]] | np.ndarray

# Five-point templates by name, (x, y) in their model input's pixels. "arcface": insightface's
# 112x112 template: eye on the image's left, eye on its right, nose tip, mouth corner on the
# left, mouth corner on the right.
TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    "arcface": ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041)),
    # dlib's 150x150 chip (padding 0.25), in dlib's 5-point semantics (eye corners, nose base); fitted
    # template-to-landmarks as dlib does (qfsdk.models.zoo, tests/test_runtime_align.py).
    "dlib": ((110.4078, 45.8888), (89.0862, 47.4336), (36.6092, 45.9117), (57.9311, 47.4433), (73.5126, 87.2624)),
}

# The templates of TEMPLATES whose points are not a detector's (eye centres, nose tip, mouth
# corners, in ArcFace's order: qfsdk.runtime.detect.LANDMARKS), re-expressed in the detector's
# points, by the name of the template they stand for. "dlib": where YuNet's points land on dlib's
# own 150x150 chips, mean over the 19 registry faces both find (tests/derive_dlib_yunet_template.py).
DETECTOR_TEMPLATES: dict[str, tuple[tuple[float, float], ...]] = {
    "dlib": ((47.8407, 42.9802), (100.5669, 44.0908), (69.9749, 76.4420), (50.8267, 102.3241), (96.5580, 103.6683)),
}


# Landmarks whose spread across their principal axis is below this fraction of the spread along it
# lie on a line (a real face, even turned in profile, is far from it): no face can be aligned.
MIN_LANDMARK_FLATNESS = 1e-2


def check_landmarks(landmarks: Points, image_shape: Sequence[int] | None = None) -> np.ndarray:
    """``landmarks`` as (5, 2) float64 if they can align a face (in an image of ``image_shape`` (H, W, ...)).

    Raises :class:`LandmarkError` when a coordinate is not finite, the points are all at one spot
    or on one line, or (with ``image_shape``) a point lies outside the image, beyond its border
    pixels' edges: such a face would be embedded as a mostly black crop.
    """
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2):
        raise LandmarkError(f"expected 5 landmarks (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise LandmarkError(f"landmarks hold NaN or infinite values: {points.tolist()}")
    if image_shape is not None:
        _check_inside(points, image_shape[0], image_shape[1])
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    if spread[0] <= 1e-9 * max(1.0, float(np.abs(points).max())):
        raise LandmarkError(f"landmarks are all at one point ({points[0, 0]:g}, {points[0, 1]:g}): cannot align")
    if spread[1] < MIN_LANDMARK_FLATNESS * spread[0]:
        raise LandmarkError("landmarks lie on one line (no face has that shape): cannot align")
    return points


def _check_inside(points: np.ndarray, height: int, width: int) -> None:
    """LandmarkError unless every point lies on the image (pixel centres at integers)."""
    outside = [i for i, (x, y) in enumerate(points) if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5)]
    if outside:
        x, y = points[outside[0]]
        raise LandmarkError(f"landmark {outside[0]} at ({x:g}, {y:g}) lies outside the {width}x{height} image"
                            f"{f' (and {len(outside) - 1} more)' if len(outside) > 1 else ''}")


def fit_similarity(source: Points, target: Points) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity ``(A, c)`` with ``target ~= source @ A.T + c`` (float64, no reflection)."""
    src = np.asarray(source, np.float64)
    dst = np.asarray(target, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"expected two matching (K, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise LandmarkError("landmarks must be finite numbers")
    p, q = src.mean(axis=0), dst.mean(axis=0)
    P, Q = src - p, dst - q
    n = float((P**2).sum())
    if n == 0.0:
        raise LandmarkError("landmarks are all at one point: cannot align")
    a = float((P[:, 0] * Q[:, 0] + P[:, 1] * Q[:, 1]).sum()) / n
    b = float((P[:, 0] * Q[:, 1] - P[:, 1] * Q[:, 0]).sum()) / n
    A = np.array([[a, -b], [b, a]])
    return A, q - A @ p


def output_to_image(landmarks: Points, template: Points, fit: str) -> tuple[np.ndarray, np.ndarray]:
    """``(M, t)``: output pixel (u, v) lies at ``M @ (u, v) + t`` in the image (step 1)."""
    if fit == "landmarks_to_template":
        A, c = fit_similarity(landmarks, template)
        M = np.linalg.inv(A)
        return M, -M @ c
    if fit == "template_to_landmarks":
        return fit_similarity(template, landmarks)
    raise ValueError(f"unknown template_fit {fit!r}")


def _halve(image: np.ndarray) -> np.ndarray:
    """One pyramid level: 2x2 means (step 2); a uint8 level sums in uint16 (the same, exact, float32 values)."""
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    im = image[:h, :w]
    if im.dtype == np.uint8:
        total = np.add(im[0::2, 0::2], im[0::2, 1::2], dtype=np.uint16)
        total += np.add(im[1::2, 0::2], im[1::2, 1::2], dtype=np.uint16)
        return total.astype(np.float32) * np.float32(0.25)
    return ((im[0::2, 0::2] + im[0::2, 1::2]) + (im[1::2, 0::2] + im[1::2, 1::2])) * np.float32(0.25)


def _sample(image: np.ndarray, M: np.ndarray, t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear float32 samples at ``M @ (u, v) + t`` of a uint8 or float32 image, constant-0 border (step 3)."""
    height, width = size
    if M[0, 1] == 0 and M[1, 0] == 0:  # a scale-only map (a resize): gather 2 rows per output row, then 2 columns
        x = (M[0, 0] * np.arange(width, dtype=np.float64) + t[0]).astype(np.float32)
        y = (M[1, 1] * np.arange(height, dtype=np.float64) + t[1]).astype(np.float32)
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0)[None, :, None], (y - y0)[:, None, None]
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        rows = [_take(image, y0 + d, 0) for d in (0, 1)]
        return _bilinear(*(_take(r, x0 + d, 1) for r in rows for d in (0, 1)), fx, fy)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (M[0, 0] * u + M[0, 1] * v + t[0]).astype(np.float32)
    y = (M[1, 0] * u + M[1, 1] * v + t[1]).astype(np.float32)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    rows, cols = image.shape[:2]

    def pixel(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        inside = ((yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols))[..., None]
        return np.where(inside, image[yy.clip(0, rows - 1), xx.clip(0, cols - 1)], np.float32(0))

    return _bilinear(pixel(y0, x0), pixel(y0, x0 + 1), pixel(y0 + 1, x0), pixel(y0 + 1, x0 + 1), fx, fy)


def _take(image: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """The rows (axis 0) or columns (axis 1) of ``image`` at ``index``, zeros for those outside it."""
    picked = image.take(index.clip(0, image.shape[axis] - 1), axis=axis)
    outside = (index < 0) | (index >= image.shape[axis])
    if outside.any():
        picked[(slice(None),) * axis + (outside,)] = 0
    return picked


def _bilinear(p00: np.ndarray, p01: np.ndarray, p10: np.ndarray, p11: np.ndarray, fx: np.ndarray,
              fy: np.ndarray) -> np.ndarray:
    """The step-3 sum of the 4 neighbours (p01: at x0 + 1, y0) with float32 weights, in its order."""
    one = np.float32(1)
    return ((p00 * ((one - fx) * (one - fy)) + p01 * (fx * (one - fy))) + p10 * ((one - fx) * fy)) + p11 * (fx * fy)


def warp_face(
    image: np.ndarray, landmarks: Points, template: Points, size: tuple[int, int], fit: str = "landmarks_to_template"
) -> np.ndarray:
    """Align one uint8 RGB image (H, W, 3) to ``template``; returns a uint8 (size[0], size[1], 3) crop.

    Non-finite or degenerate landmarks raise :class:`LandmarkError`; points outside the image are
    warped as given (constant-0 border): :class:`~qfsdk.runtime.Embedder` refuses those first.
    """
    M, t = output_to_image(check_landmarks(landmarks), template, fit)
    pixels = image if image.dtype == np.uint8 else image.astype(np.float32)
    while np.sqrt(abs(np.linalg.det(M))) >= 2 and min(pixels.shape[:2]) >= 2:
        pixels = _halve(pixels)
        M, t = M / 2, (t - 0.5) / 2
    sampled = _sample(pixels, M, t, size)
    return np.clip(np.floor(sampled + np.float32(0.5)), 0, 255).astype(np.uint8)
