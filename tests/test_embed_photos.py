"""Photos in, embeddings out, as a user runs it: `qfsdk embed MODEL PHOTO... --detect` on real registry photos.

Oracles: for imported ArcFace-template models (OpenCV's SFace, faceplugin's MobileFaceNet), the same
model on crops that cv2.FaceDetectorYN + a similarity fit + cv2.warpAffine cut (tests/real_models.py);
for dlib_resnet, the same model on the chips of dlib's own pipeline (tests/face_photos.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from face_photos import PHOTOS, face_photo_dir, photo_chips
from import_support import CONTRACTS, cosines, ok, run_cli
from real_models import REAL_MODELS, single_person_arcface_crops
from qfsdk.runtime import Embedder
from qfsdk.runtime.detect import DetectorOptions, FaceDetector
from qfsdk.runtime.images import load_rgb
from real_models import MIN_DETECTION_SCORE

# cv2.FaceDetectorYN as real_models runs it: on the photo's own pixels (full size). At another size
# YuNet sees other pixels and its points move (benchmarks/photo_pipeline.py's detect_sizes).
ORACLE = ("--detect-size", "0", "--detect-threshold", str(MIN_DETECTION_SCORE))

ARCFACE_MIN_COSINE = 0.99
DLIB_MIN_COSINE = 0.98
MAX_DETECT_SIZE_COST = 0.01  # least cosine of the default --detect-size to full-size detection: 0.99


@pytest.fixture(scope="module", params=["sface", "fr_feature"])
def imported(request, tmp_path_factory) -> Path:
    """A real ArcFace-template model through `qfsdk import`."""
    model = REAL_MODELS[request.param]
    out = tmp_path_factory.mktemp(f"photos-{model.name}") / f"{model.name}.onnx"
    mean, std = CONTRACTS[model.name]
    ok(run_cli("import", model.onnx(), "-o", out, "--mean", mean, "--std", std))
    return out


def embed_cli(model: Path, photos: list[Path], out: Path, *options: str) -> tuple[dict, str]:
    output = ok(run_cli("embed", model, *photos, "--backend", "onnxruntime", *options, "-o", out))
    with np.load(out) as data:
        return {key: data[key] for key in data}, output


def test_detect_largest_matches_opencv_aligned_crops_per_photo(imported, tmp_path):
    oracle = single_person_arcface_crops()
    assert len(oracle) >= 9, sorted(oracle)
    photos = [face_photo_dir() / name for name in oracle]
    data, _ = embed_cli(imported, photos, tmp_path / "emb.npz", "--detect", "largest", *ORACLE)
    assert [Path(p).name for p in data["paths"]] == list(oracle)
    with Embedder(imported, "onnxruntime") as embedder:
        reference = embedder.embed(np.stack(list(oracle.values())))
    cos = cosines(data["embeddings"], reference)
    print(f"\n{imported.stem} --detect largest vs cv2.FaceDetectorYN crops:",
          ", ".join(f"{name} {c:.6f}" for name, c in zip(oracle, cos)))
    assert cos.min() >= ARCFACE_MIN_COSINE, dict(zip(oracle, cos.round(4)))
    assert data["boxes"].shape == (len(oracle), 4) and data["landmarks"].shape == (len(oracle), 5, 2)
    assert (data["scores"] >= MIN_DETECTION_SCORE).all()


def test_dlib_resnet_detect_largest_matches_dlibs_own_pipeline_per_photo(dlib_fp32_onnx, tmp_path):
    """Photos where both dlib and YuNet find exactly one face; YuNet's points go through the measured template.
    dlib's pipeline is an oracle of its own (not YuNet), so this runs at the default detect size, as a user does."""
    yunet_single = single_person_arcface_crops()
    names = [name for name in PHOTOS if name in yunet_single and len(photo_chips(name)) == 1]
    assert len(names) >= 8, names
    data, _ = embed_cli(dlib_fp32_onnx, [face_photo_dir() / n for n in names], tmp_path / "dlib.npz", "--detect", "largest",
                       "--detect-threshold", str(MIN_DETECTION_SCORE))
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        reference = embedder.embed(np.stack([photo_chips(name)[0] for name in names]))
    cos = cosines(data["embeddings"], reference)
    distance = np.linalg.norm(data["embeddings"] - reference, axis=1)
    print("\ndlib_resnet --detect largest vs dlib's pipeline:",
          ", ".join(f"{n} {c:.4f} (L2 {d:.3f})" for n, c, d in zip(names, cos, distance)))
    assert cos.min() >= DLIB_MIN_COSINE, dict(zip(names, cos.round(4)))
    assert distance.max() < 0.3  # dlib's same-person threshold is 0.6


