"""5-point alignment of IJB loose crops, through :func:`qfsdk.runtime.align.warp_face`.

IJB landmarks are insightface's five points (eyes, nose tip, mouth corners). A model whose
contract uses that alignment (``arcface_5pt``) is warped to its own template. Any other model
(``dlib_resnet``: dlib's 5 points are eye corners and the nose base) gets insightface's template
scaled to its input size: not its own crop, so its IJB numbers understate it.
"""

from __future__ import annotations

import numpy as np

from qfsdk.runtime.align import TEMPLATES, warp_face
from qfsdk.runtime.contract import FaceContract

ARCFACE_112 = np.array(TEMPLATES["arcface"])
ARCFACE_ALIGNMENT = "arcface_5pt"


def template_for(size: tuple[int, int]) -> np.ndarray:
    """insightface's 112x112 ArcFace template scaled to a (H, W) crop."""
    height, width = size
    return ARCFACE_112 * np.array([width / 112.0, height / 112.0])


def align_face(image: np.ndarray, landmarks: np.ndarray, contract: FaceContract) -> np.ndarray:
    """Warp uint8 RGB ``image`` so its insightface-style 5 ``landmarks`` (x, y) land on the model's template."""
    if contract.alignment == ARCFACE_ALIGNMENT and contract.template is not None:
        return warp_face(image, landmarks, contract.template, contract.input_size, contract.template_fit)
    return warp_face(image, landmarks, template_for(contract.input_size), contract.input_size)
