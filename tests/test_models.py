"""Model zoo: registry, reference checkpoint layout, strict loading and its error messages."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qfsdk.errors import CheckpointError, ConfigError
from qfsdk.models import create, get_spec, names

REFERENCE_KEYS = json.loads((Path(__file__).parent / "data" / "reference_state_keys.json").read_text())
ARCFACE_FAMILY = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "mobilefacenet"]


def test_zoo_names():
    assert set(names()) == {*ARCFACE_FAMILY, "dlib_resnet"}


@pytest.mark.parametrize("name", ARCFACE_FAMILY)
def test_state_dict_equals_reference_layout(name):
    """Names, order and shapes equal those of the insightface/QuantFace reference modules."""
    with torch.device("meta"):
        model = get_spec(name).build()
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == REFERENCE_KEYS[name]


@pytest.mark.parametrize(
    "name, millions", [("iresnet18", 24.0), ("iresnet50", 43.6), ("iresnet100", 65.2), ("mobilefacenet", 1.0)]
)
def test_parameter_counts_match_the_paper(name, millions):
    assert get_spec(name).num_parameters() / 1e6 == pytest.approx(millions, abs=0.06)


@pytest.mark.parametrize("name, dim", [("iresnet18", 512), ("mobilefacenet", 128)])
def test_forward_shape_and_contract(name, dim):
    model = create(name)
    contract = model.contract
    assert contract.embedding_size == dim and contract.input_size == (112, 112)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *contract.input_size))
    assert out.shape == (2, dim)


def test_dlib_contract_is_euclidean_at_0_6():
    contract = get_spec("dlib_resnet").contract
    assert (contract.distance, contract.threshold, contract.input_size) == ("euclidean", 0.6, (150, 150))


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean iresnet50"):
        create("iresnet5O")


@pytest.fixture(scope="module")
def r18_state():
    torch.manual_seed(0)
    model = create("iresnet18")
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    return model.state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "ddp-wrapped", "training-checkpoint"])
def test_saved_state_dict_loads_strictly(tmp_path, r18_state, fmt):
    path = tmp_path / f"r18.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "pth":
        torch.save(r18_state, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in r18_state.items()}, str(path))
    elif fmt == "ddp-wrapped":
        torch.save({f"module.{k}": v for k, v in r18_state.items()}, path)
    else:
        torch.save({"epoch": 3, "state_dict": r18_state, "optimizer": {}}, path)
    model = create("iresnet18", weights=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, r18_state[key]), key


def test_checkpoint_without_num_batches_tracked_loads(tmp_path, r18_state):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in r18_state.items() if not k.endswith("num_batches_tracked")}, path)
    loaded = create("iresnet18", weights=path).state_dict()
    assert loaded.keys() == r18_state.keys()
    for key in (k for k in loaded if not k.endswith("num_batches_tracked")):
        assert torch.equal(loaded[key], r18_state[key]), key


def test_wrong_architecture_lists_missing_unexpected_and_shapes(tmp_path, r18_state):
    path = tmp_path / "r18.pth"
    torch.save(r18_state, path)
    with pytest.raises(CheckpointError) as info:
        create("iresnet34", weights=path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "missing (layer1.2." in message and "it looks like a iresnet18 checkpoint" in message


def test_wrong_shapes_are_listed(tmp_path, r18_state):
    state = dict(r18_state)
    state["fc.weight"] = torch.zeros(128, 25088)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"1 wrongly shaped \(fc.weight: file \[128, 25088\] vs model \[512, 25088\]\)"):
        create("iresnet18", weights=path)


def test_truncated_checkpoint_gives_one_line_error(tmp_path, r18_state):
    full = tmp_path / "full.pth"
    torch.save(r18_state, full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth is a truncated or damaged zip archive") as info:
        create("iresnet18", weights=cut)
    assert "\n" not in str(info.value)


def test_corrupt_safetensors_gives_clear_error(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors is data of no format qfsdk knows"):
        create("mobilefacenet", weights=path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such weights file"):
        create("mobilefacenet", weights=tmp_path / "nope.pth")


def _touch(path):
    Path(path).touch()


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_pickle_needing_code_execution_is_refused_without_running(tmp_path, container):
    marker = tmp_path / "code-ran"
    payload = _Payload(marker)
    path = tmp_path / "evil.pth"
    if container == "zip":
        torch.save({"conv1.weight": torch.zeros(1), "x": payload}, path)
    else:
        path.write_bytes(pickle.dumps({"x": payload}, protocol=2))
    with pytest.raises(CheckpointError, match="refused: loading it would execute code") as info:
        create("iresnet18", weights=path)
    assert "_touch" in str(info.value)
    assert not marker.exists()
