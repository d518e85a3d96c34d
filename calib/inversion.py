"""Data-free face synthesis from the full-precision model itself (no data, no generator).

Random images are optimised (Adam, in 0..1 pixel space, clamped) so that the model's internal
statistics look like those of its training data, with image priors (total variation, l2),
random flips and jitter, and a diversity term (mean pairwise cosine of the batch's embeddings):

* ``bn-inversion`` (ZeroQ / DeepInversion family): the batch mean and std at every BatchNorm
  input match the layer's running statistics.
* ``affine-inversion``: for BatchNorm folded into per-channel affine layers (dlib's ``Affine``),
  which keep no statistics. It assumes the folded BatchNorm had unit scale and zero shift, i.e.
  every affine output is ~N(0, 1) per channel. Measured on real face chips with dlib_resnet,
  the affine outputs' channel means are 0 +- 0.3 and stds 1 +- 0.2 (benchmarks/synth.py).
* ``embedding-inversion``: for any model: each image is pulled towards its own random unit
  target embedding (targets are diverse by construction).

``auto`` picks the first of these the model supports, in that order. ``METHODS`` is the one
registry of them (the CLI's choices and help come from it). benchmarks/synth.py measures the
choice: W8A8 error when calibrated on synthetic images vs on real faces.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from qfsdk.calib.data import batch_seed, pixels_to_input
from qfsdk.errors import ConfigError, did_you_mean
from qfsdk.models.dlib_resnet import Affine
from qfsdk.runtime.contract import FaceContract

AUTO = "auto"
FOLDED_BN_TYPES: tuple[type[nn.Module], ...] = (Affine,)
EPS = 1e-5


@dataclass(frozen=True)
class InversionSettings:
    """Optimisation settings; every field is recorded in a dataset's manifest."""

    iterations: int = 100
    lr: float = 0.05  # Adam, on pixels scaled to 0..1, cosine-annealed
    stat_weight: float = 1.0
    embedding_weight: float = 1.0
    diversity_weight: float = 0.05
    tv_weight: float = 5.0  # on the mean squared difference of neighbouring pixels
    l2_weight: float = 0.01  # on the pixels' squared distance from mid-grey
    jitter: float = 0.06  # largest random shift, as a fraction of the image side
    flip: bool = True
    init_std: float = 0.2  # initial pixels: mid-grey + Gaussian noise of this std (0..1 scale)

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.lr <= 0 or not 0 <= self.jitter < 0.5:
            raise ConfigError(f"need lr > 0 and 0 <= jitter < 0.5, got lr={self.lr}, jitter={self.jitter}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]


def _folded_batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, FOLDED_BN_TYPES)]


