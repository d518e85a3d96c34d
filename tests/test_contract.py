"""FaceContract: preprocessing and serialisation; contracts by task."""

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from qfsdk.runtime.contract import CONTRACTS, FaceContract, ModelContract, contract_from_dict, contract_from_json
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


def test_template_round_trips_through_json_and_is_validated():
    from qfsdk.models import get_spec

    dlib = get_spec("dlib_resnet").contract
    assert FaceContract.from_json(dlib.to_json()) == dlib
    assert len(dlib.template) == 5 and dlib.template_fit == "template_to_landmarks"
    assert get_spec("iresnet50").contract.template[0] == (38.2946, 51.6963)
    with pytest.raises(ValueError, match="five"):
        FaceContract(input_size=(4, 4), embedding_size=8, template=((1.0, 2.0),))
    with pytest.raises(ValueError, match="template_fit"):
        FaceContract(input_size=(4, 4), embedding_size=8, template_fit="sideways")


def test_contract_without_template_still_parses():
    legacy = {k: v for k, v in ARCFACE.to_dict().items() if k not in ("template", "template_fit")}
    assert FaceContract.from_dict(legacy).template is None


def test_contracts_name_their_task_and_json_without_one_is_an_embedder():
    assert json.loads(ARCFACE.to_json())["task"] == "embedder" == FaceContract.task
    untagged = {k: v for k, v in ARCFACE.to_dict().items() if k != "task"}  # files written before tasks
    assert contract_from_dict(untagged) == FaceContract.from_dict(untagged) == ARCFACE
    assert contract_from_json(ARCFACE.to_json()) == ARCFACE
    with pytest.raises(ValueError, match=r"unknown contract task 'segmenter'; known: \[.*'embedder'"):
        contract_from_dict({**untagged, "task": "segmenter"})


def test_a_new_task_plugs_in_with_its_own_contract_class(monkeypatch):
    @dataclass(frozen=True)
    class BoxContract(ModelContract):
        task: ClassVar[str] = "detector"
        input_size: tuple[int, int]
        score_threshold: float = 0.5

    monkeypatch.setitem(CONTRACTS, "detector", BoxContract)
    boxes = BoxContract(input_size=(640, 480))
    assert json.loads(boxes.to_json()) == {"task": "detector", "input_size": [640, 480], "score_threshold": 0.5}
    assert contract_from_json(boxes.to_json()) == boxes
    with pytest.raises(ValueError, match=r"a 'detector' contract is not a FaceContract"):
        FaceContract.from_json(boxes.to_json())
