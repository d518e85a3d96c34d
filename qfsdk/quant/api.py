"""``quantize(model, recipe, data)``, the front door, and its parts: ``quantize(model, config)`` prepares,
``calibrate(model, data, method, algorithm=...)`` runs PTQ steps."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from torch import nn

from qfsdk.calib.data import as_batches
from qfsdk.errors import ConfigError, QfsdkError
from qfsdk.models.card import ModelCard, attach_card, card_of

from .algorithms import CalibrationRun, act_quantizers, resolve_recipe
from .config import QuantConfig, resolve_config
from .graph import modularize_residual_adds, traced_graph
from .modules import QuantModule, convert
from .recipe import Recipe, as_recipe
from .registry import QuantRule, rule_for
from .schemes import get_scheme

log = logging.getLogger(__name__)

__all__ = ["act_quantizers", "calibrate", "check_config", "quant_config_of", "quantizable_layers", "quantize", "set_range_tracking"]


def _layer_rules(model: nn.Module, scheme: str) -> list[tuple[str, nn.Module, QuantRule]]:
    """(name, module, rule) of every layer ``scheme`` converts; after-conv-only rules need a traced pass."""
    layers = [(name, module, rule) for name, module in model.named_modules() if (rule := rule_for(module, scheme))]
    if any(rule.after_conv_only for *_, rule in layers):
        graph = traced_graph(model, f"scheme {scheme!r}")
        convs = {name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
        layers = [(n, m, r) for n, m, r in layers if not r.after_conv_only or convs & set(graph.producers.get(n, ()))]
    return layers


def quantizable_layers(model: nn.Module, scheme: str) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer ``scheme`` would convert."""
    return [(name, module) for name, module, _ in _layer_rules(model, scheme)]


def quantize(model: nn.Module, recipe: Recipe | QuantConfig | str | Mapping[str, Any] = "w8a8", data: object = None, *,
             batch_size: int = 32, progress: bool = False) -> nn.Module:
    """Quantize ``model`` and return it; use the return value (``model`` itself is converted in place).

    With ``data`` (any calibration source, :func:`qfsdk.calib.data.as_batches`), the whole PTQ run
    ``qfsdk calibrate`` does: ``recipe`` is a :class:`~qfsdk.quant.recipe.Recipe`, or a config, preset
    name or config dict taking the recipe defaults (percentile ranges, the best PTQ steps for its
    weight bits). Without ``data``, only the preparation (for QAT, or for :func:`calibrate` with steps
    of your own): layers are converted through the quant-module registry (``isinstance``
    matching, so subclasses count): Conv2d/Linear/residual adds, plus per scheme the BatchNorms or
    dlib affines that finish a conv (``onnxruntime``) or PReLU/ReLU (``quantface``). Functional
    residual adds (a plain ``x + y``) become ``ResidualAdd`` modules first, which returns a
    ``torch.fx.GraphModule`` instead of ``model``. The config is validated (presets, bits, layer
    patterns) before anything changes and is kept in the model card.
    """
    if data is not None:
        recipe = as_recipe(recipe)
        prepared = quantize(model, recipe.config)
        return calibrate(prepared, data, recipe.method, algorithm=list(recipe.steps), batch_size=batch_size, progress=progress)
    config = recipe.config if isinstance(recipe, Recipe) else resolve_config(recipe)
    if any(isinstance(m, QuantModule) for m in model.modules()):
        raise ConfigError("model is already quantized; quantize the float model")
    card = card_of(model, required=False) or ModelCard(type(model).__name__, None)
    model = attach_card(modularize_residual_adds(model), card)
    layers = _checked_layers(model, config)
    symmetric = get_scheme(config.scheme).symmetric
    for name, module, rule in layers:
        weight_bits, act_bits, enabled = config.bits_for(name)
        if enabled:
            convert(module, rule.mixin, weight_bits, act_bits, symmetric)
    configure_act_quantizers(model, config)
    card.quant_config = config
    log.info("quantized %d layers of %s (%s)", len(layers), type(model).__name__, config.to_json())
    return model


def configure_act_quantizers(module: nn.Module, config: QuantConfig) -> None:
    """Give every activation quantizer in ``module`` the config's grid: unsigned levels allowed or
    not, and a zero point with the clipped gradient for ``asymmetric_acts``."""
    for _, quantizer in act_quantizers(module):
        quantizer.allow_unsigned = config.unsigned_acts
        if config.asymmetric_acts:
            quantizer.symmetric, quantizer.clipped_gradient = False, True


def check_config(model: nn.Module, config: QuantConfig | str | Mapping[str, Any]) -> QuantConfig:
    """Validate ``config`` against ``model`` without changing it (layer patterns must match)."""
    config = resolve_config(config)
    _checked_layers(model, config)
    return config


def _checked_layers(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Module, QuantRule]]:
    layers = _layer_rules(model, config.scheme)
    if not layers:
        raise ConfigError(f"model {type(model).__name__} has no layers that scheme {config.scheme!r} quantizes")
    config.check_patterns(name for name, *_ in layers)
    return layers


def quant_config_of(model: nn.Module) -> QuantConfig:
    """The config ``model`` was quantized with (through wrappers), or a clear error."""
    card = card_of(model, required=False)
    if card is None or card.quant_config is None:
        raise QfsdkError("model is not quantized: call qfsdk.quantize(model, config) first")
    return card.quant_config


def calibrate(
    model: nn.Module,
    data: object,
    method: str | None = None,
    *,
    algorithm: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> nn.Module:
    """Run a PTQ recipe over ``data`` and return ``model`` (eval mode restored to its previous state).

    ``data``: any calibration source (see :func:`qfsdk.calib.data.as_batches`). ``method``:
    ``minmax``, ``percentile[:P]`` or ``mse`` for activation ranges (default: the config's observer);
    asymmetric activations (a zero point each) always take their observed [min, max].
    ``algorithm``: one registered PTQ step or a list of them (:mod:`qfsdk.quant.algorithms`),
    each a name or ``{"name": ..., **options}``; default ``ranges``. This is the low-level step:
    ``quantize(model, recipe, data)`` runs a whole recipe with the CLI's defaults.
    """
    config = quant_config_of(model)
    steps = resolve_recipe(algorithm)
    card = card_of(model)
    method = config.range_method(method)
    run = CalibrationRun(model, config, as_batches(data, card.contract, batch_size), method, progress,
                         keep_batches=len(steps) > 1)
    was_training = model.training
    model.eval()
    try:
        for step, options, _ in steps:
            step.run(run, options)
    finally:
        model.train(was_training)
    if not run.images:
        raise QfsdkError("calibration data yielded no images")
    card.calibration = {"method": method, "images": run.images, "algorithm": [raw for *_, raw in steps]}
    return model


def set_range_tracking(model: nn.Module, enabled: bool) -> None:
    """QAT warm-up: let activation ranges grow with each batch (True) or freeze them (False)."""
    for _, quantizer in act_quantizers(model):
        quantizer.tracking = enabled