def _stat_loss(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Distance of ``x``'s per-channel batch mean and std from targets, in units of the target std."""
    dims = [d for d in range(x.ndim) if d != 1]
    batch_var, batch_mean = torch.var_mean(x, dims, correction=0)
    batch_std = batch_var.add(EPS).sqrt()
    return (((batch_mean - mean) ** 2 + (batch_std - (var + EPS).sqrt()) ** 2) / (var + EPS)).mean()


def _running_stats_hook(losses: list[torch.Tensor]) -> Callable:
    """Pre-hook of a BatchNorm: its input's batch statistics vs its running statistics."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        losses.append(_stat_loss(inputs[0], module.running_mean, module.running_var))

    return hook


def _unit_stats_hook(losses: list[torch.Tensor]) -> Callable:
    """Hook of a folded-BatchNorm affine layer: its output's batch statistics vs N(0, 1)."""

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        losses.append(_stat_loss(output, output.new_zeros(()), output.new_ones(())))

    return hook


def _mean_pairwise_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over distinct pairs of the batch (0 for a single image)."""
    count = len(embeddings)
    if count < 2:
        return embeddings.new_zeros(())
    unit = F.normalize(embeddings.flatten(1), dim=1)
    similarity = unit @ unit.T
    return (similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1))


def _image_priors(pixels01: torch.Tensor, settings: InversionSettings) -> torch.Tensor:
    """Total variation (squared) and l2 priors on 0..1 pixels."""
    tv = (pixels01[..., 1:, :] - pixels01[..., :-1, :]).pow(2).mean() + (
        pixels01[..., 1:] - pixels01[..., :-1]
    ).pow(2).mean()
    l2 = (pixels01 - 0.5).pow(2).mean()
    return settings.tv_weight * tv + settings.l2_weight * l2


def _augment(pixels01: torch.Tensor, settings: InversionSettings, rng: torch.Generator) -> torch.Tensor:
    """A random shift (circular) and, with probability 1/2, a horizontal flip; the same for the batch."""
    limit = int(settings.jitter * min(pixels01.shape[-2:]))
    if limit:
        dy, dx = torch.randint(-limit, limit + 1, (2,), generator=rng).tolist()
        pixels01 = torch.roll(pixels01, (dy, dx), (2, 3))
    if settings.flip and torch.rand((), generator=rng).item() < 0.5:
        pixels01 = pixels01.flip(3)
    return pixels01


def _statistics_loss(
    embeddings: torch.Tensor, stat_losses: list[torch.Tensor], targets: torch.Tensor, settings: InversionSettings
) -> torch.Tensor:
    """The per-layer statistics losses the method's hooks collected, averaged."""
    if not stat_losses:
        return embeddings.new_zeros(())
    return settings.stat_weight * torch.stack(stat_losses).mean()


def _target_embedding_loss(
    embeddings: torch.Tensor, stat_losses: list[torch.Tensor], targets: torch.Tensor, settings: InversionSettings
) -> torch.Tensor:
    """One minus each image's cosine to its own random unit target embedding, averaged."""
    cosine = F.cosine_similarity(embeddings.flatten(1), targets, dim=1)
    return settings.embedding_weight * (1 - cosine).mean()


def _running_stats_hooks(model: nn.Module, losses: list[torch.Tensor]) -> list[RemovableHandle]:
    return [bn.register_forward_pre_hook(_running_stats_hook(losses)) for bn in _batchnorms(model)]


def _unit_stats_hooks(model: nn.Module, losses: list[torch.Tensor]) -> list[RemovableHandle]:
    return [layer.register_forward_hook(_unit_stats_hook(losses)) for layer in _folded_batchnorms(model)]


def _no_hooks(model: nn.Module, losses: list[torch.Tensor]) -> list[RemovableHandle]:
    return []


@dataclass(frozen=True)
class InversionMethod:
    """One synthesis method: what it needs, how it hooks the model and what it minimises."""

    name: str
    description: str  # one line, for `qfsdk synth --help`
    requires: str | None  # the layers ``applies`` looks for (None: any model)
    applies: Callable[[nn.Module], bool]
    attach: Callable[[nn.Module, list[torch.Tensor]], list[RemovableHandle]]  # hooks appending statistics losses
    loss: Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor, InversionSettings], torch.Tensor]


# Name -> method, in the order ``auto`` prefers them.
METHODS: dict[str, InversionMethod] = {
    m.name: m
    for m in (
        InversionMethod("bn-inversion", "match every BatchNorm input's batch mean/std to its running statistics",
                        "BatchNorm running statistics", lambda model: bool(_batchnorms(model)),
                        _running_stats_hooks, _statistics_loss),
        InversionMethod("affine-inversion", "pull every folded-BatchNorm affine output (dlib) towards N(0, 1)",
                        "folded-BatchNorm affine layers", lambda model: bool(_folded_batchnorms(model)),
                        _unit_stats_hooks, _statistics_loss),
        InversionMethod("embedding-inversion", "pull each image towards its own random unit embedding (any model)",
                        None, lambda model: True, _no_hooks, _target_embedding_loss),
    )
}  # fmt: skip


def method_names() -> list[str]:
    """Every name ``--method`` accepts: ``auto``, then the methods in preference order."""
    return [AUTO, *METHODS]


def methods_help() -> str:
    """Every method name with what it does, for command-line help."""
    lines = [f"{AUTO}: the first of the following that the model supports"]
    return "; ".join(lines + [f"{m.name}: {m.description}" for m in METHODS.values()])


def get_method(name: str) -> InversionMethod:
    """The method called ``name``; an unknown name is a ConfigError suggesting the closest one."""
    if name not in METHODS:
        raise ConfigError(f"unknown synthesis method {name!r}{did_you_mean(name, method_names())} "
                          f"(choose {AUTO} or one of {', '.join(METHODS)})")
    return METHODS[name]


