"""Gallery embedding on Ray vs single-process ``qfsdk embed``, on this machine.

    .venv/bin/python benchmarks/ray_scale.py [--images 3000] [--model mobilefacenet] [--shard-size 250] [--out DIR]

Prints one JSON document. Images: seeded-noise PNG crops of the model's input size (decoding
and inference cost as for real crops). The model: the zoo model with seeded random weights,
exported to float ONNX; every run uses ONNX Runtime.

* ``single_process``: ``qfsdk embed`` as a command (wall clock, interpreter start included) with
  ``--threads`` 1 and 2;
* ``ray_cli``: ``qfsdk embed --ray --actors A --threads 1`` as a command, A = 1 and 2: starts a
  local Ray instance, its actors, and shuts it down (what a one-off user run costs);
* ``ray_warm``: ``embed_gallery`` on an already running local instance (actor start-up included),
  A = 1 and 2: the throughput that a long gallery run approaches;
* ``overhead``: wall-clock ratios against single-process with the same number of CPU threads,
  and the largest difference between the Ray and single-process embeddings (1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from qfsdk.runtime.distributed import embed_gallery, read_gallery

SEED = 0
ACTORS = (1, 2)


def make_images(folder: Path, count: int, size: tuple[int, int]) -> None:
    """``count`` seeded-noise RGB PNGs of ``size`` (height, width)."""
    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def export_model(name: str, path: Path) -> Path:
    """The zoo model ``name`` with seeded random weights as float ONNX (torch only here)."""
    import torch

    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create, get_spec

    torch.manual_seed(SEED)
    return export_float(create(name), path, get_spec(name).contract, name)


def timed_cli(*args: object) -> float:
    """Wall-clock seconds of one ``qfsdk`` command (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qfsdk", *map(str, args)], check=True, capture_output=True)
    return time.perf_counter() - start


def rate(images: int, seconds: float) -> dict[str, float]:
    return {"wall_s": round(seconds, 2), "images_per_s": round(images / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--model", default="mobilefacenet")
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--out", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args()

    import ray

    from qfsdk.models import get_spec

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        images, model = work / "images", export_model(args.model, work / f"{args.model}.onnx")
        make_images(images, args.images, get_spec(args.model).contract.input_size)
        common = ("--backend", "onnxruntime")

        single = {t: timed_cli("embed", model, images, *common, "--threads", t, "-o", work / f"single{t}.npz") for t in ACTORS}
        ray_cli = {a: timed_cli("embed", model, images, *common, "--ray", "--actors", a, "--threads", 1,
                                "--shard-size", args.shard_size, "-o", work / f"ray_cli{a}") for a in ACTORS}

        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - start
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_warm = {}
        for a in ACTORS:
            start = time.perf_counter()
            embed_gallery(model, [images], work / f"ray_warm{a}", actors=a, shard_size=args.shard_size, backend="onnxruntime")
            ray_warm[a] = time.perf_counter() - start
        ray.shutdown()

        reference = np.load(work / "single1.npz")
        paths, embeddings = read_gallery(work / f"ray_cli{ACTORS[-1]}")
        assert paths == list(reference["paths"]), "the Ray output is not the single-process file list"
        report: dict[str, Any] = {
            "machine": {"cpus": cpus, "processor": platform.processor() or platform.machine(), "ray": ray.__version__},
            "model": args.model,
            "images": args.images,
            "shard_size": args.shard_size,
            "single_process": {f"threads_{t}": rate(args.images, s) for t, s in single.items()},
            "ray_cli": {f"actors_{a}": rate(args.images, s) for a, s in ray_cli.items()},
            "ray_warm": {f"actors_{a}": rate(args.images, s) for a, s in ray_warm.items()},
            "ray_init_s": round(ray_init_s, 2),
            "overhead": {
                **{f"ray_cli_actors_{a}_vs_single_threads_{a}": round(ray_cli[a] / single[a], 2) for a in ACTORS},
                **{f"ray_warm_actors_{a}_vs_single_threads_{a}": round(ray_warm[a] / single[a], 2) for a in ACTORS},
                "max_abs_diff_vs_single": float(np.abs(embeddings - reference["embeddings"]).max()),
            },
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
