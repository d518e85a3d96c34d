"""PTQ algorithms: a registry of named, validated steps that ``calibrate`` runs in order.

A step receives a :class:`CalibrationRun` (the quantized model, its config, a re-iterable source
of preprocessed batches, the range method) and changes the model's quantizer state: activation
ranges, weight steps, weight rounding. The built-in ``ranges`` step observes float activations
and freezes the ranges; other steps (equalization, bias correction, learned rounding) register
the same way, from inside or outside the package::

    @register_algorithm("round_down", "every weight rounded toward -inf")
    def round_down(run, options):
        for _, quantizer in weight_quantizers(run.model): ...

Weight quantizers export exactly the codes a step leaves (see :class:`~qfsdk.quant.modules.WeightQuantizer`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from qfsdk.errors import ConfigError, did_you_mean
from qfsdk.progress import progress_bar

from .modules import ActQuantizer, WeightQuantizer
from .observers import make_observer

log = logging.getLogger(__name__)


@dataclass
class CalibrationRun:
    """What a PTQ step works with; ``images``: how many images one pass over ``batches`` held.

    ``keep_batches``: the first pass keeps the batches it reads, so later steps see the same images
    and a lazy source (synthetic images made on the fly) is not asked to make them again.
    """

    model: nn.Module
    config: Any  # QuantConfig
    batches: Any  # re-iterable, sized, of (B, 3, H, W) tensors
    method: str
    progress: bool = False
    images: int = 0
    keep_batches: bool = False
    _kept: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def batch_list(self) -> list[torch.Tensor]:
        """Every batch, read once (the same tensors on every call)."""
        if self._kept is None:
            self._kept = [batch.detach() for batch in self.batches]
            self.images = max(self.images, sum(len(b) for b in self._kept))
        return self._kept

    def forward_all(self, desc: str) -> int:
        """One no-grad pass of every batch through the model; the number of images it held.

        The source may synthesise its images lazily (which needs gradients): only the forward is no_grad.
        """
        source = self._kept if self._kept is not None else self.batches
        kept: list[torch.Tensor] = []
        count = 0
        for batch in progress_bar(source, desc=desc, disable=not self.progress, total=len(source)):
            with torch.no_grad():
                self.model(batch.to(self.device))
            count += len(batch)
            if self.keep_batches and self._kept is None:
                kept.append(batch.detach())
        if self.keep_batches and self._kept is None:
            self._kept = kept
        self.images = max(self.images, count)
        return count


@dataclass(frozen=True)
class PTQAlgorithm:
    """A registered step: ``run(calibration_run, options)``; ``options`` is a dataclass type or None;
    ``precedes``: steps that must not run before it in a recipe."""

    name: str
    run: Callable[[CalibrationRun, Any], None]
    description: str
    options: type | None = None
    precedes: tuple[str, ...] = ()

    def parse_options(self, values: Mapping[str, Any]) -> Any:
        if self.options is None:
            if values:
                raise ConfigError(f"PTQ step {self.name!r} takes no options, got {', '.join(values)}")
            return None
        known = [f.name for f in fields(self.options)]
        for key in values:
            if key not in known:
                hint = did_you_mean(key, known) or f"; options: {', '.join(known)}"
                raise ConfigError(f"unknown option {key!r} of PTQ step {self.name!r}{hint}")
        return self.options(**values)


ALGORITHMS: dict[str, PTQAlgorithm] = {}
DEFAULT_RECIPE = ("ranges",)  # what ``calibrate`` runs when no step is named (and what older checkpoints ran)
# `qfsdk calibrate`'s default per weight bit width: the best recipe of the PTQ benchmark at those bits
# (README, "PTQ recipes"); a Python caller gets it from best_recipe().
BEST_RECIPES: dict[int, tuple[str, ...]] = {8: ("equalize", "ranges", "bias_correction")}
# Weights below 8 bits: learned rounding matters most there, and the end layers at 8 bits (free on int8 kernels)
LOW_BIT_RECIPE = ("ends_8bit", "ranges", "reconstruct")


def best_recipe(weight_bits: int) -> tuple[str, ...]:
    """The measured best PTQ recipe for ``weight_bits``-bit weights (the CLI's default)."""
    return BEST_RECIPES.get(weight_bits, LOW_BIT_RECIPE)


def register_algorithm(name: str, description: str, options: type | None = None, precedes: tuple[str, ...] = ()) -> Callable:
    """Decorator registering ``run(calibration_run, options)`` as PTQ step ``name`` (``precedes``: the
    steps a recipe must not run before it)."""
    if options is not None and not is_dataclass(options):
        raise TypeError("PTQ step options must be a dataclass type")

    def decorate(run: Callable[[CalibrationRun, Any], None]) -> Callable:
        ALGORITHMS[name] = PTQAlgorithm(name, run, description, options, tuple(precedes))
        return run

    return decorate


def get_algorithm(name: str) -> PTQAlgorithm:
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown PTQ step {name!r}{did_you_mean(name, ALGORITHMS)}; registered: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def resolve_recipe(recipe: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None) -> list[tuple[PTQAlgorithm, Any, dict]]:
    """Validated (algorithm, parsed options, raw step) triples: a name, ``{"name": ..., **options}`` or a list of them."""
    if recipe is None:
        recipe = DEFAULT_RECIPE
    if isinstance(recipe, (str, Mapping)):
        recipe = [recipe]
    steps = []
    for step in recipe:
        raw = {"name": step} if isinstance(step, str) else dict(step)
        if "name" not in raw:
            raise ConfigError(f"a PTQ step needs a 'name', got {step!r}")
        algorithm = get_algorithm(raw["name"])
        earlier = [done.name for done, *_ in steps if done.name in algorithm.precedes]
        if earlier:
            raise ConfigError(f"PTQ step {algorithm.name!r} must run before {earlier[0]!r}: put it earlier in the recipe")
        steps.append((algorithm, algorithm.parse_options({k: v for k, v in raw.items() if k != "name"}), raw))
    return steps


def parse_recipe(text: str) -> list[str | dict[str, Any]]:
    """``"ranges,reconstruct:iterations=150:ranges=false"``: steps by comma, options by colon (values
    read as JSON where they parse: numbers, true/false; else strings), validated like any recipe."""
    steps: list[str | dict[str, Any]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, *settings = (s.strip() for s in part.split(":"))
        if not settings:
            steps.append(name)
            continue
        step: dict[str, Any] = {"name": name}
        for setting in settings:
            key, equals, value = setting.partition("=")
            if not equals or not key.strip():
                raise ConfigError(f"PTQ step option {setting!r} of {name!r} must read KEY=VALUE (e.g. {name}:iterations=150)")
            try:
                step[key.strip()] = json.loads(value)
            except ValueError:
                step[key.strip()] = value.strip()
        steps.append(step)
    if not steps:
        raise ConfigError("the PTQ recipe names no step")
    resolve_recipe(steps)
    return steps


def recipe_text(steps: Sequence[str | Mapping[str, Any]]) -> str:
    """The inverse of :func:`parse_recipe`, for summaries: ``ranges+reconstruct:iterations=150``."""
    parts = []
    for step in steps:
        raw = {"name": step} if isinstance(step, str) else dict(step)
        options = "".join(f":{k}={json.dumps(v)}" for k, v in raw.items() if k != "name")
        parts.append(raw["name"] + options)
    return "+".join(parts)


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, ActQuantizer]]:
    """Every activation quantizer with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            yield name, module


def weight_quantizers(model: nn.Module) -> Iterator[tuple[nn.Module, WeightQuantizer]]:
    """(layer, its weight quantizer) for every quantized Conv/Linear."""
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if isinstance(quantizer, WeightQuantizer):
            yield module, quantizer


def _observe(quantizers: Iterable[ActQuantizer], method: str, percentile: float) -> None:
    for quantizer in quantizers:
        quantizer.observer = make_observer(method if quantizer.symmetric else "minmax", quantizer.bits, percentile)


def _freeze(quantizer: ActQuantizer, observed: bool) -> None:
    observer, quantizer.observer = quantizer.observer, None
    if not observed:
        return
    low, high = observer.min_max()
    if quantizer.symmetric:
        quantizer.set_range(low, high)  # x_min == 0 (never negative) selects the unsigned grid
        high = observer.amax(unsigned=quantizer.unsigned)
        low = 0.0 if low >= 0 else -high
    quantizer.set_range(low, high)


@register_algorithm("ranges", "activation ranges from the float activations (the config's observer or --method)")
def calibrate_ranges(run: CalibrationRun, options: None) -> None:
    quantizers = [q for _, q in act_quantizers(run.model)]
    _observe(quantizers, run.method, run.config.percentile)
    count = 0
    try:
        count = run.forward_all(f"calibrate ({run.method})")
    finally:
        for quantizer in quantizers:
            _freeze(quantizer, count > 0)
    log.info("calibrated %d activation quantizers on %d images (%s)", len(quantizers), count, run.method)
