"""RSS of a process embedding with libqfsdk over many calls (it should stay flat).

Prints one JSON document: RSS at start (library loaded), after create + warm-up, at every
tenth of the calls and at the end, per model. Needs `make native` first (or --lib).

    python benchmarks/native_rss.py                      # tiny generated model, 10,000 calls
    python benchmarks/native_rss.py --dlib-calls 2000    # also the pretrained dlib ResNet (float ONNX)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "runtime" / "native" / "python"))

from qfsdk_native import Library  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * PAGE / 2**20, 2)


def measure(lib: Library, model: Path, calls: int, warmup: int, threads: int) -> dict:
    start = rss_mib()
    with lib.embedder(model, num_threads=threads) as emb:
        crop = np.random.default_rng(0).integers(0, 256, (*emb.input_size, 3), dtype=np.uint8)
        out = np.empty(emb.embedding_size, np.float32)
        u8p, f32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float)
        args = (emb.handle, crop.ctypes.data_as(u8p), 1, crop.shape[0], crop.shape[1], out.ctypes.data_as(f32p), out.size)
        embed = lib.c.qfsdk_embed_aligned
        for _ in range(warmup):
            lib.check(embed(*args), emb.handle)
        warm = rss_mib()
        samples, began = {}, time.perf_counter()
        for i in range(1, calls + 1):
            status = embed(*args)
            if status:
                lib.check(status, emb.handle)
            if i % max(1, calls // 10) == 0:
                samples[str(i)] = rss_mib()
        seconds = time.perf_counter() - began
    end = rss_mib()
    return {
        "model": model.name, "input_size": list(emb.input_size), "calls": calls, "ms_per_call": round(1e3 * seconds / calls, 3),
        "rss_mib": {"start": start, "after_warmup": warm, "during_calls": samples, "after_calls": samples[str(calls)],
                    "after_destroy": end},
        "growth_after_warmup_mib": round(samples[str(calls)] - warm, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", default=REPO / "build" / "native" / "libqfsdk.so", type=Path)
    parser.add_argument("--calls", type=int, default=10_000, help="embed calls on the tiny model")
    parser.add_argument("--dlib-calls", type=int, default=0, help="embed calls on the dlib ResNet (0: skip)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.lib.is_file():
        sys.exit(f"native_rss: {args.lib} not found; run `make native` first")
    from test_native import TINY_CONTRACT, tiny_onnx

    lib = Library(args.lib)
    report = {"library": str(args.lib), "threads": args.threads, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = [(tiny_onnx(Path(tmp) / "tiny.onnx", TINY_CONTRACT), args.calls)]
        if args.dlib_calls:
            from qfsdk.converters.onnx_export import export_float
            from qfsdk.models import create, get_spec

            path = export_float(create("dlib_resnet"), Path(tmp) / "dlib_resnet_fp32.onnx", get_spec("dlib_resnet").contract, "dlib_resnet")
            models.append((path, args.dlib_calls))
        for model, calls in models:
            report["runs"].append(measure(lib, model, calls, args.warmup, args.threads))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
