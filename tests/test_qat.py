"""QAT with distillation: loss falls, runs are reproducible and resume exactly."""

import copy

import pytest
import torch

import qfsdk
from qfsdk.errors import ConfigError
from qfsdk.models import create
from qfsdk.quant.qat import QATSettings, batch_plan, distillation_loss, resolve_kd_loss, train_qat


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = create("mobilefacenet")
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 112, 112))
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(24, 3, 112, 112, generator=torch.Generator().manual_seed(5)).clamp(-1, 1)


def student_of(teacher, images, bits="w4a4"):
    return qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(teacher), bits), images[:16])


SETTINGS = dict(batch_size=4, freeze_bn=True, lr=0.02)


def test_distillation_loss_is_mse_of_normalised_embeddings():
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    loss, cosine = distillation_loss(s, t)
    assert loss.item() == pytest.approx(((0.6 - 1) ** 2 + 0.8**2) / 2)
    assert cosine.item() == pytest.approx(0.6)


def test_raw_distillation_loss_keeps_norms():
    s, t = torch.tensor([[3.0, 4.0]]), torch.tensor([[6.0, 8.0]])
    assert distillation_loss(s, t)[0].item() == pytest.approx(0.0)  # same direction: the paper's loss is blind to norm
    assert distillation_loss(s, t, "raw")[0].item() == pytest.approx((9 + 16) / 2)


def test_auto_distillation_loss_follows_the_models_distance(teacher):
    """dlib compares raw embeddings by Euclidean distance: auto distils them raw, keeping their norms."""
    assert resolve_kd_loss("auto", create("dlib_resnet")) == "raw"
    assert resolve_kd_loss("auto", teacher) == "normalized"  # cosine models: the paper's loss
    assert resolve_kd_loss("normalized", create("dlib_resnet")) == "normalized"
    with pytest.raises(ConfigError, match="kd_loss must be one of auto, normalized, raw"):
        QATSettings(steps=1, kd_loss="l1")


def test_batch_plan_is_a_pure_function_and_covers_each_epoch():
    first, flips = batch_plan(3, 4, 10, seed=1)
    again, flips_again = batch_plan(3, 4, 10, seed=1)
    assert torch.equal(first, again) and torch.equal(flips, flips_again)
    epoch = torch.cat([batch_plan(s, 5, 10, seed=1)[0] for s in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))


def test_loss_falls(teacher, images, tmp_path):
    run = train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=10, **SETTINGS), tmp_path / "s.safetensors", progress=False)
    losses = [h["loss"] for h in run.history]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_resume_is_bit_identical(teacher, images, tmp_path):
    straight = train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=6, **SETTINGS), tmp_path / "a.safetensors", progress=False)
    state = tmp_path / "b.safetensors"
    train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=3, **SETTINGS), state, progress=False)
    resumed = train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=6, **SETTINGS), state, resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    for key, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key


def test_resume_with_other_settings_is_refused(teacher, images, tmp_path):
    state = tmp_path / "s.safetensors"
    train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=1, **SETTINGS), state, progress=False)
    with pytest.raises(ConfigError, match="different settings \\(lr\\)"):
        train_qat(student_of(teacher, images), teacher, images, QATSettings(steps=2, batch_size=4, freeze_bn=True, lr=0.5), state, resume=True, progress=False)


def test_quantface_warmup_tracks_ranges_then_freezes(teacher, images, tmp_path):
    student = qfsdk.quantize(copy.deepcopy(teacher), {"preset": "w8a8", "scheme": "quantface"})
    run = train_qat(student, teacher, images, QATSettings(steps=3, range_warmup_steps=2, **SETTINGS), tmp_path / "q.safetensors", progress=False)
    quantizer = run.student.conv1.prelu.output_quantizer
    assert bool(quantizer.has_range) and quantizer.x_max > 0 and not quantizer.tracking


def test_validation_keeps_the_best_student_and_survives_resume(teacher, images, tmp_path):
    """A run that wrecks the student (lr far too high) ends on the best held-out score: here the PTQ start."""
    ptq = student_of(teacher, images)
    with torch.no_grad():
        start = ptq(images[:4])
    settings = QATSettings(steps=4, batch_size=4, lr=50.0, validation_images=8, validate_every=2, freeze_bn=True, checkpoint_every=2)
    state = tmp_path / "v.safetensors"
    run = train_qat(copy.deepcopy(ptq), teacher, images, settings, state, progress=False)
    assert run.best["step"] == 0 and len(run.images) == len(images) - 8
    assert [h["step"] for h in run.history if "validation_min_cosine" in h] == [2, 4]
    with torch.no_grad():
        assert torch.equal(run.student(images[:4]), start)

    resumed = train_qat(copy.deepcopy(ptq), teacher, images, QATSettings(**{**settings.__dict__, "steps": 6}), state, resume=True, progress=False)
    assert resumed.best["step"] == 0  # the best so far came back with the state file
    with torch.no_grad():
        assert torch.equal(resumed.student(images[:4]), start)


def test_validation_needs_training_images_left():
    from qfsdk.quant.qat import QATRun

    with pytest.raises(ConfigError, match="validation_images \\(8\\) must leave training images \\(of 8\\)"):
        QATRun(qfsdk.quantize(create("mobilefacenet"), "w8a8"), create("mobilefacenet"), torch.zeros(8, 3, 112, 112),
               QATSettings(steps=1, validation_images=8), "unused.safetensors")
