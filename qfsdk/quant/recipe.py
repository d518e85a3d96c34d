"""The PTQ recipe: a quantization config, an activation range method and PTQ steps, every default defined here once.

``qfsdk calibrate`` turns its flags into a :class:`Recipe` and runs it with
``qfsdk.quantize(model, recipe, data)``, as a Python caller does; ``qfsdk qat`` makes its starting
point the same way. The checkpoint records what ran: the config (with the range observer and
percentile the run used) and, under ``calibration``, the method and the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from qfsdk.errors import ConfigError

from .algorithms import best_recipe, parse_recipe, recipe_text, resolve_recipe
from .config import QuantConfig, resolve_config
from .observers import make_observer

DEFAULT_METHOD = "percentile"  # the range method of a PTQ run on symmetric activations (the PTQ benchmark's best)
QAT_START_STEPS = ("ranges",)  # QAT trains weights and ranges itself: its starting point needs ranges only

Step = str | Mapping[str, Any]


def parse_method(method: str) -> tuple[str, float | None]:
    """``NAME[:P]`` as (observer name, percentile or None); P must be finite and 0 < P < 100."""
    name, colon, arg = method.partition(":")
    if not colon:
        return name, None
    if name != "percentile":
        raise ConfigError(f"method {method!r}: only percentile takes a value (percentile:P)")
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 100):
        raise ConfigError(f"method {method!r}: P must be a number with 0 < P < 100 (e.g. percentile:99.99)")
    return name, value


@dataclass(frozen=True)
class Recipe:
    """What one PTQ run does. Build it with :meth:`create`, which fills in the defaults."""

    config: QuantConfig
    method: str  # activation range method: minmax, percentile[:P] or mse (minmax where activations have zero points)
    steps: tuple[Step, ...]  # PTQ steps in order (qfsdk.quant.algorithms), each a name or {"name": ..., **options}

    @classmethod
    def create(cls, config: QuantConfig | str | Mapping[str, Any] = "w8a8", method: str | None = None,
               steps: str | Sequence[Step] | None = None) -> "Recipe":
        """A validated recipe. ``config``: a QuantConfig, preset name or dict. ``method``: default
        :data:`DEFAULT_METHOD` (activations with zero points always take min/max; another method is
        refused there). ``steps``: a list, or text as ``qfsdk calibrate --recipe`` takes it; default
        the PTQ benchmark's best for the config's weight bits (:func:`~qfsdk.quant.algorithms.best_recipe`).
        The config records the method's observer and percentile."""
        config = resolve_config(config)
        method = config.range_method(method, default=DEFAULT_METHOD)
        name, percentile = parse_method(method)
        make_observer(method, 8)  # an unknown method fails here, before any work
        if not config.asymmetric_activations:
            config = replace(config, observer=name, percentile=config.percentile if percentile is None else percentile)
        if steps is None:
            steps = best_recipe(config.weight_bits)
        elif isinstance(steps, str):
            steps = parse_recipe(steps)
        resolve_recipe(list(steps))  # unknown steps and options fail here too
        return cls(config, method, tuple(steps))

    def __str__(self) -> str:
        asymmetric = ", asymmetric activations" if self.config.asymmetric_acts else ""
        return (f"{self.config.weight_bits}/{self.config.act_bits}-bit, {self.config.scheme}{asymmetric}, {self.method}, "
                f"recipe {recipe_text(self.steps)}")


def as_recipe(recipe: "Recipe | QuantConfig | str | Mapping[str, Any]") -> Recipe:
    """A Recipe as given, else :meth:`Recipe.create` on a config, preset name or config dict (all defaults)."""
    return recipe if isinstance(recipe, Recipe) else Recipe.create(recipe)
