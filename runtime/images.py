"""Image files: find them, decode them to uint8 RGB (Pillow), fit them to a model, read landmark files.

The one image loader of qfsdk: ``qfsdk embed``, calibration folders and generators find, decode
and fit alike, so a model is calibrated on the pixels it later sees.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import QfsdkError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".tiff", ".gif"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on a bad file


WIDE_GRAYSCALE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})  # more than 8 bits per sample
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class UnreadableImage(Exception):
    """A file that cannot be decoded; ``reason`` says why (without the path)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.reason = reason


READ_ERRORS = (UnreadableImage, *DECODE_ERRORS)  # opening a file (Pillow) or decoding it (load_image)


def find_images(folder: str | Path) -> list[Path]:
    """Files with image suffixes below ``folder``, recursively and sorted. Hidden files and folders below
    it (a name starting with ".": ``.ipynb_checkpoints/``, macOS ``._face.jpg``) are skipped."""
    folder = Path(folder)
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given (always taken, hidden or not); folders as :func:`find_images` lists them."""
    found: list[Path] = []
    for path in map(Path, paths):
        found.extend(find_images(path) if path.is_dir() else [path])
    return found


def load_rgb(path: Path) -> tuple[np.ndarray, bool]:
    """(uint8 RGB pixels (H, W, 3) turned upright by the EXIF orientation, whether the file was grayscale).

    Grayscale, palette, CMYK and RGBA files are converted to RGB (alpha is dropped); 16-bit and
    float grayscale is scaled to 8 bits (:func:`to_8bit`). Anything but a regular file (a FIFO,
    a device) is refused before it is opened, since reading it could block forever.
    """
    _check_regular(path)
    try:
        with Image.open(path) as image:
            grayscale = image.mode in GRAYSCALE_MODES
            upright = ImageOps.exif_transpose(image)
            if upright.mode in WIDE_GRAYSCALE_MODES:
                upright = to_8bit(upright)
            return np.asarray(upright.convert("RGB")), grayscale
    except DECODE_ERRORS as exc:
        raise UnreadableImage(path, str(exc)) from None


def upright_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of the image file as :func:`load_rgb` turns it upright, read from its header
    without decoding the pixels; None when the file cannot be read (the decoder reports it later)."""
    try:
        _check_regular(path)
        with Image.open(path) as image:
            width, height = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS:
                width, height = height, width
    except (UnreadableImage, *DECODE_ERRORS):
        return None
    return height, width


def require_crops(files: Sequence[Path], size: tuple[int, int]) -> None:
    """Refuse, before any work, images that are not ``size`` (height, width) crops: photos embedded as
    crops would be resized whole into the model input and give unusable embeddings."""
    odd = [(path, found) for path in files if (found := upright_size(path)) is not None and found != size]
    if not odd:
        return
    shown = ", ".join(f"{path} {w}x{h}" for path, (h, w) in odd[:3]) + (", ..." if len(odd) > 3 else "")
    raise QfsdkError(f"{len(odd)} of {len(files)} images are not {size[1]}x{size[0]} aligned crops ({shown}): "
                     "pass --detect to find and align the faces in photos, or --aligned to resize crops to the model input")


def _check_regular(path: Path) -> None:
    """Raise :class:`UnreadableImage` unless ``path`` (links followed) is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise UnreadableImage(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "not a file")
        raise UnreadableImage(path, f"not a regular file ({kind}); pass image files")


def to_8bit(image: Image.Image) -> Image.Image:
    """A grayscale image of more than 8 bits per sample as mode ``L``.

    Pillow's own conversion clips such values at 255, so a 16-bit PNG would turn white. Integer
    modes are 16-bit samples (``I;16*``, and ``I`` as Pillow opens 16-bit PGM), scaled by
    255/65535; an ``I`` image whose values all fit in 0..255 is taken as 8-bit. ``F`` images
    with values in 0..1 are scaled by 255, others are taken as 0..255.
    """
    values = np.asarray(image, np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    peak = values.max(initial=0.0)
    if image.mode == "F":
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        scale = 1.0 if image.mode == "I" and peak <= 255 else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.floor(values * scale + 0.5), 0, 255).astype(np.uint8), "L")


def fit(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB pixels centre-cropped to the aspect ratio of ``size`` (height, width), then resized
    to it (bicubic); pixels of that size already come back unchanged."""
    return np.asarray(ImageOps.fit(Image.fromarray(pixels), (size[1], size[0]), method=Image.Resampling.BICUBIC))


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A file as uint8 RGB pixels of ``size`` (height, width): :func:`load_rgb`, then :func:`fit`."""
    return fit(load_rgb(path)[0], size)


def read_landmarks(path: str | Path) -> dict[Path, np.ndarray]:
    """A JSON file ``{"image path": [[x, y] * 5], ...}`` -> {resolved path: (5, 2) float64}.

    Relative image paths are relative to the JSON file's folder. Every coordinate must be a
    finite number; whether the points fit their image is checked per face when it is embedded.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise QfsdkError(f"{path}: cannot read landmarks ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise QfsdkError(f"{path}: not UTF-8 text (byte {exc.start}); write the landmarks as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise QfsdkError(f"{path}: cannot read landmarks ({exc})") from None
    if not isinstance(data, dict):
        raise QfsdkError(f'{path}: expected a JSON object {{"image path": [[x, y] * 5]}}')
    table = {}
    for name, points in data.items():
        try:
            array = np.asarray(points, np.float64)
        except (TypeError, ValueError):
            array = np.empty(0)
        if array.shape != (5, 2) or _has_non_numbers(points):
            raise QfsdkError(f"{path}: landmarks of {name!r} must be 5 [x, y] pairs of numbers, got {points!r}")
        if not np.isfinite(array).all():
            raise QfsdkError(f"{path}: landmarks of {name!r} hold NaN or infinite values ({points!r}); "
                             "give finite pixel coordinates or leave the image out")
        table[(path.parent / name).resolve()] = array
    return table


def _has_non_numbers(points: object) -> bool:
    """Whether a JSON [[x, y], ...] list holds anything but numbers (strings and booleans convert silently)."""
    return any(isinstance(v, (str, bool)) or v is None for pair in points for v in pair)  # type: ignore[union-attr]


def as_image_list(images: "np.ndarray | Sequence[np.ndarray]") -> list[np.ndarray]:
    """One image, a batch array or a sequence of images as a non-empty list."""
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            hint = " (grayscale: convert it to RGB)" if images.ndim == 2 else ""
            raise ValueError(f"expected an RGB image (H, W, 3) or a batch (N, H, W, 3), got shape {images.shape}{hint}")
        items = [images] if images.ndim == 3 else list(images)
    else:
        items = list(images)
    if not items:
        raise ValueError("empty batch: expected at least one image")
    return items


def check_rgb_image(image: np.ndarray, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """One uint8 RGB image (H, W, 3) (of ``size`` if given), or a ValueError that says what is wrong."""
    image = np.asarray(image)
    if image.ndim == 2:
        raise ValueError(f"image {index}: expected an RGB image (H, W, 3), got a grayscale {image.shape}; convert it to RGB")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index}: expected an RGB image (H, W, 3) with 3 channels, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image {index}: expected uint8 pixels 0..255, got {image.dtype}")
    if size is not None and image.shape[:2] != tuple(size):
        raise ValueError(
            f"image {index}: expected an aligned crop of {size[0]}x{size[1]} (the model input, height x width), "
            f"got {image.shape[0]}x{image.shape[1]}; pass landmarks= to align full images"
        )
    return image