def detect_size_cosines(model: Path) -> tuple[np.ndarray, np.ndarray]:
    """(refined, unrefined) cosines of the default detect size to full-size detection, per single-person photo."""
    photos = [load_rgb(face_photo_dir() / name)[0] for name in single_person_arcface_crops()]
    sizes = {"full": DetectorOptions(MIN_DETECTION_SCORE, max_size=None), "refined": DetectorOptions(MIN_DETECTION_SCORE),
             "unrefined": DetectorOptions(MIN_DETECTION_SCORE, refine=False)}
    with Embedder(model, "onnxruntime") as embedder:
        out = {}
        for key, options in sizes.items():
            with FaceDetector(backend="onnxruntime", options=options) as detector:
                out[key] = embedder.embed_photos(photos, max_faces=1, largest=True, detector=detector).embeddings
    return cosines(out["refined"], out["full"]), cosines(out["unrefined"], out["full"])


def test_the_default_detect_size_costs_at_most_0_01_cosine_to_full_size(imported):
    refined, unrefined = detect_size_cosines(imported)
    print(f"\n{imported.stem} default detect size vs full size: min cosine {refined.min():.4f} "
          f"(unrefined {unrefined.min():.4f})")
    assert refined.min() >= 1 - MAX_DETECT_SIZE_COST and refined.mean() >= unrefined.mean()


def test_dlib_resnet_default_detect_size_costs_at_most_0_01_cosine_to_full_size(dlib_fp32_onnx):
    refined, unrefined = detect_size_cosines(dlib_fp32_onnx)
    assert refined.min() >= 1 - MAX_DETECT_SIZE_COST and refined.mean() >= unrefined.mean()


def test_t1_gives_six_faces_and_a_photo_without_a_face_zero_rows_and_a_count(imported, tmp_path):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((480, 640, 3), 200, np.uint8)).save(blank)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    t1 = face_photo_dir() / "t1.jpg"
    data, output = embed_cli(imported, [t1, blank, broken], tmp_path / "all.npz", "--detect")
    assert [Path(p).name for p in data["paths"]] == ["t1.jpg"] * 6
    assert data["embeddings"].shape[0] == 6 and data["scores"].shape == (6,)
    assert "embedded 6 faces of 1 of 3 images" in output
    assert f"found no face in 1: {blank}" in output and "skipped 1 unreadable" in output
    assert [Path(p).name for p in data["no_face"]] == ["wall.png"]

    only_blank, output = embed_cli(imported, [blank], tmp_path / "none.npz", "--detect", "all")
    assert only_blank["embeddings"].shape[0] == 0 and only_blank["paths"].shape == (0,)
    assert "embedded 0 faces of 0 of 1 images" in output and "found no face in 1" in output


def test_embed_photos_api_equals_the_cli(imported, tmp_path):
    t1 = face_photo_dir() / "t1.jpg"
    data, _ = embed_cli(imported, [t1], tmp_path / "t1.npz", "--detect")
    image = np.asarray(Image.open(t1).convert("RGB"))
    with Embedder(imported, "onnxruntime") as embedder:
        faces = embedder.embed_photos([image, np.zeros((100, 100, 3), np.uint8)])
        largest = embedder.embed_photos(image, max_faces=1, largest=True)
    assert faces.faces.tolist() == [6, 0] and faces.sources.tolist() == [0] * 6
    np.testing.assert_allclose(faces.embeddings, data["embeddings"], atol=1e-5)
    np.testing.assert_array_equal(faces.boxes, data["boxes"])
    areas = faces.boxes[:, 2] * faces.boxes[:, 3]
    np.testing.assert_array_equal(largest.boxes[0], faces.boxes[np.argmax(areas)])


def test_photos_without_a_mode_are_refused_with_the_fix(imported, tmp_path):
    result = run_cli("embed", imported, face_photo_dir() / "obama.jpg", "-o", tmp_path / "plain.npz")
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0, result.output
    assert "not 112x112 aligned crops" in result.output and "pass --detect to find and align the faces" in result.output
    assert not (tmp_path / "plain.npz").exists()
    _, output = embed_cli(imported, [face_photo_dir() / "obama.jpg"], tmp_path / "aligned.npz", "--aligned")
    assert "--detect" not in output


def test_detect_excludes_the_other_modes(imported, tmp_path):
    result = run_cli("embed", imported, face_photo_dir() / "obama.jpg", "--detect", "--aligned", "-o", tmp_path / "x.npz")
    assert result.exit_code == 2 and "--aligned and --detect exclude each other" in result.output
    assert not (tmp_path / "x.npz").exists()
