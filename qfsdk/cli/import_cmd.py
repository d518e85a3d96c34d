"""``qfsdk import``: a foreign ONNX face embedder in, a verified qfsdk float model (contract inside) out."""

from __future__ import annotations

from pathlib import Path

import click

from .common import check_output

# What insightface's ArcFace models use; SFace (normalising inside its graph) is --mean 0 --std 1.
DEFAULT_NORMALISATION = "127.5"


def _floats(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected a number or three comma-separated numbers, got {text!r}", param_hint=what) from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise click.BadParameter(f"expected one or three values, got {len(values)}", param_hint=what)
    return values[0], values[1], values[2]


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise click.BadParameter(f"expected H or HxW (e.g. 112 or 112x112), got {text!r}", param_hint="--input-size")
    return (values[0], values[-1])


@click.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The float ONNX to write (pass it as --model to synth, calibrate, qat, convert, eval).")
@click.option("--input-size", help="H or HxW (default: the graph's).")
@click.option("--mean", default=DEFAULT_NORMALISATION, show_default=True, help="M or M,M,M: input = (pixel - mean) / std.")
@click.option("--std", default=DEFAULT_NORMALISATION, show_default=True, help="S or S,S,S.")
@click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default="rgb", show_default=True)
@click.option("--layout", type=click.Choice(["nchw", "nhwc"]), default="nchw", show_default=True,
              help="The source's input layout (an NHWC graph gets a Transpose in front: qfsdk models take NCHW).")
@click.option("--output", "output_name", help="Which graph output is the embedding (default: the one 2-D output).")
@click.option("--distance", type=click.Choice(["cosine", "euclidean"]), default="cosine", show_default=True)
@click.option("--threshold", type=float, help="Same-person threshold of --distance, recorded in the contract.")
@click.option("--template", default="arcface", show_default=True,
              help="Alignment template of the crops the model expects: arcface (insightface 5 points), dlib or none.")
def import_model(source, output, input_size, mean, std, channel_order, layout, output_name, distance, threshold, template) -> None:
    """Import SOURCE.onnx (a face embedder: one image in, one embedding out) as a qfsdk model."""
    from qfsdk.converters.onnx_import import ImportOptions, import_onnx
    from qfsdk.errors import QfsdkError
    from qfsdk.file_kinds import require

    require(source, ["onnx"], "an ONNX model", "qfsdk import takes the .onnx file of a face embedder")
    check_output(output, source)
    options = ImportOptions(input_size=_size(input_size), mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                            channel_order=channel_order.upper(), layout=layout, output=output_name, distance=distance,
                            threshold=threshold, template=template)
    if min(options.std) <= 0:
        raise QfsdkError(f"--std {std}: every std must be > 0 (the input is (pixel - mean) / std)")
    click.echo(import_onnx(source, output, options).summary())
