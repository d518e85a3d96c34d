"""Minimal ctypes binding of libqfsdk (the C ABI in ../include/qfsdk.h), used by the tests
and benchmarks, and an example of calling the library from a non-C language.

    lib = Library("build/native/libqfsdk.so")
    with lib.embedder("model.onnx", num_threads=1) as emb:
        vectors = emb.embed_aligned(crops)          # (N, H, W, 3) uint8 -> (N, E) float32
        with lib.detector("face_detection_yunet_2023mar.onnx") as det:
            faces = emb.embed_photo(det, photo)     # {boxes, landmarks, scores, embeddings}
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

STATUS_NAMES = (
    "QFSDK_OK", "QFSDK_ERR_INVALID_ARGUMENT", "QFSDK_ERR_NOT_FOUND", "QFSDK_ERR_NO_CONTRACT",
    "QFSDK_ERR_BAD_CONTRACT", "QFSDK_ERR_INPUT_SIZE", "QFSDK_ERR_BUFFER_TOO_SMALL",
    "QFSDK_ERR_BACKEND_UNAVAILABLE", "QFSDK_ERR_BACKEND", "QFSDK_ERR_UNSUPPORTED", "QFSDK_ERR_INTERNAL",
)  # fmt: skip

_u8p = ctypes.POINTER(ctypes.c_uint8)
_f32p = ctypes.POINTER(ctypes.c_float)
_size = ctypes.c_size_t


class Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("num_threads", ctypes.c_int32), ("flip", ctypes.c_int32),
                ("normalize", ctypes.c_int32), ("batch_hint", ctypes.c_int32)]  # fmt: skip


class DetectorOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("num_threads", ctypes.c_int32), ("score_threshold", ctypes.c_double),
                ("nms_threshold", ctypes.c_double), ("top_k", ctypes.c_int32), ("max_size", ctypes.c_int32),
                ("refine", ctypes.c_int32)]  # fmt: skip


class NativeError(RuntimeError):
    """A libqfsdk call returned a status other than QFSDK_OK."""

    def __init__(self, status: int, message: str):
        self.status = STATUS_NAMES[status] if 0 <= status < len(STATUS_NAMES) else str(status)
        super().__init__(f"{self.status}: {message}")


class Library:
    """libqfsdk.so loaded with its function signatures declared."""

    def __init__(self, path: str | Path):
        lib = self.c = ctypes.CDLL(str(path))
        signatures = {
            "qfsdk_abi_version": (ctypes.c_int, []),
            "qfsdk_options_init": (None, [ctypes.POINTER(Options)]),
            "qfsdk_embedder_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(Options),
                                                     ctypes.POINTER(ctypes.c_void_p)]),
            "qfsdk_embedder_destroy": (None, [ctypes.c_void_p]),
            "qfsdk_embed_aligned": (ctypes.c_int, [ctypes.c_void_p, _u8p, _size, _size, _size, _f32p, _size]),
            "qfsdk_embed_landmarks": (ctypes.c_int, [ctypes.c_void_p, _u8p, _size, _size, _size, _f32p, _f32p, _size]),
            "qfsdk_align": (ctypes.c_int, [ctypes.c_void_p, _u8p, _size, _size, _size, _f32p, _u8p, _size]),
            "qfsdk_embedding_size": (_size, [ctypes.c_void_p]),
            "qfsdk_input_size": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_size), ctypes.POINTER(_size)]),
            "qfsdk_contract_json": (ctypes.c_char_p, [ctypes.c_void_p]),
            "qfsdk_backend_name": (ctypes.c_char_p, [ctypes.c_void_p]),
            "qfsdk_last_error": (ctypes.c_char_p, [ctypes.c_void_p]),
            "qfsdk_detector_options_init": (None, [ctypes.POINTER(DetectorOptions)]),
            "qfsdk_detector_create": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(DetectorOptions),
                                                     ctypes.POINTER(ctypes.c_void_p)]),
            "qfsdk_detector_destroy": (None, [ctypes.c_void_p]),
            "qfsdk_detect": (ctypes.c_int, [ctypes.c_void_p, _u8p, _size, _size, _size, _f32p, _f32p, _f32p,
                                            ctypes.POINTER(_size)]),
            "qfsdk_embed_photo": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, _u8p, _size, _size, _size, _f32p,
                                                 _f32p, _f32p, _f32p, ctypes.POINTER(_size)]),
            "qfsdk_detector_last_error": (ctypes.c_char_p, [ctypes.c_void_p]),
        }  # fmt: skip
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def check(self, status: int, handle: int | None = None, last_error=None) -> None:
        if status != 0:
            raise NativeError(status, (last_error or self.c.qfsdk_last_error)(handle).decode())

    def embedder(self, model: str | Path, backend: str | None = None, **options) -> "NativeEmbedder":
        return NativeEmbedder(self, model, backend, **options)

    def detector(self, model: str | Path | None, **options) -> "NativeDetector":
        return NativeDetector(self, model, **options)


class NativeDetector:
    """One qfsdk_detector handle; options: num_threads, score_threshold, nms_threshold, top_k, max_size, refine."""

    def __init__(self, lib: Library, model: str | Path | None, **options):
        self.lib, self.handle = lib, None
        opts = DetectorOptions()
        lib.c.qfsdk_detector_options_init(ctypes.byref(opts))
        for key, value in options.items():
            setattr(opts, key, value)
        handle = ctypes.c_void_p()
        path = str(model).encode() if model is not None else None
        lib.check(lib.c.qfsdk_detector_create(path, ctypes.byref(opts), ctypes.byref(handle)))
        self.handle = handle.value

    def detect(self, image: np.ndarray, capacity: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (K, 4), landmarks (K, 5, 2), scores (K,)) of one uint8 RGB photo."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        boxes, marks, scores = _face_arrays(capacity)
        count = _size(capacity)
        status = self.lib.c.qfsdk_detect(self.handle, image.ctypes.data_as(_u8p), image.shape[0], image.shape[1], 0,
                                         *(a.ctypes.data_as(_f32p) for a in (boxes, marks, scores)), ctypes.byref(count))
        self.lib.check(status, self.handle, self.lib.c.qfsdk_detector_last_error)
        return boxes[: count.value], marks[: count.value], scores[: count.value]

    def close(self) -> None:
        if self.handle:
            self.lib.c.qfsdk_detector_destroy(self.handle)
            self.handle = None

    def __enter__(self) -> "NativeDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _face_arrays(capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.zeros((capacity, 4), np.float32), np.zeros((capacity, 5, 2), np.float32),
            np.zeros(capacity, np.float32))  # fmt: skip


class NativeEmbedder:
    """One qfsdk_embedder handle; options: num_threads, flip, normalize, batch_hint."""

    def __init__(self, lib: Library, model: str | Path, backend: str | None = None, **options):
        self.lib, self.handle = lib, None
        opts = Options()
        lib.c.qfsdk_options_init(ctypes.byref(opts))
        for key, value in options.items():
            setattr(opts, key, int(value))
        handle = ctypes.c_void_p()
        backend_arg = backend.encode() if backend else None
        lib.check(lib.c.qfsdk_embedder_create(str(model).encode(), backend_arg, ctypes.byref(opts), ctypes.byref(handle)))
        self.handle = handle.value
        self.embedding_size = lib.c.qfsdk_embedding_size(self.handle)
        h, w = _size(), _size()
        lib.check(lib.c.qfsdk_input_size(self.handle, ctypes.byref(h), ctypes.byref(w)), self.handle)
        self.input_size = (h.value, w.value)
        self.contract_json = lib.c.qfsdk_contract_json(self.handle).decode()
        self.backend = lib.c.qfsdk_backend_name(self.handle).decode()

    def embed_aligned(self, crops: np.ndarray) -> np.ndarray:
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        if crops.ndim == 3:
            crops = crops[None]
        out = np.empty((len(crops), self.embedding_size), np.float32)
        status = self.lib.c.qfsdk_embed_aligned(self.handle, crops.ctypes.data_as(_u8p), len(crops), crops.shape[1],
                                                crops.shape[2], out.ctypes.data_as(_f32p), out.size)  # fmt: skip
        self.lib.check(status, self.handle)
        return out

    def embed_landmarks(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        image, marks = np.ascontiguousarray(image, dtype=np.uint8), np.ascontiguousarray(landmarks, dtype=np.float32)
        out = np.empty(self.embedding_size, np.float32)
        status = self.lib.c.qfsdk_embed_landmarks(self.handle, image.ctypes.data_as(_u8p), image.shape[0], image.shape[1],
                                                  0, marks.ctypes.data_as(_f32p), out.ctypes.data_as(_f32p), out.size)  # fmt: skip
        self.lib.check(status, self.handle)
        return out

    def align(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        image, marks = np.ascontiguousarray(image, dtype=np.uint8), np.ascontiguousarray(landmarks, dtype=np.float32)
        crop = np.empty((*self.input_size, 3), np.uint8)
        status = self.lib.c.qfsdk_align(self.handle, image.ctypes.data_as(_u8p), image.shape[0], image.shape[1], 0,
                                        marks.ctypes.data_as(_f32p), crop.ctypes.data_as(_u8p), crop.size)  # fmt: skip
        self.lib.check(status, self.handle)
        return crop

    def embed_photo(self, detector: NativeDetector, image: np.ndarray, capacity: int = 64) -> dict[str, np.ndarray]:
        """{boxes, landmarks, scores, embeddings} of every face of one uint8 RGB photo (qfsdk_embed_photo)."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        boxes, marks, scores = _face_arrays(capacity)
        embeddings = np.zeros((capacity, self.embedding_size), np.float32)
        count = _size(capacity)
        arrays = (a.ctypes.data_as(_f32p) for a in (boxes, marks, scores, embeddings))
        status = self.lib.c.qfsdk_embed_photo(self.handle, detector.handle, image.ctypes.data_as(_u8p), image.shape[0],
                                              image.shape[1], 0, *arrays, ctypes.byref(count))  # fmt: skip
        self.lib.check(status, self.handle)
        k = count.value
        return {"boxes": boxes[:k], "landmarks": marks[:k], "scores": scores[:k], "embeddings": embeddings[:k]}

    def close(self) -> None:
        if self.handle:
            self.lib.c.qfsdk_embedder_destroy(self.handle)
            self.handle = None

    def __enter__(self) -> "NativeEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
