"""dlib's face-recognition ResNet: our .dat reader and PyTorch model against dlib itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qfsdk.errors import CheckpointError
from qfsdk.models.dlib_resnet import (
    DLIB_MEAN_RGB,
    DLIB_STD,
    DlibResNet,
    PaddedAdd,
    default_weights_path,
    preprocess,
    read_dlib_dat,
)

from face_photos import face_chips, photo_chips  # pytest puts tests/ on sys.path

DLIB_TOLERANCE = 1e-4
SAME_PERSON_THRESHOLD = 0.6
OBAMA = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "obama_partial_face2.jpg")
# dnn_face_recognition_ex.cpp's anet_type: the stem conv, then two per residual block.
CONV_LAYERS_IN_DAT = 29


@pytest.fixture(scope="module")
def weights() -> Path:
    return default_weights_path()


@pytest.fixture(scope="module")
def state(weights: Path) -> dict[str, torch.Tensor]:
    return read_dlib_dat(weights)


@pytest.fixture(scope="module")
def model(state: dict[str, torch.Tensor]) -> DlibResNet:
    net = DlibResNet()
    net.load_state_dict(state, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def chips() -> list[np.ndarray]:
    pytest.importorskip("dlib")
    return face_chips()


def describe(model: DlibResNet, chips: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(preprocess(np.stack(chips))).numpy()


# --- (a) reading the .dat and the network's structure ------------------------------------


def test_dat_fills_every_parameter_with_matching_shapes(state: dict[str, torch.Tensor]) -> None:
    expected = DlibResNet().state_dict()
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())


def test_structure(model: DlibResNet, state: dict[str, torch.Tensor]) -> None:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == CONV_LAYERS_IN_DAT
    assert sum(tensor.dim() == 4 for tensor in state.values()) == CONV_LAYERS_IN_DAT
    assert all(conv.bias is not None for conv in convs)
    assert sum(isinstance(m, PaddedAdd) for m in model.modules()) == 4
    assert model.fc.in_features == 256 and model.fc.bias is None
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 150, 150)).shape == (2, 128)


def test_preprocess_is_dlibs_input_layer() -> None:
    chip = np.zeros((150, 150, 3), np.uint8)
    chip[0, 0] = (0, 128, 255)
    x = preprocess(chip)
    assert x.shape == (1, 3, 150, 150) and x.dtype == torch.float32
    expected = (np.array([0, 128, 255], np.float32) - np.array(DLIB_MEAN_RGB, np.float32)) / np.float32(DLIB_STD)
    assert torch.equal(x[0, :, 0, 0], torch.from_numpy(expected))
    assert preprocess(np.stack([chip, chip])).shape == (2, 3, 150, 150)
    with pytest.raises(ValueError, match="150"):
        preprocess(np.zeros((112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((150, 150, 3), np.float32))


def test_padded_add_pads_channels_and_bottom_right_with_zeros() -> None:
    add = PaddedAdd(main_shape=(2, 1, 1), skip_shape=(1, 2, 2))
    main = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)
    skip = torch.arange(1.0, 5.0).view(1, 1, 2, 2)
    expected = torch.tensor([[[11.0, 2.0], [3.0, 4.0]], [[20.0, 0.0], [0.0, 0.0]]]).unsqueeze(0)
    assert torch.equal(add(main, skip), expected)


# --- (b) the oracle: dlib's own descriptors ------------------------------------------------


@pytest.fixture(scope="module")
def dlib_model(weights: Path):
    dlib = pytest.importorskip("dlib")
    return dlib.face_recognition_model_v1(str(weights))


def assert_matches_dlib(model: DlibResNet, dlib_model, chips: list[np.ndarray]) -> None:
    ours = describe(model, chips)
    theirs = np.array([dlib_model.compute_face_descriptor(chip, 0) for chip in chips], np.float32)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= DLIB_TOLERANCE, f"max |ours - dlib| = {diff:.3g} over {len(chips)} chips"


def test_matches_dlib_on_real_faces(model: DlibResNet, dlib_model, chips: list[np.ndarray]) -> None:
    assert len(chips) >= 10
    assert_matches_dlib(model, dlib_model, chips)


def test_matches_dlib_on_a_random_chip(model: DlibResNet, dlib_model) -> None:
    chip = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    assert_matches_dlib(model, dlib_model, [chip])


# --- (c) face verification with our model --------------------------------------------------


def test_same_person_close_different_people_far(model: DlibResNet) -> None:
    pytest.importorskip("dlib")
    obama = describe(model, [photo_chips(name)[0] for name in OBAMA])
    biden = describe(model, photo_chips("biden.jpg"))[0]
    same = [float(np.linalg.norm(a - b)) for a, b in itertools.combinations(obama, 2)]
    different = [float(np.linalg.norm(a - biden)) for a in obama]
    assert max(same) < SAME_PERSON_THRESHOLD, same
    assert min(different) > SAME_PERSON_THRESHOLD, different


# --- (d) files that are not the network ----------------------------------------------------


def assert_rejected(path: Path, message: str) -> None:
    with pytest.raises(CheckpointError, match=message) as info:
        read_dlib_dat(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("keep", [10, 11_000_000, -1])
def test_truncated_file(weights: Path, tmp_path: Path, keep: int) -> None:
    path = tmp_path / "truncated.dat"
    path.write_bytes(weights.read_bytes()[:keep])
    assert_rejected(path, "truncated")


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dat"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_rejected(path, "dlib_face_recognition_resnet_model_v1")


def test_other_dlib_network(weights: Path) -> None:
    assert_rejected(weights.with_name("mmod_human_face_detector.dat"), "expected 'loss_metric_2'")


def test_corrupt_layer(weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "corrupt.dat"
    path.write_bytes(weights.read_bytes().replace(b"max_pool_2", b"max_pool_9"))
    assert_rejected(path, "max_pool layer: expected 'max_pool_2', found 'max_pool_9'")


def test_wrong_stride(weights: Path, tmp_path: Path) -> None:
    data = bytearray(weights.read_bytes())
    # The stem's con_4: params tensor (version 2, 4736x1x1x1 floats), then num_filters 32,
    # rows 7, columns 7, stride_y 2 in dlib's integer encoding (size byte, value bytes).
    params_at = data.find(b"con_4") + len(b"con_4")
    assert data[params_at : params_at + 11] == bytes.fromhex("0102 028012 0101 0101 0101")
    fields_at = params_at + 11 + 4736 * 4
    assert data[fields_at : fields_at + 8] == bytes.fromhex("0120 0107 0107 0102")
    data[fields_at + 7] = 1
    path = tmp_path / "stride.dat"
    path.write_bytes(bytes(data))
    assert_rejected(path, "stem.conv stride_y: expected 2, found 1")


def test_trailing_bytes(weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "trailing.dat"
    path.write_bytes(weights.read_bytes() + b"\x00")
    assert_rejected(path, "1 unexpected bytes after the network")


def test_missing_file(tmp_path: Path) -> None:
    assert_rejected(tmp_path / "absent.dat", "cannot read")
