"""The real models and aligned crops of tests/real_models.py are what the suite relies on them to be."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from real_models import REAL_MODELS, arcface_crops, crop_halves, detect_faces, fr_feature_onnx, photo_paths, sface_onnx


def _graph_summary(path) -> tuple[int, Counter, list[tuple[str, list[int]]]]:
    """(default-domain opset, op type counts, [(output name, dims)]) of an ONNX file."""
    model = onnx.load(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    outputs = [(o.name, [d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    return opset, Counter(node.op_type for node in model.graph.node), outputs


def _embed(name: str, crops: list[np.ndarray]) -> np.ndarray:
    """Unit-norm embeddings of ``crops`` by real model ``name`` on ONNX Runtime, one image a run."""
    model = REAL_MODELS[name]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # SFace lists its weights among its inputs: one warning each
    session = ort.InferenceSession(model.onnx(), options, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {feed: model.inputs(crop)})[0] for crop in crops])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _crops_by_name() -> dict[str, np.ndarray]:
    return dict(arcface_crops())


def test_sface_file():
    path = sface_onnx()
    opset, ops, outputs = _graph_summary(path)
    assert path.stat().st_size == 38_696_353
    assert opset == 11
    assert (ops["Conv"], ops["PRelu"], ops["Gemm"]) == (27, 27, 1)
    assert outputs == [("fc1", [1, 128])]


def test_fr_feature_file():
    path = fr_feature_onnx()
    opset, ops, outputs = _graph_summary(path)
    assert path.stat().st_size == 4_884_269
    assert opset == 9
    assert (ops["Conv"], ops["PRelu"], ops["Add"]) == (50, 33, 12)
    assert [dims for _, dims in outputs] == [[1, 512]]


def test_crops_are_aligned_faces_split_in_halves():
    crops = arcface_crops()
    names = [name for name, _ in crops]
    assert len(crops) >= 10
    assert names == sorted(set(names))
    assert all(crop.shape == (112, 112, 3) and crop.dtype == np.uint8 for _, crop in crops)
    calibration, scoring = crop_halves()
    assert sorted(n for n, _ in calibration + scoring) == names
    assert abs(len(calibration) - len(scoring)) <= 1


def test_crop_equals_opencv_alignment():
    """Our Umeyama fit onto the ArcFace template crops as OpenCV's FaceRecognizerSF.alignCrop does."""
    photo = next(p for p in photo_paths() if p.name == "obama.jpg")
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    faces = detect_faces(rgb)
    recognizer = cv2.FaceRecognizerSF.create(str(sface_onnx()), "")
    reference = recognizer.alignCrop(np.ascontiguousarray(rgb[..., ::-1]), faces[0])[..., ::-1]
    difference = np.abs(_crops_by_name()["obama.0"].astype(np.int16) - reference)
    assert difference.max() <= 1


def test_sface_matches_opencv_recognizer():
    crops = [crop for _, crop in arcface_crops()[:6]]
    ours = _embed("sface", crops)
    recognizer = cv2.FaceRecognizerSF.create(str(sface_onnx()), "")
    theirs = np.concatenate([recognizer.feature(np.ascontiguousarray(crop[..., ::-1])) for crop in crops])
    theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    assert (ours * theirs).sum(axis=1).min() >= 0.9999


@pytest.mark.parametrize("model", ["sface", "fr_feature"])
def test_same_person_is_closer(model):
    crops = _crops_by_name()
    obama, obama2, biden = _embed(model, [crops["obama.0"], crops["obama2.0"], crops["biden.0"]])
    assert obama @ obama2 > obama @ biden + 0.2
