"""``qfsdk bench``: latency, throughput and peak memory per model artifact and backend, in one run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import click

from qfsdk.cli.common import InputPath

from qfsdk.errors import QfsdkError
from qfsdk.file_kinds import require
from qfsdk.runtime.backends import BACKENDS
from qfsdk.runtime.bench import measure_isolated
from qfsdk.runtime.metadata import ENGINE_SUFFIXES

COLUMNS = (("model", "model"), ("backend", "backend"), ("batch_size", "batch"), ("p50_ms", "p50 ms"),
           ("p90_ms", "p90 ms"), ("images_per_s", "images/s"), ("peak_rss_mib", "peak RSS MiB"))


def default_backends(model: Path) -> list[str]:
    """Every installed backend that runs this kind of artifact."""
    if model.suffix.lower() in ENGINE_SUFFIXES:
        return ["tensorrt"]
    return ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


def table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table; failed pairs listed below it."""
    lines = [[title for _, title in COLUMNS]] + [[str(row[key]) for key, _ in COLUMNS] for row in rows if "error" not in row]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))) for line in lines]
    text += [f"{row['model']} on {row['backend']}: {row['error']}" for row in rows if "error" in row]
    return "\n".join(text)


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=InputPath(dir_okay=False, path_type=Path))
@click.option("--backend", "backends", multiple=True, type=click.Choice(["auto", *BACKENDS]),
              help="Backend to time (repeatable); default: every installed backend that runs the artifact.")
@click.option("--batch-size", "batch_sizes", multiple=True, type=click.IntRange(1), default=(1, 16), show_default=True,
              help="Batch size (repeatable).")
@click.option("--repeats", type=click.IntRange(1), default=20, show_default=True, help="Timed calls per batch size.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True, help="Untimed calls first.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads per backend.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(models: tuple[Path, ...], backends: tuple[str, ...], batch_sizes: tuple[int, ...], repeats: int, warmup: int,
          threads: int | None, as_json: bool) -> None:
    """Time MODELS on backends side by side; each model/backend pair runs in its own process (own peak RSS).

    Exits 1, naming them, when any model/backend pair failed."""
    for model in models:
        check_model_file(model)
    rows = [
        row
        for model in models
        for backend in (backends or default_backends(model))
        for row in measure_isolated(model, backend, batch_sizes, repeats=repeats, warmup=warmup, threads=threads)
    ]
    click.echo(json.dumps({"results": rows}, indent=2) if as_json else table(rows))
    failed = sorted({f"{row['model']} on {row['backend']}" for row in rows if "error" in row})
    if failed:
        raise QfsdkError(f"{len(failed)} of {len({(row['model'], row['backend']) for row in rows})} model/backend runs "
                         f"failed: {', '.join(failed)}")


def check_model_file(model: Path) -> None:
    """Refuse, before timing anything, a file that is neither an ONNX model nor a TensorRT engine (by suffix)."""
    if model.suffix.lower() not in ENGINE_SUFFIXES:
        require(model, ["onnx"], "an ONNX model or TensorRT engine",
                f"qfsdk bench times .onnx files and engines ({', '.join(ENGINE_SUFFIXES)})")
