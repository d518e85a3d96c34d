"""Per-layer sensitivity: SQNR of each quantized layer against the same layer of the float model.

Three numbers per layer, over a few batches:

* ``sqnr_db``: the layer's output inside the quantized network vs inside the float network
  (error accumulated from every layer before it; forward hooks on matching module names);
* ``local_sqnr_db``: the quantized layer run on the float network's inputs vs the float layer
  (its own quantization error only);
* ``output_sqnr_db``: the embedding when only this layer is quantized vs the float embedding
  (its own error as the network propagates it) -- the ranking used for mixed precision, since
  the embedding noise of several quantized layers is close to the sum of their noises.

SQNR = 10 log10(sum(float^2) / sum((quantized - float)^2)), capped at 200 dB.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from qfsdk.errors import QfsdkError
from qfsdk.quant.api import quant_config_of
from qfsdk.quant import LayerOverride

from qfsdk.quant.requantize import quantized_layers, requantize

MAX_SQNR_DB = 200.0


@dataclass(frozen=True)
class LayerSensitivity:
    """One quantized layer's bits and SQNRs (dB)."""

    name: str
    module: str
    weight_bits: int
    act_bits: int
    sqnr_db: float
    local_sqnr_db: float
    output_sqnr_db: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped at :data:`MAX_SQNR_DB`."""
    if noise <= signal * 10 ** (-MAX_SQNR_DB / 10):
        return MAX_SQNR_DB
    return 10.0 * math.log10(signal / noise)


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _sqnr_of_outputs(model: nn.Module, references: list[torch.Tensor], batches: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        outputs = [model(batch).double() for batch in batches]
    signal = sum(float(ref.square().sum()) for ref in references)
    return sqnr_db(signal, sum(float((out - ref).square().sum()) for out, ref in zip(outputs, references)))


def output_sqnr(float_model: nn.Module, quant_model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[str, float]:
    """Embedding SQNR (dB) with only one layer quantized, for each quantized layer of ``quant_model``."""
    config = quant_config_of(quant_model)
    with torch.no_grad():
        references = [float_model.eval()(batch).double() for batch in batches]
    alone = LayerOverride("*", enabled=False)
    return {
        name: _sqnr_of_outputs(requantize(float_model, quant_model, config.with_overrides(alone, LayerOverride(name))),
                               references, batches)
        for name, _ in quantized_layers(quant_model)
    }  # fmt: skip


def _hooked_energies(float_model: nn.Module, layers: list[tuple[str, nn.Module]], quant_model: nn.Module,
                     batches: Sequence[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per layer: float output energy, in-network error energy and layer-alone error energy."""
    float_modules = dict(float_model.named_modules())
    energy = {name: {"signal": 0.0, "noise": 0.0, "local": 0.0} for name, _ in layers}
    quant_outputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}  # a module may run twice
    recording = [True]

    def keep_quant_output(name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if recording[0]:
                quant_outputs[name].append(_first_tensor(output))

        return hook

    def compare(name: str, quant_layer: nn.Module):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            reference = _first_tensor(output).double()
            recording[0] = False
            local = _first_tensor(quant_layer(*args)).double()
            recording[0] = True
            totals = energy[name]
            totals["signal"] += float(reference.square().sum())
            totals["noise"] += float((quant_outputs[name].pop(0).double() - reference).square().sum())
            totals["local"] += float((local - reference).square().sum())

        return hook

    handles = [module.register_forward_hook(keep_quant_output(name)) for name, module in layers]
    handles += [float_modules[name].register_forward_hook(compare(name, module)) for name, module in layers]
    float_model.eval()
    quant_model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                quant_model(batch)
                float_model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return energy


def layer_sensitivity(float_model: nn.Module, quant_model: nn.Module, batches: Sequence[torch.Tensor]) -> list[LayerSensitivity]:
    """SQNRs of every quantized layer over ``batches`` (preprocessed float inputs), in network order."""
    config = quant_config_of(quant_model)
    layers = quantized_layers(quant_model)
    float_names = {name for name, _ in float_model.named_modules()}
    missing = [name for name, _ in layers if name not in float_names]
    if missing:
        raise QfsdkError(f"the float model has no layer {missing[0]!r}: FLOAT and QUANT must be the same architecture")
    energy = _hooked_energies(float_model, layers, quant_model, batches)
    alone = output_sqnr(float_model, quant_model, batches)
    return [
        LayerSensitivity(
            name=name,
            module=type(module).__name__,
            weight_bits=config.bits_for(name)[0],
            act_bits=config.bits_for(name)[1],
            sqnr_db=sqnr_db(energy[name]["signal"], energy[name]["noise"]),
            local_sqnr_db=sqnr_db(energy[name]["signal"], energy[name]["local"]),
            output_sqnr_db=alone[name],
        )
        for name, module in layers
    ]
