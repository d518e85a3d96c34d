"""Image files for the runtime: find them, decode them to uint8 RGB (Pillow), read landmark files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from qfsdk.errors import QfsdkError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff", ".gif"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


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
    """(uint8 RGB pixels (H, W, 3), whether the file was grayscale); EXIF orientation is not applied."""
    try:
        with Image.open(path) as image:
            image.load()
            grayscale = image.mode in GRAYSCALE_MODES
            return np.asarray(image.convert("RGB")), grayscale
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{path}: {exc}") from None


def resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 RGB pixels to ``size`` (height, width)."""
    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.BILINEAR))


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
