"""The torch-free YuNet detector (qfsdk.runtime.detect) against OpenCV's cv2.FaceDetectorYN on real photos."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from real_models import MIN_DETECTION_SCORE, NMS_THRESHOLD, TOP_K, detect_faces, fr_feature_onnx, photo_paths, yunet_onnx
from qfsdk.runtime import detect
from qfsdk.runtime.detect import DEFAULT_DETECTOR, DetectorOptions, Faces, FaceDetector, nms, refine_window
from qfsdk.runtime.metadata import ModelFileError
from qfsdk.runtime.resize import resize

ORACLE = DetectorOptions(MIN_DETECTION_SCORE, NMS_THRESHOLD, TOP_K, max_size=None)  # tests/real_models.py's settings, full size
BACKENDS = ("onnxruntime", "openvino")


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def scaled(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` enlarged ``factor`` times (bicubic)."""
    return np.asarray(Image.fromarray(image).resize((image.shape[1] * factor, image.shape[0] * factor), Image.Resampling.BICUBIC))


def rows(faces: Faces) -> np.ndarray:
    """(K, 15) rows as cv2.FaceDetectorYN gives them, sorted left to right like detect_faces."""
    table = np.concatenate([faces.boxes, faces.landmarks.reshape(-1, 10), faces.scores[:, None]], axis=1)
    return table[np.lexsort((table[:, 1], table[:, 0]))]


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray]]:
    return [(path.name, rgb(path)) for path in photo_paths()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_landmarks_and_scores_equal_opencv_on_every_registry_photo(photos, backend):
    with FaceDetector(backend=backend, options=ORACLE) as detector:
        assert detector.backend_name == backend
        for name, image in photos:
            ours, theirs = rows(detector.detect(image)), detect_faces(image)
            assert ours.shape == theirs.shape, (name, len(ours), len(theirs))
            np.testing.assert_allclose(ours[:, :14], theirs[:, :14], atol=1.0, err_msg=name)  # boxes, landmarks: px
            np.testing.assert_allclose(ours[:, 14], theirs[:, 14], atol=0.01, err_msg=name)  # scores


def test_t1_has_six_faces_and_a_blank_photo_none(photos):
    with FaceDetector(backend="onnxruntime") as detector:  # default options
        assert len(detector.detect(dict(photos)["t1.jpg"])) == 6
        assert len(detector.detect(np.full((480, 640, 3), 128, np.uint8))) == 0
        noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        assert len(detector.detect(noise)) == 0


def test_large_photos_are_scaled_to_max_size_and_mapped_back(photos):
    image = dict(photos)["obama3.jpg"]  # 2333 x 1434
    with FaceDetector(backend="onnxruntime", options=ORACLE) as full:
        reference = full.detect(image)
    with FaceDetector(backend="onnxruntime", options=DetectorOptions(MIN_DETECTION_SCORE, max_size=640, refine=False)) as small:
        assert small.network_size(*image.shape[:2]) == (640, round(1434 * 640 / 2333))
        found = small.detect(image)
    assert len(found) == len(reference) == 1
    size = reference.boxes[0, 2]
    assert np.abs(found.landmarks - reference.landmarks).max() < 0.05 * size  # a few px at 1/3.6 the resolution


@pytest.mark.parametrize("name, factor", [("astronaut.png", 2), ("t1.jpg", 1)])
def test_faces_of_a_scaled_down_photo_are_refined_to_full_size_detection(photos, name, factor):
    """astronaut.png enlarged 2x (1024 px, one face: one crop) and t1.jpg (1280 px, six faces: their crops
    would cover more than the box around them all, so one run on it serves them) are detected at 640 px,
    then refined."""
    image = scaled(dict(photos)[name], factor)
    with FaceDetector(backend="onnxruntime", options=ORACLE) as full, \
            FaceDetector(backend="onnxruntime", options=DetectorOptions(MIN_DETECTION_SCORE)) as default, \
            FaceDetector(backend="onnxruntime", options=DetectorOptions(MIN_DETECTION_SCORE, refine=False)) as coarse:
        assert default.network_size(*image.shape[:2]) != image.shape[:2]
        reference, refined, unrefined = rows(full.detect(image)), default.detect(image), rows(coarse.detect(image))
    assert refined.scores.tolist() == sorted(refined.scores.tolist(), reverse=True)
    refined = rows(refined)
    assert reference.shape == refined.shape == unrefined.shape
    np.testing.assert_allclose(refined[:, :14], reference[:, :14], atol=0.01)  # boxes, landmarks: px
    np.testing.assert_allclose(refined[:, 14], reference[:, 14], atol=1e-5)
    assert np.abs(unrefined[:, 4:14] - reference[:, 4:14]).max() > 1.0  # what refinement removes


def test_refine_off_and_the_fallback_give_detection_on_the_scaled_photo_mapped_back(photos, monkeypatch):
    image = scaled(dict(photos)["astronaut.png"], 2)
    options = DetectorOptions(MIN_DETECTION_SCORE)
    with FaceDetector(backend="onnxruntime", options=ORACLE) as full, \
            FaceDetector(backend="onnxruntime", options=DetectorOptions(MIN_DETECTION_SCORE, refine=False)) as coarse, \
            FaceDetector(backend="onnxruntime", options=options) as default:
        size = coarse.network_size(*image.shape[:2])
        small, unrefined = full.detect(resize(image, size)), coarse.detect(image)
        monkeypatch.setattr(detect, "REFINE_MIN_IOU", 1.0)  # no refined face matches: each stays as found
        kept = default.detect(image)
    half, scale = np.float32(0.5), np.array([image.shape[1] / size[1], image.shape[0] / size[0]], np.float32)
    np.testing.assert_array_equal(unrefined.landmarks, (small.landmarks + half) * scale - half)
    np.testing.assert_array_equal(unrefined.boxes[:, 2:], small.boxes[:, 2:] * scale)
    for field in ("boxes", "landmarks", "scores"):
        np.testing.assert_array_equal(getattr(kept, field), getattr(unrefined, field))


def test_refine_window_is_a_grid_aligned_square_of_at_least_512_px_clipped_to_the_image():
    assert refine_window(np.array([100, 100, 50, 50], np.float32), (1000, 1000), 32) == (0, 0, 384, 384)
    # 1.25 x 600 = 750 px about (700, 600): starts floored onto the 32-px grid, ends a whole number of cells on
    assert refine_window(np.array([400, 300, 600, 600], np.float32), (2000, 3000), 32) == (320, 224, 1088, 992)
    assert refine_window(np.array([2900, 1900, 400, 400], np.float32), (2000, 3000), 32) == (2816, 1824, 3000, 2000)
    assert refine_window(np.array([5000, 10, 10, 10], np.float32), (100, 100), 32) is None
    assert refine_window(np.array([np.nan, 10, 10, 10], np.float32), (100, 100), 32) is None


def test_a_fixed_size_yunet_file_by_path_runs_letterboxed(photos):
    """OpenCV zoo's own file (640x640 input) works as given: photos are scaled to fit it."""
    image = dict(photos)["breakingbad.jpg"]
    with FaceDetector(yunet_onnx(), "onnxruntime", options=ORACLE) as fixed:
        assert fixed.fixed_size == (640, 640)
        assert fixed.network_size(*image.shape[:2]) == (360, 640)
        ours = rows(fixed.detect(image))
    with FaceDetector(backend="onnxruntime", options=DetectorOptions(MIN_DETECTION_SCORE, max_size=640)) as packaged:
        theirs = rows(packaged.detect(image))
    assert ours.shape == theirs.shape == (2, 15)
    np.testing.assert_allclose(ours[:, :14], theirs[:, :14], atol=1.0)


def test_the_packaged_model_is_upstream_yunet_with_symbolic_shapes():
    ours, upstream = onnx.load(str(DEFAULT_DETECTOR)), onnx.load(str(yunet_onnx()))
    assert [n.SerializeToString() for n in ours.graph.node] == [n.SerializeToString() for n in upstream.graph.node]
    assert [t.SerializeToString() for t in ours.graph.initializer] == [t.SerializeToString() for t in upstream.graph.initializer]
    dims = [d.dim_param or d.dim_value for d in ours.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    assert (DEFAULT_DETECTOR.parent / "LICENSE").read_text().startswith("face_detection_yunet_2023mar.onnx (YuNet")


def test_nms_keeps_the_best_of_overlapping_boxes_and_respects_top_k():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [0.5, 0, 10, 10]], np.float32)
    scores = np.array([0.7, 0.9, 0.8, 0.9], np.float32)
    assert nms(boxes, scores, 0.3, 10).tolist() == [1, 2]  # 3 ties with 1 and comes later; 0 overlaps 1
    assert nms(boxes, scores, 0.3, 1).tolist() == [1]
    assert nms(boxes, scores, 1.0, 10).tolist() == [1, 3, 2, 0]


