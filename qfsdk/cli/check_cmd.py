"""``qfsdk check``: is an ONNX file ready for TensorRT's explicit quantization?"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
def check(model: Path) -> None:
    """Lint MODEL against TensorRT's Q/DQ rules; one line per violation, exit 1 if any."""
    from qfsdk.converters.graph_check import check_model
    from qfsdk.file_kinds import require

    require(model, ["onnx"], "an ONNX model", "qfsdk check lints the .onnx file `qfsdk convert` wrote")
    violations = check_model(model)
    for violation in violations:
        click.echo(str(violation))
    if violations:
        raise click.exceptions.Exit(1)
    click.echo(f"{model}: ready for TensorRT (no violations)")
