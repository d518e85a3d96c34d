"""``qfsdk synth``: write a synthetic face dataset for a model (no real data)."""

from __future__ import annotations

from pathlib import Path

import click

from qfsdk.calib.inversion import AUTO, methods_help
from qfsdk.calib.synth import DEFAULT_SOURCE, sources_help

from .common import InputPath, check_output


@click.command()
@click.option("--model", "model_name", required=True, help="Zoo model to synthesise for (see `qfsdk models`).")
@click.option("--weights", type=InputPath(dir_okay=False, path_type=Path),
              help="Weights file; default: the model's packaged weights, else a seeded random init.")
@click.option("-n", "count", type=click.IntRange(min=1), required=True, help="Number of images.")
@click.option("--source", default=DEFAULT_SOURCE, show_default=True, help=f"Where images come from. {sources_help()}.")
@click.option("--method", default=AUTO, show_default=True,
              help=f"Inversion method (inversion and hybrid sources). {methods_help()}.")
@click.option("--iterations", type=click.IntRange(min=1),
              help="Inversion steps per batch (inversion and hybrid sources; more: better, slower).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images optimised together (statistics are matched per batch).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder (PNG images + manifest.json); rerun to resume an interrupted run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def synth(model_name: str, weights: Path | None, count: int, source: str, method: str, iterations: int | None,
          seed: int, batch_size: int, out_dir: Path, progress: bool) -> None:  # fmt: skip
    """Synthesise face images for a model (no real data), for calibration and distillation."""
    import json

    from qfsdk.calib.synth import MANIFEST, synthesize

    check_output(out_dir, weights, folder=True)
    directory = synthesize(model_name, out_dir, count, method=method, seed=seed, weights=weights, batch_size=batch_size,
                           iterations=iterations, progress=progress, source=source)  # fmt: skip
    manifest = json.loads((directory / MANIFEST).read_text())
    dropped = sum(manifest["dropped_faces"])
    missed = f"; {dropped} generated faces the detector missed were replaced" if dropped else ""
    click.echo(f"{count} images from the {source} source in {directory} (settings in {directory / MANIFEST}{missed})")
