"""Five-point alignment: the similarity fit, the warp, and dlib's own face chips as the oracle."""

import numpy as np
import pytest
from PIL import Image

from face_photos import CHIP_PADDING, CHIP_SIZE, DETECTOR_UPSAMPLE, MIN_DETECTION_SCORE, face_photo_dir
from qfsdk.models import get_spec
from qfsdk.runtime import Embedder
from qfsdk.runtime.align import check_landmarks, fit_similarity, output_to_image, warp_face
from qfsdk.runtime.errors import LandmarkError

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


BAD_LANDMARKS = [
    (lambda t: t + [1000.0, 0.0], "lies outside the 150x150 image"),
    (lambda t: t - [0.0, 200.0], "landmark 0 at .* lies outside .* \\(and 4 more\\)"),
    (lambda t: np.full((5, 2), 60.0), "all at one point"),
    (lambda t: np.stack([np.linspace(20, 120, 5), np.linspace(30, 90, 5)], axis=1), "on one line"),
    (lambda t: np.where(np.eye(5, 2, dtype=bool), np.nan, t), "NaN or infinite"),
    (lambda t: np.where(np.eye(5, 2, dtype=bool), np.inf, t), "NaN or infinite"),
]


@pytest.mark.parametrize(("edit", "match"), BAD_LANDMARKS)
def test_check_landmarks_refuses_points_that_cannot_align_a_face(edit, match):
    template = np.array(DLIB.template)
    with pytest.raises(LandmarkError, match=match):
        check_landmarks(edit(template), (150, 150, 3))
    assert check_landmarks(template, (150, 150, 3)).shape == (5, 2)


def test_points_on_the_border_pixels_are_inside():
    corners = np.array([[-0.5, -0.5], [29.5, -0.5], [15.0, 10.0], [-0.5, 19.5], [29.5, 19.5]])
    check_landmarks(corners, (20, 30))
    with pytest.raises(LandmarkError, match="landmark 1 at \\(29.6, -0.5\\) lies outside the 30x20 image"):
        check_landmarks(corners + [[0, 0], [0.1, 0], [0, 0], [0, 0], [0, 0]], (20, 30))


@pytest.mark.parametrize(("edit", "match"), BAD_LANDMARKS)
def test_embedder_refuses_such_a_face_and_names_it(dlib_fp32_onnx, edit, match):
    image = np.random.default_rng(3).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    good = np.array(DLIB.template)
    with Embedder(dlib_fp32_onnx, "onnxruntime") as embedder:
        with pytest.raises(LandmarkError, match=f"^face 1: .*{match}"):
            embedder.embed([image, image], np.stack([good, edit(good)]))
        with pytest.raises(LandmarkError, match=match):
            embedder.align(image, edit(good))


def test_warp_face_aligns_points_partly_off_the_image_as_given():
    image = np.random.default_rng(4).integers(1, 256, (20, 30, 3), dtype=np.uint8)
    template = np.array([[5, 5], [15, 5], [10, 10], [6, 15], [14, 15]], float)
    out = warp_face(image, template - [6, 0], template, (20, 30))  # landmark 0 at x = -1: the Embedder refuses it
    np.testing.assert_array_equal(out[:, 6:], image[:, :24])


@pytest.mark.parametrize("M", [np.diag([1.7, 0.6]), np.diag([0.45, 1.0]), np.array([[0.9, -0.3], [0.3, 0.9]])])
def test_sampling_equals_per_pixel_bilinear_for_resizes_and_rotations(M):
    """The scale-only fast path (rows, then columns) and the general one give the per-pixel formula's values."""
    from qfsdk.runtime.align import _sample

    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, (13, 17, 3)).astype(np.float32)
    t, size = np.array([-0.8, 0.35]), (9, 11)
    got = _sample(image, M, t, size)
    for v in range(size[0]):
        for u in range(size[1]):
            x, y = np.float32(M[0, 0] * u + M[0, 1] * v + t[0]), np.float32(M[1, 0] * u + M[1, 1] * v + t[1])
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - np.float32(x0), y - np.float32(y0)

            def at(r: int, c: int) -> np.ndarray:
                return image[r, c] if 0 <= r < 13 and 0 <= c < 17 else np.zeros(3, np.float32)

            one = np.float32(1)
            expected = ((at(y0, x0) * ((one - fx) * (one - fy)) + at(y0, x0 + 1) * (fx * (one - fy)))
                        + at(y0 + 1, x0) * ((one - fx) * fy)) + at(y0 + 1, x0 + 1) * (fx * fy)
            np.testing.assert_array_equal(got[v, u], expected)
