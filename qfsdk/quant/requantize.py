"""Re-quantize a float model with another config, keeping a quantized model's tensors.

The float model is quantized with ``config`` and then takes the quantized model's weights and
activation ranges (only bit widths and which layers are quantized change), so trying a config
needs no calibration data and keeps QAT weights. Ranges from a bit-width-dependent observer
(``mse``) fit the old bit widths, so layers raised to 8 bit are then clipped too tightly:
recalibrate the result when the calibration data is at hand.
"""

from __future__ import annotations

import copy

from torch import nn

from qfsdk.errors import QfsdkError
from qfsdk.quant import QuantConfig, quantize
from qfsdk.quant.modules import QuantModule


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every converted layer of a quantized model."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, QuantModule)]


def requantize(float_model: nn.Module, quant_model: nn.Module, config: QuantConfig) -> nn.Module:
    """A copy of ``float_model`` quantized with ``config``, holding ``quant_model``'s tensors (eval mode)."""
    model = quantize(copy.deepcopy(float_model), config)
    missing = model.load_state_dict(quant_model.state_dict(), strict=False).missing_keys
    if missing:
        raise QfsdkError(f"the quantized model lacks {missing[0]!r}: FLOAT and QUANT must be the same architecture")
    return model.eval()
