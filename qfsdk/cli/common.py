"""Option groups and checks shared by the commands.

Importing this module stays torch-free (the deployment commands use :func:`check_output`);
the quantization option groups import :mod:`qfsdk.quant` when they decorate a command.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import click

from qfsdk.errors import ConfigError, QfsdkError

class InputPath(click.Path):
    """``click.Path(exists=True, ...)`` whose refusals are user errors, one line and exit 1, naming the path
    (click's own are usage errors: exit 2 and three lines of usage)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(exists=True, **kwargs)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        where = f" ({_hint(param)})" if param else ""
        if not os.path.lexists(value):
            kind = "folder" if not self.file_okay else "file" if not self.dir_okay else "file or folder"
            raise click.ClickException(f"{value}: no such {kind}{where}")
        if os.path.isdir(value) and not self.dir_okay:
            raise click.ClickException(f"{value}: a folder, not a file{where}")
        if not os.path.isdir(value) and not self.file_okay:
            raise click.ClickException(f"{value}: a file, not a folder{where}")
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as exc:  # unreadable, a dangling link
            raise click.ClickException(f"{value}: {exc.message}{where}") from None


def _hint(param: click.Parameter) -> str:
    """How the command line names ``param``: its longest option flag, or its metavar for an argument."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.human_readable_name or str(param.name)).upper()


def check_output(output: Path, *inputs: Path | str | None, folder: bool = False) -> None:
    """Refuse, before any work, an ``output`` that is one of ``inputs`` (it would be overwritten)
    or that cannot be written (no permission, a directory where a file goes, a file where a folder
    must be). ``folder``: the output is a directory (``synth -o DIR``)."""
    for source in inputs:
        if source is None or not Path(source).exists() or not output.exists():
            continue
        if os.path.samefile(output, source):
            same = "" if str(source) == str(output) else f" ({source})"
            raise QfsdkError(f"{output} is also an input{same}: write the output to another path (-o)")
    if output.exists() and output.is_dir() != folder:
        raise QfsdkError(f"{output} is {'a file' if folder else 'a directory'}: give -o a {'folder' if folder else 'file'} path")
    if output.exists() and not os.access(output, os.W_OK):
        raise QfsdkError(f"{output} exists and is not writable: choose another -o or change its permissions")
    parent = output.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise QfsdkError(f"{output}: {parent} is a file, not a folder: choose another -o")
    try:  # what the write will do, tried now: permissions alone miss read-only mounts (and root passes them all)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise QfsdkError(f"{output}: cannot write in {parent} ({exc.strerror or exc}): choose another -o") from None


def read_config_file(path: Path) -> dict[str, Any]:
    """The JSON object of a ``--config`` file; one line naming the file for anything else."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a JSON quantization config ({exc}); write a JSON object such as "
                          '{"preset": "w8a8"} (see `qfsdk eval --fidelity` for recommended_config.json)') from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds a JSON {type(data).__name__}, not the JSON object of a quantization config "
                          '(such as {"preset": "w8a8"})')
    return data


def model_options(fn: Callable) -> Callable:
    """``--model`` and ``--weights``; ``--model NAME=PATH`` is read as ``--model NAME --weights PATH``
    (:func:`qfsdk.loading.split_weights`), so the command sees a name and a weights file."""

    @click.option("--model", "model_name", required=True,
                  help="Zoo model name (see `qfsdk models`), NAME=PATH (a float checkpoint), or an .onnx file "
                       "written by `qfsdk import`.")
    @click.option("--weights", type=InputPath(dir_okay=False, path_type=Path),
                  help="Float checkpoint (.pth/.safetensors); dlib_resnet defaults to its installed weights.")
    @functools.wraps(fn)
    def wrapper(*args: Any, model_name: str, weights: Path | None, **kwargs: Any) -> Any:
        from qfsdk.loading import split_weights

        model_name, weights = split_weights(model_name, weights)
        return fn(*args, model_name=model_name, weights=None if weights is None else Path(weights), **kwargs)

    return wrapper


def quant_options(fn: Callable) -> Callable:
    """``--bits``, ``--scheme``, ``--asymmetric-acts``, ``--keep-8bit`` and ``--config``."""
    from qfsdk.quant.config import PRESETS, SCHEMES, QuantConfig

    @click.option("--bits", default="w8a8", show_default=True, help=f"Preset: {', '.join(PRESETS)}.")
    @click.option("--scheme", type=click.Choice(SCHEMES), default=QuantConfig.scheme, show_default=True,
                  help="Quantizer placement: symmetric at conv inputs (tensorrt; also what OpenVINO runs fastest), "
                       "plus conv outputs so ONNX Runtime's CPU kernels run int8 (onnxruntime), or the paper's "
                       "asymmetric one (quantface).")
    @click.option("--asymmetric-acts", "asymmetric_acts", is_flag=True,
                  help="Activations with a zero point over their observed [min, max] (weights stay symmetric): "
                       "finer int8 steps on one-sided PReLU/ReLU outputs, for ONNX Runtime and OpenVINO on the CPU "
                       "(TensorRT needs zero point 0).")
    @click.option("--keep-8bit", "keep_8bit", multiple=True, metavar="PATTERN",
                  help="Layer name pattern kept at W8A8 (repeatable), e.g. 'conv1*' or 'fc'.")
    @click.option("--config", "config_file", type=InputPath(dir_okay=False, path_type=Path),
                  help="JSON quantization config (overrides --bits/--scheme).")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def method_option(fn: Callable) -> Callable:
    """``--method``: the activation range observer of a PTQ run (calibrate, and qat's starting point)."""
    from qfsdk.quant.config import OBSERVERS, QuantConfig
    from qfsdk.quant.recipe import DEFAULT_METHOD

    return click.option("--method", default=None,
                        help=f"Range observer: {', '.join(OBSERVERS)}; percentile:P picks the percentile "
                             f"(default {QuantConfig.percentile}). Default: {DEFAULT_METHOD}; minmax for "
                             "asymmetric activations.")(fn)


def build_config(bits: str, scheme: str, keep_8bit: tuple[str, ...], config_file: Path | None, asymmetric_acts: bool = False):
    """The validated QuantConfig the options describe (``--config`` FILE, else ``--bits`` and ``--scheme``)."""
    from qfsdk.quant import LayerOverride, QuantConfig

    fields: dict[str, Any] = read_config_file(config_file) if config_file is not None else {"preset": bits, "scheme": scheme}
    if asymmetric_acts:
        fields["asymmetric_acts"] = True
    try:
        config = QuantConfig.from_dict(fields)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}" if config_file is not None else str(exc)) from None
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type in the file
        raise ConfigError(f"{config_file or '--bits/--scheme'}: not a valid quantization config ({exc})") from None
    return config.with_overrides(*(LayerOverride(p, 8, 8) for p in keep_8bit))


LISTED = 5  # items shown per report line


def listed(items: list, reasons: dict | None = None, separator: str = ", ") -> str:
    """The first few items, separated, each with its reason where ``reasons`` has one."""
    reasons = reasons or {}
    shown = [f"{item} ({reasons[item]})" if item in reasons else str(item) for item in items[:LISTED]]
    return separator.join(shown) + (f"{separator}..." if len(items) > LISTED else "")
