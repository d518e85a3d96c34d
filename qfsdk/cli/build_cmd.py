"""``qfsdk build``: a TensorRT engine (and its sidecar JSON) from a qfsdk ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from qfsdk.cli.common import InputPath

from qfsdk.runtime.engine import sidecar_path
from qfsdk.runtime.trt_build import build_engine


@click.command("build")
@click.argument("onnx", type=InputPath(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Engine file (.engine/.plan).")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True, help="Largest batch of the optimization profile.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache file: read if present, updated after the build.")
@click.option("--plugins", multiple=True, type=InputPath(dir_okay=False, path_type=Path),
              help="Plugin for custom layers (repeatable), loaded before parsing: a library (.so) or a tensorrt.plugin "
                   "file (.py), e.g. qfsdk's own FakeQuantize plugin for `convert --int6-plugin` graphs.")
@click.option("--fp16-fallback", is_flag=True,
              help="Let float layers run in fp16 (weakly typed build, TensorRT <= 10); on a float ONNX this gives an fp16 engine.")
def build(onnx: Path, output: Path, max_batch: int, timing_cache: Path | None, plugins: tuple[Path, ...], fp16_fallback: bool) -> None:
    """Build a TensorRT engine for this GPU from ONNX (strongly typed: precision from its Q/DQ nodes)."""
    info = build_engine(onnx, output, max_batch=max_batch, timing_cache=timing_cache, plugins=plugins, fp16_fallback=fp16_fallback)
    capability = ".".join(map(str, info.compute_capability))
    click.echo(f"wrote {output} and {sidecar_path(output).name}: TensorRT {info.tensorrt_version}, {info.gpu_name} "
               f"(compute capability {capability}), batch 1..{info.max_batch}")
