"""Image files: find them, decode them to uint8 RGB (Pillow), fit them to a model, read landmark files.

The one image loader of qfsdk: ``qfsdk embed`` and calibration folders decode and fit alike, so
a model is calibrated on the pixels it later sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps

from .errors import QfsdkError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff", ".gif"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on a bad file


class UnreadableImage(Exception):
    """A file that Pillow cannot decode."""


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; directories walked recursively in sorted order, keeping image suffixes."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found


def load_rgb(path: Path) -> tuple[np.ndarray, bool]:
    """(uint8 RGB pixels (H, W, 3) turned upright by the EXIF orientation, whether the file was grayscale).

    Grayscale, palette and RGBA files are converted to RGB (alpha is dropped).
    """
    try:
        with Image.open(path) as image:
            grayscale = image.mode in GRAYSCALE_MODES
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB")), grayscale
    except DECODE_ERRORS as exc:
        raise UnreadableImage(f"{path}: {exc}") from None


def fit(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB pixels centre-cropped to the aspect ratio of ``size`` (height, width), then resized
    to it (bicubic); pixels of that size already come back unchanged."""
    return np.asarray(ImageOps.fit(Image.fromarray(pixels), (size[1], size[0]), method=Image.Resampling.BICUBIC))


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A file as uint8 RGB pixels of ``size`` (height, width): :func:`load_rgb`, then :func:`fit`."""
    return fit(load_rgb(path)[0], size)


def read_landmarks(path: str | Path) -> dict[Path, np.ndarray]:
    """A JSON file ``{"image path": [[x, y] * 5], ...}`` -> {resolved path: (5, 2) float64}.

    Relative image paths are relative to the JSON file's folder.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QfsdkError(f"{path}: cannot read landmarks ({exc})") from None
    if not isinstance(data, dict):
        raise QfsdkError(f'{path}: expected a JSON object {{"image path": [[x, y] * 5]}}')
    table = {}
    for name, points in data.items():
        try:
            array = np.asarray(points, np.float64)
        except (TypeError, ValueError):
            array = np.empty(0)
        if array.shape != (5, 2):
            raise QfsdkError(f"{path}: landmarks of {name!r} must be 5 [x, y] pairs, got {points!r}")
        table[(path.parent / name).resolve()] = array
    return table
