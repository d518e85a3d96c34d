#!/usr/bin/env bash
# GPU check, from a copy of this repo on a machine with an NVIDIA GPU (no network, no install):
#   bash scripts/gpu_check.sh [WORKDIR]
# 1. puts qfsdk on PYTHONPATH through a symlink shim (qfsdk.runtime/calib/converters -> their folders);
# 2. runs the GPU-marked tests;
# 3. exports a seeded iresnet50 as float and W8A8 Q/DQ ONNX, checks ONNX Runtime against the fake-quant model;
# 4. with TensorRT: builds int8 (strongly typed), fp16 and fp32 engines, compares each with ONNX Runtime
#    on the same ONNX (int8 must reach cosine >= 0.999) and times them at batch 1 and 32.
# Everything it cannot do is printed as "SKIPPED <what>: <why>". Exit 1 only if a check fails.
set -u
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK"
SHIM="$(mktemp -d)"
mkdir "$SHIM/qfsdk"
ln -s "$REPO"/qfsdk/* "$SHIM/qfsdk/"
for part in runtime calib converters; do ln -s "$REPO/$part" "$SHIM/qfsdk/$part"; done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
cd "$SHIM"  # not the repo root: there `qfsdk/` (without runtime/calib/converters) would shadow the shim
status=0

echo "== environment"
"$PY" - <<'PY'
from importlib import metadata

for dist in ("numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "cuda-bindings",
             "openvino", "click", "pytest", "pillow", "tqdm"):
    try:
        print(f"{dist}: {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"{dist}: not installed")
try:
    from qfsdk.runtime import cuda

    print("GPU:", *cuda.device_info())
except Exception as exc:
    print(f"SKIPPED GPU through cuda-python: {exc}")
PY

echo "== GPU-marked tests"
if "$PY" -c "import pytest" 2>/dev/null; then
    "$PY" -m pytest -q -m gpu -rs -p no:cacheprovider --continue-on-collection-errors \
        -c "$REPO/pyproject.toml" --rootdir "$REPO" "$REPO/tests" || status=1
else
    echo "SKIPPED GPU-marked tests: pytest not installed"
fi

echo "== W8A8 ONNX, ONNX Runtime and TensorRT engines (in $WORK)"
"$PY" - "$WORK" <<'PY' || status=1
import copy, importlib.util, sys, time
from pathlib import Path

import numpy as np

work = Path(sys.argv[1])
failed = []


def cosine(a, b):
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def p50_ms(backend, batch, repeats=50):
    for _ in range(5):
        backend.run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.run(batch)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


try:
    import torch

    import qfsdk
    from qfsdk.converters import export_quantized
    from qfsdk.converters.onnx_export import export_float
    from qfsdk.models import create
    from qfsdk.runtime.backends import open_backend
except Exception as exc:
    sys.exit(print(f"SKIPPED W8A8 ONNX and engines: {type(exc).__name__}: {exc}"))

torch.manual_seed(0)
model = create("iresnet50", pretrained=False)
contract = model.contract
rng = np.random.default_rng(0)
calibration, images = (contract.preprocess(rng.integers(0, 256, (32, 112, 112, 3), dtype=np.uint8)) for _ in range(2))
fp32 = export_float(model, work / "iresnet50_fp32.onnx", contract, "iresnet50")
quantized = qfsdk.quantize(copy.deepcopy(model), "w8a8")
qfsdk.calibrate(quantized, torch.from_numpy(calibration))
w8a8 = export_quantized(quantized, work / "iresnet50_w8a8.onnx", target="tensorrt")
with torch.no_grad():
    fake_quant = quantized.eval()(torch.from_numpy(images)).numpy()
ort = {path: open_backend(path, "onnxruntime").run(images) for path in (fp32, w8a8)}
print(f"ONNX Runtime W8A8 vs fake-quant PyTorch: cosine {cosine(ort[w8a8], fake_quant):.5f}")

if importlib.util.find_spec("tensorrt") is None:
    print("SKIPPED engine build, TensorRT vs ONNX Runtime, int8 vs fp16 timing: tensorrt: not installed")
else:
    from qfsdk.errors import QfsdkError
    from qfsdk.runtime.trt_build import build_engine

    plans = {"int8": (w8a8, False), "fp16": (fp32, True), "fp32": (fp32, False)}
    print(f"{'engine':8}{'cos vs ORT':>12}{'bs1 ms':>10}{'bs32 ms':>10}{'bs32 img/s':>12}")
    for name, (source, fp16) in plans.items():
        try:
            build_engine(source, work / f"{name}.engine", max_batch=32, fp16_fallback=fp16, timing_cache=work / "timing.cache")
        except QfsdkError as exc:
            print(f"SKIPPED {name} engine: {exc}")
            continue
        backend = open_backend(work / f"{name}.engine", "tensorrt")
        similarity = cosine(backend.run(images), ort[source])
        bs1, bs32 = p50_ms(backend, images[:1]), p50_ms(backend, images)
        print(f"{name:8}{similarity:12.5f}{bs1:10.3f}{bs32:10.3f}{32e3 / bs32:12.0f}")
        if name == "int8" and similarity < 0.999:
            failed.append(f"int8 engine vs ONNX Runtime cosine {similarity:.5f} < 0.999")
        backend.close()

if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
    print("SKIPPED ONNX Runtime CUDA provider: onnxruntime-gpu not installed")
sys.exit("FAILED " + "; ".join(failed) if failed else 0)
PY
echo "== gpu_check: $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
