"""``quantize(model, config)`` and ``calibrate(model, data, method)``."""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from qfsdk.calib.data import as_batches
from qfsdk.calib.observers import make_observer
from qfsdk.errors import ConfigError, QfsdkError

from .config import ASYMMETRIC_SCHEMES, QuantConfig, resolve_config
from .modules import CONV_FINISHERS, SCHEME_RULES, ActQuantizer, QuantModule, conv_finishers, convert

log = logging.getLogger(__name__)


def quantizable_layers(model: nn.Module, scheme: str) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every layer ``scheme`` would convert."""
    rules = SCHEME_RULES[scheme]
    layers = [(name, module) for name, module in model.named_modules() if type(module) in rules]
    if any(kind in rules for kind in CONV_FINISHERS):  # only a BatchNorm/affine right after a conv is quantized
        finishing = conv_finishers(model)
        layers = [(name, module) for name, module in layers if type(module) not in CONV_FINISHERS or name in finishing]
    return layers


def quantize(model: nn.Module, config: QuantConfig | str | Mapping[str, Any] = "w8a8") -> nn.Module:
    """Prepare ``model`` for quantization in place and return it.

    Float Conv2d/Linear/residual-add modules (and, for the ``onnxruntime`` scheme, the BatchNorms or
    dlib affines that finish a conv; for ``quantface``, PReLU/ReLU) are swapped for fake-quantized
    ones through the scheme's registry. The config is validated (presets, bits, layer patterns)
    before anything changes and is kept as ``model.quant_config``.
    """
    config, layers = _checked(model, config)
    rules = SCHEME_RULES[config.scheme]
    symmetric = config.scheme not in ASYMMETRIC_SCHEMES
    for name, module in layers:
        weight_bits, act_bits, enabled = config.bits_for(name)
        if enabled:
            convert(module, rules[type(module)], weight_bits, act_bits, symmetric)
    for _, quantizer in act_quantizers(model):
        quantizer.allow_unsigned = config.unsigned_acts
    model.quant_config = config
    log.info("quantized %d layers of %s (%s)", len(layers), type(model).__name__, config.to_json())
    return model


def check_config(model: nn.Module, config: QuantConfig | str | Mapping[str, Any]) -> QuantConfig:
    """Validate ``config`` against ``model`` without changing it (layer patterns must match)."""
    return _checked(model, config)[0]


def _checked(model: nn.Module, config: QuantConfig | str | Mapping[str, Any]) -> tuple[QuantConfig, list[tuple[str, nn.Module]]]:
    """The validated config and the layers it converts (found once: the onnxruntime scheme traces the model)."""
    config = resolve_config(config)
    if any(isinstance(m, QuantModule) for m in model.modules()):
        raise ConfigError("model is already quantized; quantize the float model")
    layers = quantizable_layers(model, config.scheme)
    if not layers:
        raise ConfigError(f"model {type(model).__name__} has no layers that scheme {config.scheme!r} quantizes")
    config.check_patterns(name for name, _ in layers)
    return config, layers


def act_quantizers(model: nn.Module) -> Iterator[tuple[str, ActQuantizer]]:
    """Every activation quantizer with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            yield name, module


def quant_config_of(model: nn.Module) -> QuantConfig:
    config = getattr(model, "quant_config", None)
    if config is None:
        raise QfsdkError("model is not quantized: call qfsdk.quantize(model, config) first")
    return config


def calibrate(
    model: nn.Module,
    data: object,
    method: str | None = None,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> nn.Module:
    """Collect activation ranges over ``data`` with the float activations, then freeze them.

    ``data``: any calibration source (see :func:`qfsdk.calib.data.as_batches`). ``method``:
    ``minmax``, ``percentile[:P]`` or ``mse`` (default: the config's observer).
    """
    config = quant_config_of(model)
    method = method or config.observer
    quantizers = list(act_quantizers(model))
    for _, quantizer in quantizers:
        observer_method = method if quantizer.symmetric else "minmax"
        quantizer.observer = make_observer(observer_method, quantizer.bits, config.percentile)
    batches = as_batches(data, getattr(model, "contract", None), batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = 0
    try:
        # The source may synthesise its images lazily (which needs gradients): only the forward is no_grad.
        for batch in tqdm(batches, desc=f"calibrate ({method})", disable=not progress, total=len(batches)):
            with torch.no_grad():
                model(batch.to(device))
            images += len(batch)
    finally:
        for _, quantizer in quantizers:
            observer, quantizer.observer = quantizer.observer, None
            if images:
                low, high = observer.min_max()
                if quantizer.symmetric:
                    quantizer.set_range(low, high)  # x_min == 0 (never negative) selects the unsigned grid
                    high = observer.amax(unsigned=quantizer.unsigned)
                    low = 0.0 if low >= 0 else -high
                quantizer.set_range(low, high)
        model.train(was_training)
    if not images:
        raise QfsdkError("calibration data yielded no images")
    model.calibration = {"method": method, "images": images}
    log.info("calibrated %d activation quantizers on %d images (%s)", len(quantizers), images, method)
    return model


def set_range_tracking(model: nn.Module, enabled: bool) -> None:
    """QAT warm-up: let activation ranges grow with each batch (True) or freeze them (False)."""
    for _, quantizer in act_quantizers(model):
        quantizer.tracking = enabled
