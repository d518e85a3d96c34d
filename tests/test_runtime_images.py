"""The one image loader (qfsdk.runtime.images) on real files in every Pillow mode, and on non-regular files."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from qfsdk.runtime.images import UnreadableImage, load_rgb
from real_models import arcface_crops


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real 112x112 face crop, uint8 RGB."""
    return arcface_crops()[0][1]


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def assert_within_one_level(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1
    assert decoded.std() > 10  # a real face, not a solid image


def written_16bit(path, pixels8: np.ndarray) -> None:
    """``pixels8`` (H, W) or (H, W, 3|4 RGB(A)) as 16-bit samples (v * 257) through OpenCV."""
    wide = pixels8.astype(np.uint16) * 257
    if wide.ndim == 3:
        wide = wide[..., [2, 1, 0, 3][: wide.shape[2]]]  # OpenCV writes BGR(A)
    assert cv2.imwrite(str(path), wide)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".pgm"])
def test_16bit_greyscale_decodes_like_its_8bit_version(photo, tmp_path, suffix):
    path = tmp_path / f"grey16{suffix}"
    written_16bit(path, grey(photo))
    with Image.open(path) as image:
        assert image.mode in ("I;16", "I;16B", "I")  # what Pillow makes of each
    pixels, grayscale = load_rgb(path)
    assert grayscale
    assert_within_one_level(pixels, np.repeat(grey(photo)[..., None], 3, axis=2))


@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_rgb_and_rgba_pngs_decode_like_their_8bit_version(photo, tmp_path, channels):
    pixels8 = photo if channels == 3 else np.dstack([photo, np.full(photo.shape[:2], 200, np.uint8)])
    written_16bit(tmp_path / "c16.png", pixels8)
    pixels, grayscale = load_rgb(tmp_path / "c16.png")
    assert not grayscale
    assert_within_one_level(pixels, photo)


def test_big_endian_16bit_and_real_16bit_values(photo, tmp_path):
    # I;16B as Pillow writes it to TIFF, with values that are not multiples of 257
    values = grey(photo).astype(np.uint16) * 256 + 100
    Image.frombytes("I;16B", values.shape[::-1], values.astype(">u2").tobytes()).save(tmp_path / "b16.tif")
    with Image.open(tmp_path / "b16.tif") as image:
        assert image.mode == "I;16B"
    pixels, _ = load_rgb(tmp_path / "b16.tif")
    assert_within_one_level(pixels[..., 0], np.round(values / 257).astype(np.uint8))


@pytest.mark.parametrize("scale", [1 / 255, 1.0])
def test_float_images_in_0_to_1_and_0_to_255(photo, tmp_path, scale):
    Image.fromarray(grey(photo).astype(np.float32) * np.float32(scale), "F").save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as image:
        assert image.mode == "F"
    assert_within_one_level(load_rgb(tmp_path / "f.tif")[0][..., 1], grey(photo))


@pytest.mark.parametrize(
    ("mode", "fmt"), [("LA", "PNG"), ("P", "PNG"), ("CMYK", "TIFF"), ("CMYK", "JPEG"), ("1", "PNG"), ("RGBA", "PNG")]
)
def test_other_modes_decode_to_what_pillow_shows(photo, tmp_path, mode, fmt):
    path = tmp_path / f"image.{fmt.lower()}"
    Image.fromarray(photo).convert(mode).save(path, fmt, quality=95)
    with Image.open(path) as image:
        assert image.mode == mode
        expected = np.asarray(image.convert("RGB"))
    pixels, _ = load_rgb(path)
    assert_within_one_level(pixels, expected)
    if mode in ("CMYK", "RGBA") and fmt != "JPEG":  # lossless round trips of the photo itself
        np.testing.assert_array_equal(pixels, photo)


def test_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "face.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    with pytest.raises(UnreadableImage, match="not a regular file \\(a FIFO\\)") as info:
        load_rgb(fifo)
    assert info.value.reason.startswith("not a regular file")
    with pytest.raises(UnreadableImage, match="a directory"):
        load_rgb(tmp_path)
    with pytest.raises(UnreadableImage, match="No such file"):
        load_rgb(tmp_path / "missing.png")
