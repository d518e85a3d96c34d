"""``qfsdk embed``: embed face images with a model file into an .npz, or on Ray into Parquet shards (torch-free)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from qfsdk.cli.common import InputPath, check_output, listed
from qfsdk.cli.embed_detect import photo_options
from qfsdk.errors import QfsdkError
from qfsdk.runtime import Embedder
from qfsdk.runtime.backends import BACKENDS
from qfsdk.runtime.batch_embed import embed_files
from qfsdk.runtime.detect import DEFAULT_MAX_SIZE
from qfsdk.runtime.files import atomic_output
from qfsdk.runtime.images import collect_images, read_landmarks, require_crops

RAY_ONLY = ("actors", "shard_size", "gpus_per_actor")
DETECT_ONLY = ("detect_size", "detect_threshold")


@click.command("embed")
@click.argument("model", type=InputPath(dir_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=InputPath(path_type=Path))
@click.option("--aligned", is_flag=True,
              help="Images are aligned crops, those of another size resized to the model input. Without --aligned, "
                   "--landmarks or --detect, images must be crops of the model's input size: photos are refused "
                   "with the fix.")
@click.option("--landmarks", "landmarks_file", type=InputPath(dir_okay=False, path_type=Path),
              help='JSON {"image path": [[x, y] x5]} (paths relative to the JSON file): align full images to the model\'s template.')
@click.option("--detect", type=click.Choice(["all", "largest"]), is_flag=False, flag_value="all",
              help="Images are photos: find the faces (packaged YuNet detector), align each to the model's template "
                   "and embed every face (all, the default) or the largest; one .npz row per face.")
@click.option("--detect-size", type=click.IntRange(0), default=DEFAULT_MAX_SIZE, show_default=True,
              help="With --detect: the longest side faces are found at (larger photos are scaled down, then each face "
                   "is located again on a full-resolution crop around it; 0: full size).")
@click.option("--detect-threshold", type=click.FloatRange(0, 1), default=0.6, show_default=True,
              help="With --detect: the least detection score of a face.")
@click.option("--backend", type=click.Choice(["auto", *BACKENDS]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--flip", is_flag=True, help="Add the embedding of the mirrored face (flip-sum).")
@click.option("--normalize", is_flag=True, help="L2-normalise each embedding.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for the backend (with --ray: per actor, default 1).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", metavar="[ADDRESS]",
              help="Embed on Ray: alone, the connected or a new local instance; or a cluster (auto, ray://host:port). "
                   "-o is then a directory of Parquet shards; a rerun finishes what is missing.")
@click.option("--actors", type=click.IntRange(1), help="With --ray: actors, one model each [default: CPUs / threads, or GPUs / --gpus-per-actor].")
@click.option("--shard-size", type=click.IntRange(1), default=1000, show_default=True, help="With --ray: images per Parquet shard.")
@click.option("--gpus-per-actor", type=click.FloatRange(0), default=0.0, show_default=True, help="With --ray: GPUs reserved per actor.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Output .npz: embeddings (float32, N x D, input order) and paths; with --ray, a directory.")
@click.pass_context
def embed(ctx: click.Context, model: Path, paths: tuple[Path, ...], aligned: bool, landmarks_file: Path | None,
          backend: str, batch_size: int, flip: bool, normalize: bool, threads: int | None, ray_address: str | None,
          actors: int | None, shard_size: int, gpus_per_actor: float, output: Path, detect: str | None = None,
          detect_size: int = DEFAULT_MAX_SIZE, detect_threshold: float = 0.6) -> None:
    """Embed the images in PATHS (files, or folders walked in sorted order) with MODEL.

    Unreadable images are skipped and counted; grayscale images are converted to RGB and reported.
    """
    modes = [name for name, given in (("--aligned", aligned), ("--landmarks", landmarks_file), ("--detect", detect)) if given]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} exclude each other")
    given = [f"--{name.replace('_', '-')}" for name in DETECT_ONLY if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
    if given and not detect:
        raise click.UsageError(f"{', '.join(given)}: only with --detect")
    if ray_address is not None:
        if landmarks_file:
            raise click.UsageError("--landmarks is not supported with --ray; pass aligned crops")
        if ray_address and Path(ray_address).exists():
            raise click.UsageError(f"--ray took {ray_address!r} as a cluster address; put --ray after PATHS or write --ray=ADDRESS")
        return embed_on_ray(model, paths, output, address=ray_address or None, actors=actors, shard_size=shard_size, aligned=aligned,
                            backend=backend, batch_size=batch_size, flip=flip, normalize=normalize, threads=threads or 1,
                            gpus_per_actor=gpus_per_actor, detect=detect and photo_options(detect, detect_size, detect_threshold))
    given = [f"--{name.replace('_', '-')}" for name in RAY_ONLY if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{', '.join(given)}: only with --ray")
    if output.is_dir():
        raise click.BadParameter(f"{output} is a directory (directories are for --ray)", param_hint="'-o'")
    files = collect_images(paths)
    if not files:
        raise QfsdkError(f"no image files in {', '.join(map(str, paths))}")
    check_output(output, model, landmarks_file, *files)
    if detect:
        from qfsdk.cli.embed_detect import embed_detected

        return embed_detected(model, files, output, detect, backend=backend, batch_size=batch_size, flip=flip,
                              normalize=normalize, threads=threads, max_size=detect_size or None,
                              score_threshold=detect_threshold)
    landmarks = read_landmarks(landmarks_file) if landmarks_file else None
    with Embedder(model, backend, batch_size=batch_size, flip=flip, normalize=normalize, threads=threads) as embedder:
        if landmarks is None and not aligned:
            require_crops(files, embedder.contract.input_size)
        result = embed_files(embedder, files, landmarks)
        backend_name, size = embedder.backend_name, embedder.contract.input_size
    if not result.paths:
        reasons = {**{path: f"no landmarks in {landmarks_file}" for path in result.no_landmarks}, **result.reasons}
        raise QfsdkError(f"none of the {len(files)} images could be embedded: {listed(result.skipped, reasons, '; ')}")
    with atomic_output(output) as tmp, open(tmp, "wb") as file:
        np.savez(file, embeddings=result.embeddings, paths=np.array([str(p) for p in result.paths]))
    click.echo(f"embedded {len(result.paths)} of {len(files)} images ({result.embeddings.shape[1]}-d, {backend_name}) -> {output}")
    for count_of, what in (
        (result.unreadable, "skipped {} unreadable"),
        (result.no_landmarks, "skipped {} without landmarks in " + str(landmarks_file)),
        (result.bad_landmarks, f"skipped {{}} whose landmarks in {landmarks_file} cannot align a face"),
        (result.grayscale, "converted {} grayscale to RGB"),
        (result.resized, f"resized {{}} crops to the model input {size[0]}x{size[1]} (not aligned at that size)"),
    ):
        if count_of:
            click.echo(f"{what.format(len(count_of))}: {listed(count_of, result.reasons)}", err=True)


def embed_on_ray(model: Path, paths: tuple[Path, ...], output: Path, **options: object) -> None:
    """``--ray``: embed into the Parquet shards of the gallery directory ``output`` and report."""
    from qfsdk.runtime.distributed import embed_gallery

    result = embed_gallery(model, paths, output, **options)
    what = "faces of" if options.get("detect") else "of"
    click.echo(f"embedded {result.embedded} {what} {result.images} images into {result.shards} shards "
               f"({result.computed} computed, {result.reused} already written) -> {output}")
    if result.no_face:
        click.echo(f"found no face in {result.no_face} (see {output / 'no_face'}): {listed(result.read_no_face())}", err=True)
    if result.errors:
        click.echo(f"skipped {result.errors} unreadable (see {output / 'errors'}): "
                   f"{listed([path for path, _ in result.read_errors()])}", err=True)
    if result.grayscale:
        click.echo(f"converted {result.grayscale} grayscale to RGB (in the shards computed now)", err=True)
    if result.resized:
        click.echo(f"resized {result.resized} crops to the model input (in the shards computed now)", err=True)
    if not result.embedded and result.errors == result.images:
        errors = dict(result.read_errors())
        raise QfsdkError(f"none of the {result.images} images could be embedded: {listed(list(errors), errors, '; ')}")
