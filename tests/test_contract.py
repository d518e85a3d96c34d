"""FaceContract: preprocessing and serialisation."""

import numpy as np
import pytest

from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output

ARCFACE = FaceContract(input_size=(112, 112), embedding_size=512)


def test_preprocess_scales_to_minus_one_one_nchw():
    crops = np.zeros((2, 112, 112, 3), np.uint8)
    crops[..., 0] = 255
    out = ARCFACE.preprocess(crops)
    assert out.shape == (2, 3, 112, 112) and out.dtype == np.float32
    assert out[:, 0].min() == 1.0 and out[:, 1].max() == -1.0


def test_bgr_contract_swaps_channels():
    bgr = FaceContract(input_size=(4, 4), embedding_size=8, channel_order="BGR")
    crop = np.zeros((4, 4, 3), np.uint8)
    crop[..., 0] = 255
    assert bgr.preprocess(crop)[0, 2].min() == 1.0


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((112, 112, 3), np.float32), "uint8"),
        (np.zeros((100, 112, 3), np.uint8), "shape"),
        (np.zeros((112, 112, 4), np.uint8), "shape"),
    ],
)
def test_preprocess_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        ARCFACE.preprocess(bad)


def test_json_round_trip_and_unknown_fields():
    assert FaceContract.from_json(ARCFACE.to_json()) == ARCFACE
    with pytest.raises(ValueError, match="unknown contract fields"):
        FaceContract.from_dict({**ARCFACE.to_dict(), "colour": "x"})


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []
