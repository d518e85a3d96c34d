"""The ``qfsdk`` command line: a thin layer over the Python API.

Subcommands are registered by name and imported only when used, so ``qfsdk doctor`` and
``qfsdk --version`` work (and stay fast) even where torch is missing.
User errors (:class:`qfsdk.errors.QfsdkError`) exit 1 with one line on stderr; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
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


class QfsdkGroup(click.Group):
    """Lazily imported subcommands; QfsdkError becomes a one-line error."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QfsdkError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=QfsdkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="qfsdk")
@click.option("-v", "--verbose", is_flag=True, help="Log what the SDK does (INFO level).")
def main(verbose: bool) -> None:
    """qfsdk: quantize face-recognition models without real face data and deploy them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
