"""``FaceDetector``: photos in, face boxes, 5 landmarks and scores out, on any backend, without torch.

The default model is YuNet 2023mar (OpenCV zoo, MIT), shipped in the package
(``qfsdk/runtime/models/``), so detection works offline; any other YuNet-format ONNX file can be
given by path. It runs on the backend registry of the recognizer (ONNX Runtime, whose TensorRT
and CUDA execution providers serve GPUs; OpenVINO).

Detection mirrors OpenCV's ``cv::FaceDetectorYN``: the image (scaled down first so its longer
side is at most ``max_size``, or to fit a model with a fixed input size) is padded at the bottom
and right with zeros to a multiple of 32 and fed as BGR 0..255 NCHW; each output cell of
stride s at row r, column c scores ``sqrt(clip(cls) * clip(obj))``, its box centre is
``((c, r) + bbox[0:2]) * s``, its size ``exp(bbox[2:4]) * s`` and its landmarks
``((c, r) + kps) * s``; cells under ``score_threshold`` are dropped, the rest sorted by score
(stable), cut to ``top_k`` and thinned by greedy NMS on integer-truncated boxes (IoU above
``nms_threshold`` suppressed). Coordinates are mapped back to the original image's pixels.

Refinement (``DetectorOptions.refine``, on by default): YuNet's landmarks depend on where a face falls
on its stride grid, so a photo scaled down for detection moves them by a pixel or two of the scaled
photo, a cosine of up to 0.14 for some models. Each face found on a scaled-down photo is therefore
detected again at full resolution on a crop of the photo around it (:func:`refine_window`: a square
of :data:`REFINE_CROP` times the box's longer side, at least :data:`REFINE_MIN_SIDE`, about its
centre, its corner on the 32-pixel grid, so the crop's cells are the full-size run's; when the crops
together cover more pixels than the box around them all, one run on that box serves them all). The
crop's face of highest IoU with it, if above :data:`REFINE_MIN_IOU`, replaces it (else it stays as
found), and the faces are re-sorted by score (stable). Which faces are found stays that of the scaled
photo; where they are is full-size detection's. A photo costs at most a full-size run's pixels more.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .backends import open_backend
from .metadata import ModelFileError
from .resize import resize

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_DETECTOR = MODELS_DIR / "face_detection_yunet_2023mar.onnx"
# The longest photo side the detector sees by default (larger photos are scaled down first): YuNet
# finds faces most reliably near the scale it was trained at (at larger sizes it missed a 940-px
# face and added a false one), and time stays flat for big photos. YuNet's landmarks shift by a pixel
# or two between scales, which moves an embedding, so the faces found are refined at full resolution
# (DetectorOptions.refine): benchmarks/photo_pipeline.py's ``detect_sizes`` prints faces found, cosine
# to full-size detection (OpenCV's own FaceDetectorYN use) and throughput per size, refined or not.
DEFAULT_MAX_SIZE = 640
# The order of the 5 landmarks every detector format returns: the eye on the image's left (the
# person's right eye), the eye on the image's right, nose tip, mouth corner on the image's left,
# on its right. ArcFace's template uses the same points in the same order.
LANDMARKS = ("eye_image_left", "eye_image_right", "nose_tip", "mouth_image_left", "mouth_image_right")
# A refined face's crop: a square about its box centre of this many times the box's longer side, and
# at least REFINE_MIN_SIDE pixels: YuNet's points see that much context at full resolution (on the
# registry photos scaled 1-3x, 1.5x the box alone moved them by up to 4% of the face, 0.09 cosine for
# fr_feature W8A8; with 512 pixels its worst face is 0.9945, and 1.0 to 1.5 times the box did the same).
REFINE_CROP = 1.25
REFINE_MIN_SIDE = 512
# The least IoU of a face on the refinement crop with the face it refines (else the face stays as found).
REFINE_MIN_IOU = 0.5


@dataclass(frozen=True)
class DetectorOptions:
    """Detection settings: score and NMS (IoU) thresholds, the most candidates kept before NMS, the
    longest image side the network sees (larger photos are scaled down first; None: full size), and
    whether faces found on a scaled-down photo are refined at full resolution (see the module doc)."""

    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    top_k: int = 5000
    max_size: int | None = DEFAULT_MAX_SIZE
    refine: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in 0..1, got {self.score_threshold}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must lie in 0..1, got {self.nms_threshold}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_size is not None and self.max_size < 32:
            raise ValueError(f"max_size must be >= 32 pixels (or None), got {self.max_size}")


@dataclass(frozen=True)
class Faces:
    """The faces found in one image, best score first: ``boxes`` (K, 4) float32 x, y, width, height;
    ``landmarks`` (K, 5, 2) float32 (x, y) in :data:`LANDMARKS` order; ``scores`` (K,) float32."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray | list[int]) -> "Faces":
        """The faces at ``index``, in that order."""
        index = np.asarray(index, np.int64)
        return Faces(self.boxes[index], self.landmarks[index], self.scores[index])

    def select(self, max_faces: int | None = None, largest: bool = False) -> "Faces":
        """The ``max_faces`` best-scoring faces (all: None); with ``largest``, ordered by box area instead
        (largest first), so ``select(1, largest=True)`` is the biggest face."""
        order = np.arange(len(self))
        if largest:
            order = np.argsort(-(self.boxes[:, 2] * self.boxes[:, 3]), kind="stable")
        return self.take(order[:max_faces])


Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes (K, 4), landmarks (K, 5, 2), scores (K,)


