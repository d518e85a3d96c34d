"""``qfsdk demo``: run the pipeline on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import click

from qfsdk.cli.common import InputPath


@click.command()
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("qfsdk-demo"),
              show_default=True, help="Folder for the demo's files.")
@click.option("--images", type=InputPath(file_okay=False, path_type=Path),
              help="Folder of aligned face crops to embed instead of generated test patterns.")
@click.option("--repeats", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed runs per measurement.")
@click.option("--num-images", type=click.IntRange(1), default=32, show_default=True,
              help="Synthetic calibration images for the W8A8 step.")
@click.option("--iterations", type=click.IntRange(1), help="Synthesis optimisation steps (default: the method's).")
def demo(out_dir: Path, images: Path | None, repeats: int, num_images: int, iterations: int | None) -> None:
    """Pretrained dlib ResNet -> ONNX Runtime on CPU -> W8A8 from synthetic data, with parity and speed."""
    from qfsdk.demo import run_demo

    run_demo(out_dir, images=images, repeats=repeats, num_synthetic=num_images, iterations=iterations, echo=click.echo)
