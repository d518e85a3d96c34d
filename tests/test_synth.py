"""Data-free synthesis: methods, determinism, resume, refusal, on-the-fly source and the CLI."""

import functools
import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import qfsdk.calib.synth as synth
from qfsdk.calib.data import BatchSource, pixels_to_input
from qfsdk.calib.inversion import METHODS, InversionSettings, resolve_method
from qfsdk.calib.synth import load_synthetic_dir, synthesize, synthetic_source
from qfsdk.cli import main
from qfsdk.errors import ConfigError, QfsdkError
from qfsdk.models import create, get_spec
from qfsdk.models.dlib_resnet import Affine
from qfsdk.runtime.contract import FaceContract

TINY = FaceContract(input_size=(16, 16), embedding_size=8)
TINY_INPUT = functools.partial(pixels_to_input, contract=TINY)
FAST = {"n": 5, "batch_size": 2, "iterations": 2, "progress": False}  # 3 batches: 2 + 2 + 1


class TinyNet(nn.Module):
    """Two conv stages with BatchNorm (statistics learnt on a 'training set'), the same BatchNorm
    folded into dlib-style Affine layers, or no normalisation at all."""

    def __init__(self, norm: str):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 8)
        self._learn_statistics()
        for index in (1, 4):
            self.body[index] = {"bn": self.body[index], "affine": _fold(self.body[index]), "none": nn.Identity()}[norm]

    def _learn_statistics(self) -> None:
        """BatchNorm statistics of smooth, warm-tinted images (cumulative average)."""
        smooth = nn.functional.interpolate(torch.rand(64, 3, 4, 4), size=16, mode="bilinear")
        tint = torch.tensor([0.9, 0.6, 0.4]).view(1, 3, 1, 1)
        for index in (1, 4):
            self.body[index].momentum = None
        with torch.no_grad():
            self.train()(TINY_INPUT(smooth * tint * 255))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


def _fold(bn: nn.BatchNorm2d) -> Affine:
    """BatchNorm (unit scale, zero shift) as a dlib-style affine layer: statistics are gone."""
    affine = Affine(bn.num_features)
    with torch.no_grad():
        affine.weight.copy_(1 / (bn.running_var + bn.eps).sqrt())
        affine.bias.copy_(-bn.running_mean * affine.weight)
    return affine


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches run faster on one thread, and do not stall when another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupted(Exception):
    """Stands for Ctrl-C or a killed process in the middle of a run."""


