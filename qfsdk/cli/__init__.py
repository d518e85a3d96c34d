"""The ``qfsdk`` command line: a thin layer over the Python API.

Subcommands are registered by name and imported only when used: ``qfsdk --help`` reads their
one-line summaries from the modules' source (no import), so it, ``qfsdk doctor`` and the
deployment commands work (and stay fast) where the quantization extra (torch) is not installed.
A command that needs it says so in one line. User errors (:class:`qfsdk.errors.QfsdkError`)
exit 1 with one line on stderr; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import logging

import click

from qfsdk._version import __version__
from qfsdk.errors import QfsdkError

# name -> "module:function"; the single place a subcommand is added.
COMMANDS: dict[str, str] = {
    "models": "qfsdk.cli.models_cmd:models",
    "doctor": "qfsdk.cli.doctor_cmd:doctor",
    "demo": "qfsdk.cli.demo_cmd:demo",
    "synth": "qfsdk.cli.synth_cmd:synth",
    "calibrate": "qfsdk.cli.calibrate_cmd:calibrate",
    "qat": "qfsdk.cli.qat_cmd:qat",
    "convert": "qfsdk.cli.convert_cmd:convert",
    "check": "qfsdk.cli.check_cmd:check",
    "import": "qfsdk.cli.import_cmd:import_model",
    "embed": "qfsdk.cli.embed_cmd:embed",
    "build": "qfsdk.cli.build_cmd:build",
    "bench": "qfsdk.cli.bench_cmd:bench",
    "eval": "qfsdk.cli.eval_cmd:eval_command",
}

# Top-level packages that only the quantization side needs -> the extra that installs them.
EXTRA_OF_PACKAGE: dict[str, str] = {"torch": "quantize", "safetensors": "quantize"}


def missing_extra_message(command: str, exc: ImportError) -> str | None:
    """The one-line install hint when ``exc`` is a missing package of an extra, else None."""
    package = (getattr(exc, "name", None) or "").partition(".")[0]
    extra = EXTRA_OF_PACKAGE.get(package)
    if extra is None or not isinstance(exc, ModuleNotFoundError):
        return None
    return f"qfsdk {command} needs {package}, which this installation lacks: pip install 'qfsdk[{extra}]'"


@functools.lru_cache(maxsize=None)
def command_help(name: str) -> str:
    """The help text of subcommand ``name``: its function's docstring, read from source without importing it."""
    module_name, attr = COMMANDS[name].split(":")
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    function = next((node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == attr), None)
    text = ast.get_docstring(function) if function is not None else None
    return inspect.cleandoc(text).partition("\f")[0] if text else ""


class QfsdkGroup(click.Group):
    """Lazily imported subcommands; QfsdkError becomes a one-line error."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        ctx.meta["qfsdk.command"] = name
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each summary from :func:`command_help` (no command module imported)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.Command(name, help=command_help(name)).get_short_help_str(limit)) for name in names])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QfsdkError as exc:
            raise click.ClickException(str(exc)) from None
        except ImportError as exc:
            message = missing_extra_message(ctx.meta.get("qfsdk.command", "this command"), exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=QfsdkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="qfsdk")
@click.option("-v", "--verbose", is_flag=True, help="Log what the SDK does (INFO level).")
def main(verbose: bool) -> None:
    """qfsdk: quantize face-recognition models without real face data and deploy them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
