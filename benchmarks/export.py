"""ONNX Q/DQ export: parity with the PyTorch quantized model, file size, TensorRT-readiness.

For each model and preset: calibrate (minmax) on the probe inputs, export with the default
target (tensorrt), run it with ONNX Runtime, and compare with the PyTorch fake-quant model, plainly
and forced onto ONNX Runtime's values at every quantizer (``qfsdk.converters.parity``): the forced
cosine shows the export's exactness, the codes that differ how many rounding ties float32 summation
order flipped. Prints one JSON document.

    python benchmarks/export.py [--models dlib_resnet,mobilefacenet,iresnet18,iresnet50]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import qfsdk  # noqa: E402
from qfsdk.converters import export_quantized  # noqa: E402
from qfsdk.converters.graph_check import check_model  # noqa: E402
from qfsdk.converters.onnx_export import export_float  # noqa: E402
from qfsdk.converters.parity import export_parity  # noqa: E402
from qfsdk.models import create  # noqa: E402


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def probes(model: torch.nn.Module) -> tuple[torch.Tensor, str]:
    if model.arch == "dlib_resnet":
        from face_photos import face_chips

        return torch.from_numpy(model.contract.preprocess(np.stack(face_chips()))), "12 real face chips"
    return torch.randn(8, 3, *model.contract.input_size, generator=torch.Generator().manual_seed(1)), "8 noise images"


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


def measure(arch: str, presets: list[str], work: Path) -> dict:
    torch.manual_seed(0)
    model = create(arch)
    x, probe_text = probes(model)
    float_path = export_float(model, work / f"{arch}_fp32.onnx", model.contract, arch)
    with torch.no_grad():
        float_cos = cosines(model(x).numpy(), run_ort(float_path, x))
    result = {"probes": probe_text, "weights": "pretrained" if arch == "dlib_resnet" else "seeded random",
              "fp32": {"min_cosine_ort_vs_torch": round(float(float_cos.min()), 7), "mb": round(float_path.stat().st_size / 1e6, 2)}}
    for preset in presets:
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), preset), x, method="minmax")
        start = time.time()
        path = export_quantized(quantized, work / f"{arch}_{preset}.onnx")
        seconds = time.time() - start
        parity = export_parity(quantized, path, x)
        with torch.no_grad():
            vs_float = cosines(quantized(x).numpy(), model(x).numpy())
        result[preset] = {
            **parity.details(),
            "min_cosine_vs_float_model": round(float(vs_float.min()), 5),
            "size_vs_fp32": round(path.stat().st_size / float_path.stat().st_size, 4),
            "check_violations": len(check_model(path)),
            "export_seconds": round(seconds, 2),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="dlib_resnet,mobilefacenet,iresnet18,iresnet50")
    parser.add_argument("--presets", default="w8a8,w6a6,w4a4")
    args = parser.parse_args()
    report = {"benchmark": "export", "target": "tensorrt", "onnxruntime": ort.__version__, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models.split(","):
            report[arch] = measure(arch, args.presets.split(","), Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