@dataclass(frozen=True)
class DetectorFormat:
    """A detector family: the output names it must have, the size its input is padded to a multiple
    of, its channel order, and how its outputs decode into candidates above a score threshold."""

    name: str
    outputs: tuple[str, ...]
    divisor: int
    channel_order: str
    decode: Callable[[Mapping[str, np.ndarray], tuple[int, int], float], Decoded]


YUNET_STRIDES = (8, 16, 32)


def decode_yunet(outputs: Mapping[str, np.ndarray], padded: tuple[int, int], threshold: float) -> Decoded:
    """YuNet's cls/obj/bbox/kps outputs at strides 8/16/32 as candidates scoring >= ``threshold``
    (float32 arithmetic, as OpenCV's), in stride, row, column order."""
    parts = []
    for stride in YUNET_STRIDES:
        rows, cols = padded[0] // stride, padded[1] // stride
        cls, obj = (np.clip(outputs[f"{k}_{stride}"].reshape(-1), 0, 1).astype(np.float32) for k in ("cls", "obj"))
        if cls.size != rows * cols:
            raise ModelFileError(f"YuNet output cls_{stride} has {cls.size} cells, expected {rows}x{cols}")
        scores = np.sqrt(cls * obj)
        cells = np.flatnonzero(scores >= threshold)
        grid = np.stack([cells % cols, cells // cols], axis=1).astype(np.float32)  # (c, r)
        step = np.float32(stride)
        bbox = outputs[f"bbox_{stride}"].reshape(-1, 4)[cells].astype(np.float32)
        kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[cells].astype(np.float32)
        centre = (grid + bbox[:, :2]) * step
        size = np.exp(bbox[:, 2:]) * step
        boxes = np.concatenate([centre - size / np.float32(2), size], axis=1)
        parts.append((boxes, (kps + grid[:, None, :]) * step, scores[cells]))
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


# Detector formats by name; a file is of the first format whose outputs it has.
FORMATS: dict[str, DetectorFormat] = {
    "yunet": DetectorFormat("yunet", tuple(f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in YUNET_STRIDES),
                            32, "BGR", decode_yunet),
}


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """Indices kept by greedy NMS, best score first: candidates sorted by score (stable), cut to
    ``top_k``; each is kept unless its IoU with a kept one exceeds ``threshold``. IoUs are computed on
    boxes with x, y, width and height truncated to integers, as OpenCV's ``NMSBoxes`` on ``Rect2i``."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    rects = np.trunc(boxes[order].astype(np.float64))
    x1, y1 = rects[:, 0], rects[:, 1]
    x2, y2 = x1 + rects[:, 2], y1 + rects[:, 3]
    areas = rects[:, 2] * rects[:, 3]
    alive = np.ones(len(order), bool)
    kept = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        kept.append(i)
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        inter = np.where((w > 0) & (h > 0), w * h, 0.0)
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        alive[rest[iou > threshold]] = False
    return order[kept]


def iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The IoU (float64) of each of ``boxes`` (K, 4) with ``box`` (4,), all x, y, width, height."""
    boxes, box = boxes.astype(np.float64), box.astype(np.float64)
    w = np.minimum(boxes[:, 0] + boxes[:, 2], box[0] + box[2]) - np.maximum(boxes[:, 0], box[0])
    h = np.minimum(boxes[:, 1] + boxes[:, 3], box[1] + box[3]) - np.maximum(boxes[:, 1], box[1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = boxes[:, 2] * boxes[:, 3] + box[2] * box[3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def refine_window(box: np.ndarray, shape: tuple[int, int], grid: int) -> tuple[int, int, int, int] | None:
    """The crop (x0, y0, x1, y1) that refines a face's ``box`` in an image of ``shape`` (height, width):
    a square of :data:`REFINE_CROP` times the box's longer side (at least :data:`REFINE_MIN_SIDE`)
    about its centre (float64), its start floored onto the ``grid`` and its end rounded up to a whole
    number of cells past it (pixels the network's padding would hold), clipped to the image; None
    when nothing of it is inside (or the box is not finite)."""
    x, y, w, h = (float(v) for v in box)
    half = max(REFINE_CROP * max(w, h), REFINE_MIN_SIDE) / 2
    if not math.isfinite(x + y + half):
        return None
    corner = []
    for centre, limit in ((x + w / 2, shape[1]), (y + h / 2, shape[0])):
        start = max(0, math.floor((centre - half) / grid) * grid)
        end = min(limit, start + math.ceil((centre + half - start) / grid) * grid)
        corner.append((start, end))
    (x0, x1), (y0, y1) = corner
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


class FaceDetector:
    """Find faces in uint8 RGB photos with a YuNet-format ONNX file (default: the packaged YuNet 2023mar).

    ``backend`` is a key of the runtime's backend registry (``auto``: as for embedders);
    ``options`` the thresholds, the largest input side and refinement; ``backend_options`` go to the backend.
    Never downloads anything. Safe to share between threads.
    """

    def __init__(self, model_path: str | Path | None = None, backend: str = "auto", *,
                 options: DetectorOptions | None = None, threads: int | None = None,
                 backend_options: dict[str, Any] | None = None) -> None:
        self.model_path = Path(model_path) if model_path is not None else DEFAULT_DETECTOR
        if not self.model_path.is_file():
            raise ModelFileError(f"{self.model_path}: no such detector file; pass a YuNet ONNX file (or none: the packaged YuNet)")
        self.options = options or DetectorOptions()
        self._backend = open_backend(self.model_path, backend, threads=threads, **(backend_options or {}))
        self.backend_name = self._backend.name
        try:
            self.format = _format_of(self._backend.outputs, self.model_path)
            self._input = _image_input(self._backend.inputs, self.model_path)
        except ModelFileError:
            self._backend.close()
            raise
        height, width = self._input.shape[2:]
        self.fixed_size = (height, width) if height and width else None

    def detect(self, image: np.ndarray) -> Faces:
        """The faces in one uint8 RGB image (H, W, 3), best score first, in the image's pixels."""
        image = _check_photo(image)
        size = self.network_size(*image.shape[:2])
        faces = self._detect(image, size)
        if self.options.refine and size != image.shape[:2]:
            faces = self._refine(image, faces)
        return faces

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of that size is scaled to before detection."""
        return self._fit(height, width, self.options.max_size)

    def _fit(self, height: int, width: int, limit: int | None) -> tuple[int, int]:
        """(height, width) scaled so the longer side is at most ``limit`` (None: any) and a fixed input holds it."""
        scale = min(1.0, limit / max(height, width)) if limit else 1.0
        if self.fixed_size:
            scale = min(scale, self.fixed_size[0] / height, self.fixed_size[1] / width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def _detect(self, image: np.ndarray, size: tuple[int, int]) -> Faces:
        """The faces of ``image`` scaled to ``size`` (height, width), in the image's pixels."""
        height, width = image.shape[:2]
        pixels = resize(image, size)
        padded = self.fixed_size or tuple(-(-d // self.format.divisor) * self.format.divisor for d in size)
        blob = np.zeros((1, 3, *padded), np.float32)
        channels = pixels[..., ::-1] if self.format.channel_order == "BGR" else pixels
        blob[0, :, : size[0], : size[1]] = channels.transpose(2, 0, 1)
        outputs = self._backend.infer({self._input.name: blob.astype(self._input.dtype, copy=False)})
        boxes, landmarks, scores = self.format.decode(outputs, padded, self.options.score_threshold)
        keep = nms(boxes, scores, self.options.nms_threshold, self.options.top_k)
        scale = np.array([width / size[1], height / size[0]], np.float32)
        half = np.float32(0.5)
        boxes = np.concatenate([(boxes[keep, :2] + half) * scale - half, boxes[keep, 2:] * scale], axis=1)
        return Faces(boxes.astype(np.float32), ((landmarks[keep] + half) * scale - half).astype(np.float32),
                     scores[keep].astype(np.float32))

    def _refine(self, image: np.ndarray, faces: Faces) -> Faces:
        """``faces`` of ``image`` each replaced by its match on a full-resolution crop around it, if any."""
        height, width = image.shape[:2]
        windows = [refine_window(box, (height, width), self.format.divisor) for box in faces.boxes]
        inside = [w for w in windows if w is not None]
        if len(inside) > 1:
            union = (*np.min(inside, axis=0)[:2].tolist(), *np.max(inside, axis=0)[2:].tolist())
            if sum(_area(w) for w in inside) > _area(union):  # one run on the box around them all is cheaper
                windows = [None if w is None else union for w in windows]
        runs: dict[tuple[int, int, int, int], Faces] = {}
        boxes, landmarks, scores = faces.boxes.copy(), faces.landmarks.copy(), faces.scores.copy()
        for i, window in enumerate(windows):
            if window is None:
                continue
            x0, y0, x1, y1 = window
            if window not in runs:
                runs[window] = self._detect(image[y0:y1, x0:x1], self._fit(y1 - y0, x1 - x0, None))
            found = runs[window]
            offset = np.array([x0, y0], np.float32)
            moved = found.boxes.copy()
            moved[:, :2] += offset
            overlap = iou(moved, faces.boxes[i])
            if len(found) and overlap.max() > REFINE_MIN_IOU:
                j = int(np.argmax(overlap))
                boxes[i], landmarks[i], scores[i] = moved[j], found.landmarks[j] + offset, found.scores[j]
        return Faces(boxes, landmarks, scores).take(np.argsort(-scores, kind="stable"))

    def close(self) -> None:
        """Release the backend."""
        self._backend.close()

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _area(window: tuple[int, int, int, int]) -> int:
    return (window[2] - window[0]) * (window[3] - window[1])


def _format_of(outputs: tuple, path: Path) -> DetectorFormat:
    names = {t.name for t in outputs}
    for fmt in FORMATS.values():
        if set(fmt.outputs) <= names:
            return fmt
    raise ModelFileError(f"{path}: not a face detector qfsdk can decode (a YuNet file has outputs "
                         f"{', '.join(FORMATS['yunet'].outputs)}); pass a YuNet ONNX file")


def _image_input(inputs: tuple, path: Path):
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] not in (3, None):
        raise ModelFileError(f"{path}: a face detector takes one (1, 3, H, W) image input, this one has "
                             f"{[(t.name, t.shape) for t in inputs]}")
    return inputs[0]


def _check_photo(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return image


_SHARED: "weakref.WeakKeyDictionary[object, FaceDetector]" = weakref.WeakKeyDictionary()
DETECTOR_BACKEND = {"tensorrt": "onnxruntime"}  # engines hold one model: the detector runs beside it


def detector_for(owner: object, backend: str, threads: int | None = None) -> FaceDetector:
    """The packaged YuNet on ``backend`` (a TensorRT engine's owner gets ONNX Runtime, whose TensorRT or
    CUDA provider serves the GPU), created once per ``owner`` (an Embedder) and released with it."""
    detector = _SHARED.get(owner)
    if detector is None:
        detector = _SHARED[owner] = FaceDetector(backend=DETECTOR_BACKEND.get(backend, backend), threads=threads)
    return detector
