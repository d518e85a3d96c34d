"""CPU backends: ONNX Runtime fp32, ONNX Runtime's own int8 (the peer tool) and qfsdk W8A8.

    .venv/bin/python benchmarks/cpu_backends.py [--models iresnet50 mobilefacenet dlib_resnet]
        [--batch-sizes 1 16] [--repeats 10] [--threads 2] [--out DIR]

Prints one JSON document. Per model and batch size: median and p90 latency of one backend call on
a preprocessed batch (after warm-up) and images/s, for

* ``fp32``: the float ONNX (qfsdk.converters.onnx_export.export_float);
* ``peer_int8``: ``onnxruntime.quantization.quantize_static`` of that ONNX, per-channel S8S8 QDQ,
  MinMax, calibrated on the same images as qfsdk;
* ``qfsdk_w8a8``: ``qfsdk.quantize(model, {"preset": "w8a8", "scheme": S})`` + ``qfsdk.calibrate``
  exported by ``qfsdk.converters.export_quantized`` for each backend's target, with the placement
  scheme made for it (``BACKEND_SCHEMES``); ``qfsdk_w8a8_asymmetric``: the same with
  ``asymmetric_acts`` (zero-point activations, min/max ranges), what zero points cost in speed,

the fp32 and peer files each on ONNX Runtime and OpenVINO. iresnet50 and MobileFaceNet have seeded
random weights (none ship in a package) and see seeded uniform noise (calibration and evaluation
sets differ); dlib_resnet has its packaged weights and sees the registry's real face chips. Every
row carries the minimum cosine of its embeddings vs the float PyTorch model; qfsdk rows also vs
their own fake-quant PyTorch model. ``summary`` gives qfsdk's best CPU backend at the largest batch against ONNX Runtime
fp32 and the peer int8 on ONNX Runtime, all measured in this run, and the ceilings: the speed-ups
qfsdk W8A8 would have if everything but OpenVINO's convolution and fully connected kernels took no
time (their share of OpenVINO's per-layer counters times its measured latency), which no Q/DQ
placement or fusion can beat on this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import qfsdk
from qfsdk.converters import export_quantized
from qfsdk.converters.onnx_export import export_float
from qfsdk.models import create
from qfsdk.runtime.backends import open_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # face_photos: registry face chips

BACKENDS = ("onnxruntime", "openvino")
# OpenVINO runs the TensorRT placement as fast as any (conv-output quantizers change nothing there);
# ONNX Runtime's CPU kernels run a conv in int8 only where its output is quantized too.
BACKEND_SCHEMES = {"onnxruntime": "onnxruntime", "openvino": "tensorrt"}
PRETRAINED = ("dlib_resnet",)  # its weights ship in a package; the others start from seeded random weights
SEED = 0


def noise_batch(contract, count: int, seed: int) -> np.ndarray:
    """Seeded uniform-noise crops, preprocessed to the model's float32 NCHW input."""
    crops = np.random.default_rng(seed).integers(0, 256, (count, *contract.input_size, 3), dtype=np.uint8)
    return contract.preprocess(crops)


def inputs(model: torch.nn.Module, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration, evaluation) batches: real face chips for a pretrained model, else seeded noise."""
    if model.arch in PRETRAINED:
        from face_photos import face_chips

        chips = model.contract.preprocess(np.stack(face_chips()))
        return chips, chips, f"{len(chips)} real face chips (calibration and evaluation)"
    contract = model.contract
    return noise_batch(contract, args.calib_images, SEED), noise_batch(contract, args.eval_images, SEED + 1), "seeded uniform noise"


def peer_int8(fp32: Path, path: Path, calibration: np.ndarray) -> Path:
    """ONNX Runtime's quantize_static: per-channel S8S8 QDQ, MinMax."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    q.quantize_static(str(fp32), str(path), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)
    return path


def qfsdk_w8a8(float_model: torch.nn.Module, calibration: np.ndarray, scheme: str, asymmetric: bool = False) -> torch.nn.Module:
    model = qfsdk.quantize(copy.deepcopy(float_model), {"preset": "w8a8", "scheme": scheme, "asymmetric_acts": asymmetric})
    qfsdk.calibrate(model, torch.from_numpy(calibration))
    return model


def torch_embeddings(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(batch)).numpy()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()), 6)


