"""Five-point alignment: the similarity fit, the warp, and dlib's own face chips as the oracle."""

import numpy as np
import pytest
from PIL import Image

from face_photos import CHIP_PADDING, CHIP_SIZE, DETECTOR_UPSAMPLE, MIN_DETECTION_SCORE, face_photo_dir
from qfsdk.models import get_spec
from qfsdk.runtime import Embedder
from qfsdk.runtime.align import fit_similarity, output_to_image, warp_face

DLIB = get_spec("dlib_resnet").contract
# a large face (pyramid level), a strongly rotated one, and a small one (no pyramid)
PHOTOS = ("obama.jpg", "breakingbad.jpg", "astronaut.png")


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return scale * np.array([[c, -s], [s, c]]), np.array(shift)


def test_fit_recovers_an_exact_similarity_in_both_directions():
    A, c = similarity(2.5, 0.3, (10.0, -4.0))
    src = np.random.default_rng(0).uniform(0, 100, (5, 2))
    dst = src @ A.T + c
    fitted, offset = fit_similarity(src, dst)
    np.testing.assert_allclose(fitted, A, atol=1e-12)
    np.testing.assert_allclose(offset, c, atol=1e-10)
    for fit in ("landmarks_to_template", "template_to_landmarks"):
        M, t = output_to_image(dst, src, fit)  # landmarks = dst, template = src
        np.testing.assert_allclose(M, A, atol=1e-12)
        np.testing.assert_allclose(t, c, atol=1e-10)


def test_fit_never_reflects():
    src = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], float)
    mirrored = src * [-1, 1]
    A, _ = fit_similarity(src, mirrored)
    assert np.linalg.det(A) >= 0


def test_warp_with_landmarks_on_the_template_is_the_identity():
    image = np.random.default_rng(1).integers(0, 256, (*DLIB.input_size, 3), dtype=np.uint8)
    for fit in ("landmarks_to_template", "template_to_landmarks"):
        out = warp_face(image, DLIB.template, DLIB.template, DLIB.input_size, fit)
        np.testing.assert_array_equal(out, image)


def test_warp_translates_by_whole_pixels_and_fills_the_border_with_zero():
    image = np.random.default_rng(2).integers(1, 256, (20, 30, 3), dtype=np.uint8)
    template = np.array([[5, 5], [15, 5], [10, 10], [6, 15], [14, 15]], float)
    out = warp_face(image, template + [3, 2], template, (20, 30))
    np.testing.assert_array_equal(out[:18, :27], image[2:, 3:])
    assert not out[18:].any() and not out[:, 27:].any()


def test_warp_rejects_degenerate_landmarks():
    with pytest.raises(ValueError, match="one point"):
        warp_face(np.zeros((10, 10, 3), np.uint8), np.ones((5, 2)), DLIB.template, DLIB.input_size)


@pytest.fixture(scope="module")
def dlib_faces():
    """(photo, dlib's 5 landmarks, dlib.get_face_chip) for each face in PHOTOS."""
    dlib = pytest.importorskip("dlib")
    from qfsdk.models.dlib_resnet import default_weights_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(default_weights_path().with_name("shape_predictor_5_face_landmarks.dat")))
    faces = []
    for name in PHOTOS:
        image = np.asarray(Image.open(face_photo_dir() / name).convert("RGB"))
        boxes, scores, _ = detector.run(image, DETECTOR_UPSAMPLE, 0.0)
        for box, score in zip(boxes, scores):
            if score >= MIN_DETECTION_SCORE:
                shape = predictor(image, box)
                points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
                faces.append((image, points, dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING)))
    assert len(faces) == 4
    return faces


def test_landmark_alignment_reproduces_dlib_face_chips(dlib_fp32_onnx, dlib_faces):
    images, points, chips = zip(*dlib_faces)
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        warped = embedder.embed(list(images), landmarks=np.stack(points))
        reference = embedder.embed(np.stack(chips))
    cosine = (warped * reference).sum(1) / np.linalg.norm(warped, axis=1) / np.linalg.norm(reference, axis=1)
    distance = np.linalg.norm(warped - reference, axis=1)
    assert cosine.min() >= 0.998, cosine
    assert distance.max() < 0.1, distance  # dlib's same-person threshold is 0.6
