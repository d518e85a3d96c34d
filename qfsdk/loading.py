"""``load_model(spec)``: the one way the commands read a PyTorch face model.

A spec is a zoo name (``dlib_resnet``), ``NAME=PATH`` (zoo architecture ``NAME`` with a float
checkpoint; the same as ``--model NAME --weights PATH``), an ONNX face model written by ``qfsdk
import``, or a qfsdk quantized checkpoint (``qfsdk calibrate``/``qat``). ``calibrate``, ``qat``,
``eval`` and ``convert`` all take these forms; a command that needs a float model refuses a
quantized one in one line.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qfsdk.errors import ConfigError, QfsdkError


def is_quantized_checkpoint(spec: str | Path) -> bool:
    """Whether ``spec`` is a file holding a qfsdk quantized checkpoint (recognised by content)."""
    from qfsdk.file_kinds import identify

    return Path(spec).is_file() and identify(spec).name == "quantized"


def split_weights(spec: str, weights: str | Path | None = None) -> tuple[str, str | Path | None]:
    """``NAME=PATH`` as (NAME, PATH); any other spec with ``weights`` as given. A file whose name holds
    ``=`` is a file, not a pair."""
    if "=" not in spec or Path(spec).exists():
        return spec, weights
    name, _, path = spec.partition("=")
    if weights is not None:
        raise ConfigError(f"{spec}: the weights are given twice (NAME=PATH and --weights): keep one")
    if not Path(path).is_file():
        raise QfsdkError(f"{spec}: no such checkpoint file {path!r}")
    return name, path


def load_model(spec: str | Path, weights: str | Path | None = None, *, seed: int | None = None,
               quantized: bool = True) -> nn.Module:
    """The model ``spec`` names (see the module docstring), in eval mode with its model card.

    ``weights``: a float checkpoint for a zoo architecture (as ``NAME=PATH``). ``seed``: the random
    initialisation of a zoo model without weights. ``quantized=False`` refuses a quantized checkpoint
    (for commands that quantize a float model).
    """
    text = str(spec)
    if is_quantized_checkpoint(text):
        if not quantized:
            raise ConfigError(f"{text} is a quantized qfsdk checkpoint: give the float model it was made from "
                              "(a zoo name, NAME=PATH, or the .onnx file of `qfsdk import`)")
        if weights is not None:
            raise ConfigError(f"{text} is a quantized checkpoint and carries its own weights: drop --weights ({weights})")
        from qfsdk.quant import load

        return load(text)
    from qfsdk.models import create

    name, weights = split_weights(text, weights)
    return create(name, weights=weights, seed=seed)
