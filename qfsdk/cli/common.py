"""Option groups and helpers shared by the quantization commands."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

import click

from qfsdk.errors import ConfigError
from qfsdk.quant.config import ASYMMETRIC_SCHEMES, PRESETS, SCHEMES, QuantConfig


def model_options(fn: Callable) -> Callable:
    """``--model`` and ``--weights``."""

    @click.option("--model", "model_name", required=True, help="Zoo model name (see `qfsdk models`).")
    @click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="Float checkpoint (.pth/.safetensors); dlib_resnet defaults to its installed weights.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def quant_options(fn: Callable) -> Callable:
    """``--bits``, ``--scheme``, ``--keep-8bit`` and ``--config``."""

    @click.option("--bits", default="w8a8", show_default=True, help=f"Preset: {', '.join(PRESETS)}.")
    @click.option("--scheme", type=click.Choice(SCHEMES), default=QuantConfig.scheme, show_default=True,
                  help="Quantizer placement: symmetric at conv inputs (tensorrt; also what OpenVINO runs fastest), "
                       "plus conv outputs so ONNX Runtime's CPU kernels run int8 (onnxruntime), or the paper's "
                       "asymmetric one (quantface).")
    @click.option("--keep-8bit", "keep_8bit", multiple=True, metavar="PATTERN",
                  help="Layer name pattern kept at W8A8 (repeatable), e.g. 'conv1*' or 'fc'.")
    @click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  help="JSON quantization config (overrides --bits/--scheme).")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def build_config(bits: str, scheme: str, keep_8bit: tuple[str, ...], config_file: Path | None, observer: str | None = None):
    """The validated QuantConfig the options describe."""
    from qfsdk.quant import LayerOverride, QuantConfig

    if config_file is not None:
        try:
            data = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{config_file}: not valid JSON ({exc})") from None
        config = QuantConfig.from_dict(data)
    else:
        fields = {"preset": bits, "scheme": scheme}
        if observer and scheme not in ASYMMETRIC_SCHEMES:
            fields["observer"] = observer.partition(":")[0]
        config = QuantConfig.from_dict(fields)
    return config.with_overrides(*(LayerOverride(p, 8, 8) for p in keep_8bit))
