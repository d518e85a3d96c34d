"""``qfsdk demo``: run the pipeline on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("qfsdk-demo"),
              show_default=True, help="Folder for the demo's files.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of aligned face crops to embed instead of generated test patterns.")
@click.option("--repeats", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed runs per measurement.")
def demo(out_dir: Path, images: Path | None, repeats: int) -> None:
    """Pretrained dlib ResNet -> ONNX -> ONNX Runtime on CPU, with parity and speed."""
    from qfsdk.demo import run_demo

    run_demo(out_dir, images=images, repeats=repeats, echo=click.echo)