def test_select_largest_and_max_faces(photos):
    with FaceDetector(backend="onnxruntime") as detector:
        faces = detector.detect(dict(photos)["t1.jpg"])
    areas = faces.boxes[:, 2] * faces.boxes[:, 3]
    assert faces.select(1, largest=True).boxes[0].tolist() == faces.boxes[np.argmax(areas)].tolist()
    assert len(faces.select(3)) == 3 and faces.select(3).scores.tolist() == sorted(faces.scores.tolist(), reverse=True)[:3]


def test_a_model_that_is_not_a_detector_is_refused_in_one_line(tmp_path):
    with pytest.raises(ModelFileError, match="not a face detector qfsdk can decode .*pass a YuNet ONNX file"):
        FaceDetector(fr_feature_onnx(), "onnxruntime")
    with pytest.raises(ModelFileError, match="no such detector file"):
        FaceDetector(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="score_threshold"):
        DetectorOptions(score_threshold=2)


def test_detection_imports_neither_torch_nor_cv2():
    code = ("import sys, numpy as np\n"
            "from qfsdk.runtime.detect import FaceDetector\n"
            "import qfsdk.runtime.photos\n"
            "FaceDetector(backend='onnxruntime').detect(np.zeros((64, 64, 3), np.uint8))\n"
            "assert not {'torch', 'cv2', 'qfsdk.quant', 'qfsdk.converters'} & set(sys.modules), sorted(sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
