"""``Embedder``: face images in, float32 embeddings out, on any backend, without torch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .align import check_landmarks, warp_face
from .backends import open_backend
from .backends.base import Backend, TensorInfo
from .contract import FaceContract
from .errors import LandmarkError
from .images import as_image_list, check_rgb_image
from .metadata import ModelFileError, read_contract
from .placement import placement_note

log = logging.getLogger(__name__)
Images = np.ndarray | Sequence[np.ndarray]


class Embedder:
    """Embed faces with a model file (ONNX, or a TensorRT engine with its sidecar).

    The preprocessing contract (input size, mean/std, channel order, alignment template) is
    read from the model file; the preprocessed batch goes to the model's one input, and the
    embedding comes from the output the contract names (else the first). ``flip`` adds the
    embedding of the mirrored face (insightface's flip-sum); ``normalize`` L2-normalises each
    embedding (after the flip-sum). ``backend_options`` go to the backend (e.g.
    ``{"hint": "THROUGHPUT"}`` for openvino, ``{"providers": [...]}`` for onnxruntime,
    ``{"plugins": [...]}`` for tensorrt). Safe to share between threads.

    A quantized file whose Q/DQ placement is made for another backend (a ``tensorrt``-placement
    file on ONNX Runtime runs slower than the float model) is logged once, as a warning, with the
    commands that make the right file; ``placement_note`` holds that line (None when it fits).
    """

    def __init__(
        self,
        model_path: str | Path,
        backend: str = "auto",
        *,
        batch_size: int = 32,
        flip: bool = False,
        normalize: bool = False,
        threads: int | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = Path(model_path)
        contract = read_contract(self.model_path)
        if not isinstance(contract, FaceContract):
            raise ModelFileError(f"{model_path}: a {contract.task!r} model, not an embedder; Embedder runs face embedding models")
        self.contract = contract
        self._backend = open_backend(self.model_path, backend, threads=threads, **(backend_options or {}))
        self.backend_name = self._backend.name
        try:
            self._input, self._output = _embedding_io(self._backend, contract, self.model_path)
        except ValueError:
            self._backend.close()
            raise
        max_batch = self._backend.max_batch
        self.batch_size = min(batch_size, max_batch) if max_batch else batch_size
        self.flip = flip
        self.normalize = normalize
        self.placement_note = placement_note(self.model_path, self.backend_name)
        if self.placement_note:
            log.warning("%s", self.placement_note)

    def embed(self, images: Images, landmarks: np.ndarray | Sequence | None = None) -> np.ndarray:
        """Embeddings (N, D) float32 in input order.

        ``images``: aligned uint8 RGB crops of the model's input size, (H, W, 3), (N, H, W, 3) or a
        list of (H, W, 3); or, with ``landmarks`` (N, 5, 2) in image pixels (x, y) (or (5, 2) for one
        image), full uint8 RGB images of any size, warped to the contract's template first.
        """
        crops = self._crops(images) if landmarks is None else self._align(images, landmarks)
        out = np.empty((len(crops), self.contract.embedding_size), np.float32)
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            emb = self._run(chunk)
            if self.flip:
                emb = emb + self._run(chunk[:, :, ::-1])
            out[start : start + len(chunk)] = emb
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out

    def _run(self, crops: np.ndarray) -> np.ndarray:
        batch = self.contract.preprocess(crops).astype(self._input.dtype, copy=False)
        out = np.asarray(self._backend.infer({self._input.name: batch})[self._output.name], np.float32)
        if out.shape != (len(crops), self.contract.embedding_size):
            raise RuntimeError(f"{self.model_path}: backend returned {out.shape}, expected ({len(crops)}, {self.contract.embedding_size})")
        return out

    def _crops(self, images: Images) -> np.ndarray:
        """Validated aligned crops as one (N, H, W, 3) uint8 array."""
        return np.stack([check_rgb_image(im, i, self.contract.input_size) for i, im in enumerate(as_image_list(images))])

    def align(self, image: np.ndarray, landmarks: np.ndarray | Sequence) -> np.ndarray:
        """One full uint8 RGB image (H, W, 3) warped to the contract's template with its 5 landmarks (x, y).

        Raises :class:`~qfsdk.runtime.errors.LandmarkError` for landmarks that cannot align a face:
        not finite, outside the image, all at one point or on one line.
        """
        return self._align_face(image, landmarks, 0)

    def _align_face(self, image: np.ndarray, landmarks: np.ndarray | Sequence, index: int) -> np.ndarray:
        template = self.contract.template
        if template is None:
            raise ValueError(f"{self.model_path}: its contract has no alignment template; pass aligned crops instead")
        image = check_rgb_image(image, index)
        points = check_landmarks(landmarks, image.shape)
        return warp_face(image, points, template, self.contract.input_size, self.contract.template_fit)

    def _align(self, images: Images, landmarks: np.ndarray | Sequence) -> np.ndarray:
        """Warp each full image to the contract's template with its 5 landmarks."""
        items = as_image_list(images)
        points = np.asarray(landmarks, np.float64)
        if points.shape == (5, 2) and len(items) == 1:
            points = points[None]
        if points.shape != (len(items), 5, 2):
            raise ValueError(f"expected landmarks of shape ({len(items)}, 5, 2) (x, y per point and image), got {points.shape}")
        crops = []
        for i, (image, marks) in enumerate(zip(items, points)):
            try:
                crops.append(self._align_face(image, marks, i))
            except LandmarkError as exc:
                raise LandmarkError(f"face {i}: {exc}") from None
        return np.stack(crops)

    def embed_photos(self, images: Images, max_faces: int | None = None, largest: bool = False,
                     detector: Any = None) -> Any:
        """Every face of uint8 RGB photos of any size: detected (default: the packaged YuNet on this
        backend), aligned to the contract's template and embedded. Returns a
        :class:`~qfsdk.runtime.photos.PhotoEmbeddings`: per face its photo's index, box, 5 landmarks,
        score and embedding. ``max_faces`` per photo, best score first (``largest``: biggest first)."""
        from .photos import embed_photos

        return embed_photos(self, images, max_faces=max_faces, largest=largest, detector=detector)

    def close(self) -> None:
        """Release the backend."""
        self._backend.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _embedding_io(backend: Backend, contract: FaceContract, path: Path) -> tuple[TensorInfo, TensorInfo]:
    """The model's image input (checked against the contract) and its embedding output."""
    if len(backend.inputs) != 1:
        raise ModelFileError(f"{path}: an embedding model takes one image input, this one has {[t.name for t in backend.inputs]}")
    image = backend.inputs[0]
    expected = (3, *contract.input_size)
    if any(d is not None and d != e for d, e in zip(image.shape[1:], expected)):
        raise ValueError(f"{path}: model input {image.shape} does not match its contract's {expected}")
    if contract.embedding_output is None:
        return image, backend.outputs[0]
    for output in backend.outputs:
        if output.name == contract.embedding_output:
            return image, output
    raise ModelFileError(f"{path}: its contract names the embedding output {contract.embedding_output!r}; "
                         f"the model's outputs are {[t.name for t in backend.outputs]}")