def supported_methods(model: nn.Module) -> list[str]:
    """The methods ``model`` supports, in the order ``auto`` prefers them."""
    return [name for name, method in METHODS.items() if method.applies(model)]


def resolve_method(model: nn.Module, method: str) -> str:
    """``method`` checked against what ``model`` supports; ``auto`` becomes the preferred one."""
    supported = supported_methods(model)
    if method == AUTO:
        return supported[0]
    spec = get_method(method)
    if method not in supported:
        raise ConfigError(f"{method} needs {spec.requires}, which this model lacks; it supports: {', '.join(supported)}")
    return method


def _model_loss(
    embeddings: torch.Tensor,
    stat_losses: list[torch.Tensor],
    method: InversionMethod,
    targets: torch.Tensor,
    settings: InversionSettings,
) -> torch.Tensor:
    """The method's own loss plus the diversity term."""
    diversity = settings.diversity_weight * _mean_pairwise_cosine(embeddings)
    return diversity + method.loss(embeddings, stat_losses, targets, settings)


@contextlib.contextmanager
def _collect_stat_losses(model: nn.Module, method: InversionMethod) -> Iterator[list[torch.Tensor]]:
    """Hooks adding one statistics loss per layer to the yielded list at every forward."""
    losses: list[torch.Tensor] = []
    handles = method.attach(model, losses)
    try:
        yield losses
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def invert_batch(
    model: nn.Module,
    contract: FaceContract,
    method: str,
    size: int,
    seed: int,
    settings: InversionSettings = InversionSettings(),
    on_step: Callable[[], None] | None = None,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Synthesise ``size`` images (uint8 RGB, (size, H, W, 3)) with a resolved ``method``.

    The pixels start as ``init`` (uint8 RGB (size, H, W, 3): a generator's faces) or, by default,
    mid-grey plus noise. Deterministic for a given ``seed`` on a given machine and thread count.
    ``on_step`` is called after every optimisation step (progress bars).
    """
    spec = get_method(method)
    rng = torch.Generator().manual_seed(seed)  # on the CPU: the same images whatever the model's device
    device = next(model.parameters()).device
    pixels = _initial_pixels(contract, size, settings, rng, init).to(device)
    pixels.requires_grad_(True)
    targets = F.normalize(torch.randn(size, contract.embedding_size, generator=rng), dim=1).to(device)
    optimizer = torch.optim.Adam([pixels], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.iterations)
    with _eval_mode(model), _collect_stat_losses(model, spec) as stat_losses:
        for _ in range(settings.iterations):
            stat_losses.clear()
            view = _augment(pixels, settings, rng)
            embeddings = model(pixels_to_input(view * 255, contract))
            loss = _image_priors(view, settings) + _model_loss(embeddings, stat_losses, spec, targets, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=[pixels])
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                pixels.clamp_(0, 1)
            if on_step is not None:
                on_step()
    rendered = (pixels.detach() * 255).round().to(torch.uint8).cpu()
    return np.ascontiguousarray(rendered.permute(0, 2, 3, 1).numpy())


def _initial_pixels(contract: FaceContract, size: int, settings: InversionSettings, rng: torch.Generator,
                    init: np.ndarray | None) -> torch.Tensor:  # fmt: skip
    """(size, 3, H, W) pixels in 0..1: ``init``'s, else mid-grey plus Gaussian noise drawn from ``rng``."""
    height, width = contract.input_size
    if init is None:
        return (0.5 + settings.init_std * torch.randn(size, 3, height, width, generator=rng)).clamp(0, 1)
    if init.shape != (size, height, width, 3) or init.dtype != np.uint8:
        raise ConfigError(f"initial images must be uint8 ({size}, {height}, {width}, 3), got {init.dtype} {init.shape}")
    return torch.from_numpy(np.ascontiguousarray(init)).permute(0, 3, 1, 2).float() / 255


def batch_seeds(seed: int, count: int, batch_size: int) -> list[tuple[int, int]]:
    """(size, torch seed) of each batch of a ``count``-image run."""
    return [
        (min(batch_size, count - start), batch_seed(seed, index))
        for index, start in enumerate(range(0, count, batch_size))
    ]