def timed(run: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, float]:
    """(p50, p90) seconds of ``run``."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    p50, p90 = np.percentile(times, [50, 90])
    return float(p50), float(p90)


def bench_artifact(path: Path, backend_name: str, eval_batch: np.ndarray, references: dict[str, np.ndarray],
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    """Latency rows of one ONNX file on one backend, with its fidelity (or one row with its error)."""
    try:
        backend = open_backend(path, backend_name, threads=args.threads)
    except RuntimeError as exc:  # e.g. the backend has no kernel for a node
        return [{"backend": backend_name, "error": str(exc).strip().splitlines()[-1]}]
    try:
        out = np.concatenate([backend.run(eval_batch[i : i + 1]) for i in range(len(eval_batch))])
        fidelity = {f"cosine_vs_{name}": min_cosine(out, ref) for name, ref in references.items()}
        rows = []
        for batch_size in args.batch_sizes:
            batch = np.resize(eval_batch, (batch_size, *eval_batch.shape[1:]))
            p50, p90 = timed(lambda batch=batch: backend.run(batch), args.repeats, args.warmup)
            rows.append({"backend": backend_name, "batch_size": batch_size, "p50_ms": round(p50 * 1e3, 2),
                         "p90_ms": round(p90 * 1e3, 2), "images_per_s": round(batch_size / p50, 1), **fidelity})
        return rows
    finally:
        backend.close()


def openvino_kernel_share(path: Path, batch: np.ndarray, args: argparse.Namespace) -> float:
    """Median share of OpenVINO's per-layer time spent in convolution and fully connected kernels
    for one call on ``batch`` (a share, since the counters' own overhead inflates every layer)."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True,
              "INFERENCE_PRECISION_HINT": "f32"}
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    shares = []
    for i in range(args.warmup + args.repeats):
        request.infer({0: batch})
        if i >= args.warmup:
            layers = [(p.node_type, p.real_time.total_seconds()) for p in request.profiling_info]
            kernels = sum(t for kind, t in layers if kind in ("Convolution", "GroupConvolution") or kind.startswith("FullyConnected"))
            shares.append(kernels / sum(t for _, t in layers))
    return float(np.median(shares))


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    torch.manual_seed(SEED)
    float_model = create(name)
    calibration, eval_batch, images = inputs(float_model, args)
    contract = float_model.contract
    fp32 = export_float(float_model, folder / f"{name}_fp32.onnx", contract, name)
    quantized = {b: qfsdk_w8a8(float_model, calibration, BACKEND_SCHEMES[b]) for b in BACKENDS}
    asymmetric = {b: qfsdk_w8a8(float_model, calibration, BACKEND_SCHEMES[b], asymmetric=True) for b in BACKENDS}
    artifacts: dict[str, dict[str, Path]] = {
        "fp32": {b: fp32 for b in BACKENDS},
        "peer_int8": dict.fromkeys(BACKENDS, peer_int8(fp32, folder / f"{name}_ort_int8.onnx", calibration)),
        "qfsdk_w8a8": {b: export_quantized(quantized[b], folder / f"{name}_w8a8_{b}.onnx", target=b) for b in BACKENDS},
        "qfsdk_w8a8_asymmetric": {b: export_quantized(asymmetric[b], folder / f"{name}_w8a8_asym_{b}.onnx", target=b)
                                  for b in BACKENDS},
    }
    float_reference = torch_embeddings(float_model, eval_batch)
    rows = []
    for artifact, per_backend in artifacts.items():
        for backend, path in per_backend.items():
            references = {"float": float_reference}
            if artifact.startswith("qfsdk_w8a8"):
                fake_quant = (asymmetric if artifact.endswith("asymmetric") else quantized)[backend]
                references["fakequant"] = torch_embeddings(fake_quant, eval_batch)
            rows += [{"artifact": artifact, **row} for row in bench_artifact(path, backend, eval_batch, references, args)]
    batch_size = max(args.batch_sizes)
    share = None
    if not any("error" in r for r in rows if r["backend"] == "openvino"):
        batch = np.resize(eval_batch, (batch_size, *eval_batch.shape[1:]))
        share = openvino_kernel_share(artifacts["qfsdk_w8a8"]["openvino"], batch, args)
    return {"weights": "pretrained" if name in PRETRAINED else "seeded random", "images": images,
            "rows": rows, "summary": summary(rows, batch_size, share)}


def summary(rows: list[dict[str, Any]], batch_size: int, openvino_share: float | None) -> dict[str, Any]:
    """qfsdk W8A8 on its best backend vs ONNX Runtime fp32 and the peer int8 on ONNX Runtime, and the
    ceilings from the share of OpenVINO's time in its conv kernels (if OpenVINO ran)."""
    at = {(r["artifact"], r["backend"]): r for r in rows if r.get("batch_size") == batch_size}
    best = max((r for r in at.values() if r["artifact"] == "qfsdk_w8a8"), key=lambda r: r["images_per_s"], default=None)
    if best is None or ("fp32", "onnxruntime") not in at or ("peer_int8", "onnxruntime") not in at:
        return {"skipped": "a row it needs failed"}
    fp32, peer = at[("fp32", "onnxruntime")]["images_per_s"], at[("peer_int8", "onnxruntime")]["images_per_s"]
    result = {
        "batch_size": batch_size,
        "qfsdk_best_backend": best["backend"],
        "qfsdk_images_per_s": best["images_per_s"],
        "x_vs_ort_fp32": round(best["images_per_s"] / fp32, 2),
        "x_vs_peer_int8_ort": round(best["images_per_s"] / peer, 2),
        "min_cosine_vs_fakequant": min(r["cosine_vs_fakequant"] for r in at.values() if r["artifact"] == "qfsdk_w8a8"),
    }
    if openvino_share is not None:
        kernels_only = at[("qfsdk_w8a8", "openvino")]["images_per_s"] / openvino_share  # images/s if nothing else took time
        result.update({
            "openvino_conv_kernel_share": round(openvino_share, 3),
            "ceiling_x_vs_ort_fp32": round(kernels_only / fp32, 2),
            "ceiling_x_vs_peer_int8_ort": round(kernels_only / peer, 2),
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["iresnet50", "mobilefacenet"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument("--out", type=Path, help="Keep the ONNX files here (default: a temporary folder).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "models": {name: bench_model(name, args, folder) for name in args.models},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