def _bn_mismatch(model: nn.Module, images: torch.Tensor) -> float:
    """Mean |batch mean - running mean| / running std over every BatchNorm input."""
    gaps = []
    hooks = [
        bn.register_forward_pre_hook(
            lambda m, inp: gaps.append(((inp[0].mean((0, 2, 3)) - m.running_mean).abs() / m.running_var.sqrt()).mean())
        )
        for bn in model.modules()
        if isinstance(bn, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return torch.stack(gaps).mean().item()


def _images(source) -> torch.Tensor:
    return torch.cat(list(source))


def _png_bytes(directory) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*.png"))}


@pytest.fixture(scope="module")
def mfn_weights(tmp_path_factory):
    """A mobilefacenet checkpoint file (random weights, fixed seed)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mfn.pth"
    torch.save(create("mobilefacenet").state_dict(), path)
    return path


def test_auto_picks_a_method_each_model_supports():
    assert resolve_method(TinyNet("bn"), "auto") == "bn-inversion"
    assert resolve_method(TinyNet("affine"), "auto") == "affine-inversion"
    assert resolve_method(TinyNet("none"), "auto") == "embedding-inversion"
    assert resolve_method(create("dlib_resnet", pretrained=False), "auto") == "affine-inversion"
    assert resolve_method(TinyNet("bn"), "embedding-inversion") == "embedding-inversion"
    with pytest.raises(ConfigError, match="supports: affine-inversion, embedding-inversion"):
        resolve_method(TinyNet("affine"), "bn-inversion")
    with pytest.raises(ConfigError, match="unknown synthesis method 'magic'"):
        resolve_method(TinyNet("bn"), "magic")


def test_a_misspelt_method_suggests_the_closest_name():
    with pytest.raises(ConfigError, match="did you mean 'affine-inversion'"):
        resolve_method(TinyNet("affine"), "afine-inversion")


def test_bn_inversion_matches_the_running_statistics():
    model = TinyNet("bn")
    start = _images(synthetic_source(model, TINY, n=8, batch_size=8, iterations=1))
    tuned = _images(synthetic_source(model, TINY, n=8, batch_size=8, iterations=60))
    assert tuned.shape == (8, 3, 16, 16)
    assert _bn_mismatch(model, tuned) < 0.5 * _bn_mismatch(model, start)


def test_affine_inversion_drives_affine_outputs_towards_unit_statistics():
    model = TinyNet("affine")
    outputs = []
    affines = [m for m in model.modules() if isinstance(m, Affine)]
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in affines]

    def gap(images):
        outputs.clear()
        with torch.no_grad():
            model(images)
        return sum((o.mean((0, 2, 3)).abs() + (o.std((0, 2, 3)) - 1).abs()).mean().item() for o in outputs)

    start = gap(_images(synthetic_source(model, TINY, n=8, batch_size=8, iterations=1)))
    tuned = gap(_images(synthetic_source(model, TINY, n=8, batch_size=8, iterations=60)))
    for hook in hooks:
        hook.remove()
    assert tuned < 0.6 * start


@pytest.mark.parametrize("norm", ["bn", "affine", "none"])
def test_synthetic_source_is_deterministic_cached_and_seeded(norm, monkeypatch):
    model = TinyNet(norm)
    source = synthetic_source(model, TINY, n=3, seed=7, batch_size=2, iterations=3)
    assert isinstance(source, BatchSource) and len(source) == 2
    first = _images(source)
    monkeypatch.setattr(synth, "invert_batch", lambda *a, **k: pytest.fail("second pass must be cached"))
    assert torch.equal(_images(source), first)
    monkeypatch.undo()
    assert torch.equal(_images(synthetic_source(model, TINY, n=3, seed=7, batch_size=2, iterations=3)), first)
    assert not torch.equal(_images(synthetic_source(model, TINY, n=3, seed=8, batch_size=2, iterations=3)), first)


def test_same_seed_same_png_bytes_other_seed_other_images(tmp_path, mfn_weights):
    a = synthesize("mobilefacenet", tmp_path / "a", weights=mfn_weights, seed=3, **FAST)
    b = synthesize("mobilefacenet", tmp_path / "b", weights=mfn_weights, seed=3, **FAST)
    c = synthesize("mobilefacenet", tmp_path / "c", weights=mfn_weights, seed=4, **FAST)
    assert list(_png_bytes(a)) == [f"{i:06d}.png" for i in range(5)]
    assert _png_bytes(a) == _png_bytes(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert all(_png_bytes(a)[name] != _png_bytes(c)[name] for name in _png_bytes(a))


def test_saved_dataset_equals_the_on_the_fly_source(tmp_path, mfn_weights):
    directory = synthesize("mobilefacenet", tmp_path / "d", weights=mfn_weights, seed=1, **FAST)
    model = create("mobilefacenet", mfn_weights)
    on_the_fly = synthetic_source(model, model.contract, n=5, seed=1, batch_size=2, iterations=2)
    assert torch.equal(_images(load_synthetic_dir(directory, model.contract, batch_size=2)), _images(on_the_fly))


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, mfn_weights, monkeypatch):
    reference = synthesize("mobilefacenet", tmp_path / "reference", weights=mfn_weights, **FAST)
    real_invert, calls, interrupt = synth.invert_batch, [], [True]

    def interrupted_after_one_batch(*args, **kwargs):
        calls.append(1)
        if interrupt[0] and len(calls) == 2:
            raise Interrupted
        return real_invert(*args, **kwargs)

    monkeypatch.setattr(synth, "invert_batch", interrupted_after_one_batch)
    target = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        synthesize("mobilefacenet", target, weights=mfn_weights, **FAST)
    manifest = json.loads((target / "manifest.json").read_text())
    assert (manifest["complete"], manifest["batches_done"], manifest["images"]) == (False, 1, 2)
    assert sorted(p.name for p in target.iterdir()) == ["000000.png", "000001.png", "manifest.json"]
    with pytest.raises(QfsdkError, match="unfinished .*2 of 5 images"):
        load_synthetic_dir(target, get_spec("mobilefacenet").contract)

    calls.clear()
    interrupt[0] = False
    synthesize("mobilefacenet", target, weights=mfn_weights, **FAST)
    assert len(calls) == 2  # only the two missing batches were made
    assert _png_bytes(target) == _png_bytes(reference)
    assert json.loads((target / "manifest.json").read_text())["complete"] is True


def test_changed_settings_and_foreign_folders_are_refused(tmp_path, mfn_weights):
    directory = synthesize("mobilefacenet", tmp_path / "d", weights=mfn_weights, **FAST)
    before = _png_bytes(directory)
    with pytest.raises(QfsdkError, match=r"other settings \(seed: 0 before, 1 now\)"):
        synthesize("mobilefacenet", directory, weights=mfn_weights, seed=1, **FAST)
    with pytest.raises(QfsdkError, match="inversion"):
        synthesize("mobilefacenet", directory, weights=mfn_weights, **{**FAST, "iterations": 3})
    torch.set_num_threads(2)  # CPU results may differ in the last bit: byte-identical resumes need the same count
    with pytest.raises(QfsdkError, match="torch_threads: 1 before, 2 now"):
        synthesize("mobilefacenet", directory, weights=mfn_weights, **FAST)
    assert _png_bytes(directory) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"x")
    with pytest.raises(QfsdkError, match="not empty and has no manifest.json"):
        synthesize("mobilefacenet", foreign, weights=mfn_weights, **FAST)


def test_inversion_settings_are_validated():
    with pytest.raises(ConfigError, match="iterations must be at least 1"):
        InversionSettings(iterations=0)
    with pytest.raises(ConfigError, match="jitter"):
        InversionSettings(jitter=0.7)


def test_cli_synth_end_to_end_with_manifest(tmp_path, mfn_weights):
    out = tmp_path / "synthetic"
    args = ["synth", "--model", "mobilefacenet", "--weights", str(mfn_weights), "-n", "3", "--iterations", "2",
            "--batch-size", "2", "--seed", "5", "-o", str(out), "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    settings = manifest["settings"]
    assert manifest["complete"] is True and manifest["images"] == 3
    assert settings["model"] == "mobilefacenet" and settings["method"] == "auto"
    assert settings["resolved_method"] == "bn-inversion" and settings["seed"] == 5 and settings["count"] == 3
    assert settings["weights"] == "mfn.pth"
    assert settings["weights_sha256"] == hashlib.sha256(mfn_weights.read_bytes()).hexdigest()
    assert settings["inversion"]["iterations"] == 2 and settings["batch_size"] == 2
    assert settings["contract"]["input_size"] == [112, 112] and settings["qfsdk_version"]

    contract = get_spec("mobilefacenet").contract
    assert _images(load_synthetic_dir(out, contract, model_name="mobilefacenet")).shape == (3, 3, 112, 112)
    with pytest.warns(UserWarning, match="synthesised for mobilefacenet .*model, input_size, mean, std"):
        load_synthetic_dir(out, get_spec("dlib_resnet").contract, model_name="dlib_resnet")

    rerun = CliRunner().invoke(main, [*args[:-5], "--seed", "6", "-o", str(out)])
    assert rerun.exit_code == 1 and rerun.output.strip().count("\n") == 0 and "seed: 5 before, 6 now" in rerun.output


def test_cli_synth_bad_method_is_one_line_and_help_lists_every_method(tmp_path):
    result = CliRunner().invoke(main, ["synth", "--model", "mobilefacenet", "-n", "1", "--method", "magic",
                                       "-o", str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert "unknown synthesis method" in result.output
    assert not (tmp_path / "x").exists()
    help_text = "".join(CliRunner().invoke(main, ["synth", "--help"]).output.split())  # click wraps at hyphens
    assert all(method in help_text for method in METHODS)
