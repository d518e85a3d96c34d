"""``qfsdk embed`` on a folder of aligned crops vs ``qfsdk bench``: same model, backend, batch and threads.

    .venv/bin/python benchmarks/embed_throughput.py [--images 4000] [--model mobilefacenet] [--bits w8a8|fp32]
        [--backend openvino] [--batch-size 32] [--threads T] [--repeats 50] [--rounds 3] [--out DIR]

Prints one JSON document with both images/s and their ratio (the target is >= 0.85). Bench and
embed alternate for ``--rounds`` rounds; ``ratio`` is the median of the rounds' ratios (each round's
two runs follow each other, so they see about the same load from other processes on a shared
machine), ``best_ratio`` that of each side's best round.

* crops: the real ArcFace-aligned 112x112 crops of tests/real_models.py (fetched from registries
  into the test cache on first use), copied to ``--images`` files, alternately PNG and JPEG
  (quality 95), in one temporary folder;
* model: the zoo model (seeded random weights) made with the CLI: ``qfsdk calibrate --data``
  on the crops and ``qfsdk convert`` (W8A8, the tensorrt placement OpenVINO runs fastest), or
  ``qfsdk convert --fp32``;
* ``bench``: ``qfsdk bench --json`` images/s (batch over its p50 time per ``Embedder.embed`` call);
* ``embed``: ``qfsdk embed`` as a command on all crops and on one batch of them; its images/s is
  the marginal rate ``(N - batch) / (t_N - t_batch)``, so interpreter start and model load (paid
  once per run, whatever its size) do not count; ``embed_wall`` is ``N / t_N`` with them.
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

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # real_models: registry face crops

QFSDK = [sys.executable, "-m", "qfsdk"]


def cli(*args: object) -> str:
    """Run ``qfsdk ARGS``; its stdout, or exit with its stderr."""
    done = subprocess.run([*QFSDK, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"qfsdk {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def timed_cli(*args: object) -> float:
    start = time.perf_counter()
    cli(*args)
    return time.perf_counter() - start


def write_crops(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the real crops, alternately PNG and JPEG, named in input order."""
    from real_models import arcface_crops

    crops = [Image.fromarray(pixels) for _, pixels in arcface_crops()]
    folder.mkdir(parents=True)
    files = []
    for i in range(count):
        path = folder / (f"{i:06d}.png" if i % 2 == 0 else f"{i:06d}.jpg")
        crops[i % len(crops)].save(path, quality=95)
        files.append(path)
    return files


def make_model(work: Path, model: str, bits: str, crops: Path) -> Path:
    """The zoo model exported with the CLI: float, or calibrated on the crops and converted."""
    onnx = work / f"{model}_{bits}.onnx"
    if bits == "fp32":
        cli("convert", model, "--fp32", "-o", onnx)
    else:
        checkpoint = work / f"{model}_{bits}.safetensors"
        cli("calibrate", "--model", model, "--data", crops, "--bits", bits, "-o", checkpoint)
        cli("convert", checkpoint, "-o", onnx)
    return onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--model", default="mobilefacenet")
    parser.add_argument("--bits", default="w8a8", choices=["w8a8", "fp32"])
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=50, help="bench: timed calls")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bench/embed rounds")
    parser.add_argument("--out", type=Path, help="keep the crops, model and embeddings here (default: a temp folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qfsdk-embed-throughput-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        crops = work / "crops"
        files = write_crops(crops, args.images)
        one_batch = work / "one-batch"
        one_batch.mkdir()
        for path in files[: args.batch_size]:
            os.link(path, one_batch / path.name)
        model = make_model(work, args.model, args.bits, one_batch)
        common = ["--backend", args.backend, "--batch-size", args.batch_size,
                  *(["--threads", args.threads] if args.threads else [])]  # fmt: skip

        bench_rounds, embed_rounds = [], []
        for _ in range(args.rounds):
            rows = json.loads(cli("bench", model, *common, "--repeats", args.repeats, "--json"))["results"]
            bench_rounds.append(rows[0]["images_per_s"])
            t_batch = timed_cli("embed", model, one_batch, *common, "-o", work / "one.npz")
            t_all = timed_cli("embed", model, crops, *common, "-o", work / "all.npz")
            embed_rounds.append(((args.images - args.batch_size) / (t_all - t_batch), t_all, t_batch))
        bench = max(bench_rounds)
        embed, t_all, t_batch = max(embed_rounds)
        ratios = sorted(e[0] / b for b, e in zip(bench_rounds, embed_rounds))
        report: dict[str, Any] = {
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "model": f"{args.model} {args.bits} ({model.name})",
            "backend": rows[0]["backend"],
            "batch_size": args.batch_size,
            "threads": args.threads,
            "images": args.images,
            "bench_images_per_s": bench,  # best round
            "embed_images_per_s": round(embed, 2),
            "embed_wall_images_per_s": round(args.images / t_all, 2),
            "embed_seconds": {"all": round(t_all, 2), "one_batch": round(t_batch, 2)},
            "rounds": {"bench_images_per_s": bench_rounds, "embed_images_per_s": [round(r[0], 2) for r in embed_rounds]},
            "ratio": round(ratios[len(ratios) // 2], 3),
            "best_ratio": round(embed / bench, 3),
            "target_ratio": 0.85,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
