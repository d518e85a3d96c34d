"""Locate pretrained weights that ship inside installed packages (torch-free, import-free).

qfsdk never downloads weights: pretrained models come from packages the user installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qfsdk.errors import MissingDependencyError

DLIB_PACKAGE = "face_recognition_models"
DLIB_RESNET_FILE = "models/dlib_face_recognition_resnet_model_v1.dat"


def package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside installed ``package`` without importing it, or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def dlib_resnet_weights() -> Path:
    """dlib's face-recognition ResNet ``.dat`` from the ``face-recognition-models`` package."""
    path = package_file(DLIB_PACKAGE, DLIB_RESNET_FILE)
    if path is None:
        raise MissingDependencyError("face-recognition-models", "dlib_resnet's pretrained weights", "pip install 'qfsdk[dlib]'")
    return path
