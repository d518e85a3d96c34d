"""Latency, throughput and peak memory of one model artifact on one backend.

Each (artifact, backend) pair runs in a fresh Python process (``python -m qfsdk.runtime.bench``)
so that its peak RSS is its own.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import QfsdkError

log = logging.getLogger(__name__)
NOTE_KEY = "placement_note"  # a row key only between the worker and measure_isolated


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def measure(model: str, backend: str, batch_sizes: Sequence[int], *, repeats: int = 20, warmup: int = 3,
            threads: int | None = None) -> list[dict[str, Any]]:
    """One row per batch size: p50/p90 ms per ``Embedder.embed`` call on random aligned crops, images/s
    (and the Embedder's ``placement_note`` where the model's placement is made for another backend)."""
    from .embedder import Embedder

    rows = []
    with Embedder(model, backend, batch_size=max(batch_sizes), threads=threads) as embedder:
        crops_shape = (*embedder.contract.input_size, 3)
        rng = np.random.default_rng(0)
        for batch_size in batch_sizes:
            crops = rng.integers(0, 256, (batch_size, *crops_shape), dtype=np.uint8)
            for _ in range(warmup):
                embedder.embed(crops)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                embedder.embed(crops)
                times.append(time.perf_counter() - start)
            p50, p90 = np.percentile(times, [50, 90])
            rows.append({"model": model, "backend": embedder.backend_name, "batch_size": batch_size,
                         "p50_ms": round(p50 * 1e3, 3), "p90_ms": round(p90 * 1e3, 3),
                         "images_per_s": round(batch_size / p50, 2),
                         **({NOTE_KEY: embedder.placement_note} if embedder.placement_note else {})})
    peak = round(peak_rss_mib(), 1)
    return [{**row, "peak_rss_mib": peak} for row in rows]


def measure_isolated(model: str | Path, backend: str, batch_sizes: Sequence[int], **options: Any) -> list[dict[str, Any]]:
    """:func:`measure` in a fresh process; a failure becomes one row with an ``error``. A placement
    note (see :mod:`qfsdk.runtime.placement`) is logged here once, as a warning, not kept in the rows."""
    args = json.dumps({"model": str(model), "backend": backend, "batch_sizes": list(batch_sizes), **options})
    done = subprocess.run([sys.executable, "-m", "qfsdk.runtime.bench", args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        return [{"model": str(model), "backend": backend, "error": lines[-1]}]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    notes = {note for row in rows if (note := row.pop(NOTE_KEY, None))}
    for note in sorted(notes):
        log.warning("%s", note)
    return rows


def _worker(argument: str) -> None:
    args = json.loads(argument)
    try:
        rows = measure(**args)
    except (QfsdkError, ValueError) as exc:
        rows = [{"model": args["model"], "backend": args["backend"], "error": str(exc)}]
    print(json.dumps(rows))


if __name__ == "__main__":
    _worker(sys.argv[1])
