"""ONNX Q/DQ export parity on two real trained face embedders (OpenCV SFace, faceplugin fr_feature).

benchmarks/export.py measures export exactness on the zoo (seeded random weights but dlib); this is
the same report on trained MobileFaceNet-class graphs brought in with ``qfsdk import``, scored on
real ArcFace-aligned crops (tests/real_models.py: models and photos fetched from their registries).
For each model: ``import_onnx`` with the model's contract, N synthetic images made from the imported
model itself (``auto`` inversion, no real face; made once per model and shared by the presets),
then per preset: PTQ (percentile ranges, as ``qfsdk calibrate`` defaults to), the default
(tensorrt) export, and ``export_parity`` on every real crop: ONNX Runtime vs the PyTorch fake-quant
model plainly (limited by float32 summation order flipping rounding ties) and forced onto ONNX
Runtime's values at every activation quantizer (the export's exactness), with the codes that differ
and how far the furthest of them sits from a tie. Prints one JSON document.

ONNX Runtime (1.32 here) rounds the float bias of a Conv fed by DequantizeLinear inputs and weights to
int32 at input scale x weight scale (its ``WeightBiasQuantization`` graph transform), which PyTorch
does not model. The folded-BatchNorm depthwise convs of these models have weight scales large enough
for that rounding to move the next quantizer's input by a few hundredths of a step, so each preset
is also reported with that one transform disabled (``without_bias_quantization``): what is left
there is the export itself.

    python benchmarks/export_real.py [--models sface,fr_feature] [--presets w8a8,w6a6] [--num-images 64]
        [--synthetic-dir DIR]   # keep the imports and synthetic datasets there; a complete dataset is reused
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # real_models: registry models and crops

import qfsdk  # noqa: E402
from export import cosines  # noqa: E402
from qfsdk.calib.sources import open_source  # noqa: E402
from qfsdk.calib.synth import synthesize  # noqa: E402
from qfsdk.converters import export_quantized  # noqa: E402
from qfsdk.converters.graph_check import check_model  # noqa: E402
from qfsdk.converters.onnx_import import ImportOptions, import_onnx  # noqa: E402
from qfsdk.converters.parity import BIAS_QUANTIZATION, export_parity  # noqa: E402
from qfsdk.models import create  # noqa: E402
from real_models import REAL_MODELS, RealModel, arcface_crops  # noqa: E402

METHOD = "percentile"  # `qfsdk calibrate`'s default range observer
TARGET = "tensorrt"
def measure(real: RealModel, presets: list[str], num_images: int, crops: np.ndarray, work: Path, synthetic_root: Path) -> dict:
    synthetic_root.mkdir(parents=True, exist_ok=True)  # the import sits beside its dataset, which names it
    options = ImportOptions(mean=(real.mean,) * 3, std=(real.std,) * 3)
    imported = import_onnx(real.onnx(), synthetic_root / f"{real.name}.onnx", options)
    model = create(str(imported.path))
    x = torch.from_numpy(model.contract.preprocess(crops))
    before = synthetic_root / real.name / "manifest.json"  # a complete dataset of the same settings is reused as it is
    reused = before.is_file() and bool(json.loads(before.read_text()).get("complete"))
    start = time.time()
    synthetic = synthesize(str(imported.path), synthetic_root / real.name, num_images, seed=0, progress=False)
    synth_seconds = time.time() - start
    manifest = json.loads((synthetic / "manifest.json").read_text())
    data, description = open_source(synthetic, model)
    with torch.no_grad():
        float_out = model(x).numpy()
    result = {
        "source": real.onnx().name,
        "import": {"architecture": imported.architecture, "opset": f"{imported.source_opset} -> {imported.opset}",
                   "rewritten_reshapes": imported.rewritten_reshapes, "min_cosine_vs_source": imported.min_cosine},
        "calibration": {"data": description, "method": manifest["settings"].get("resolved_method", manifest["settings"].get("method")),
                        "seconds": round(synth_seconds, 1), "reused_dataset": reused},
    }  # fmt: skip
    for preset in presets:
        start = time.time()
        quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), preset), data, method=METHOD)
        calib_seconds = time.time() - start
        start = time.time()
        path = export_quantized(quantized, work / f"{real.name}_{preset}.onnx", target=TARGET)
        export_seconds = time.time() - start
        parity = export_parity(quantized, path, x)
        exact = export_parity(quantized, path, x, disabled_optimizers=[BIAS_QUANTIZATION])
        with torch.no_grad():
            vs_float = cosines(quantized(x).numpy(), float_out)
        result[preset] = {
            **parity.details(),
            "without_bias_quantization": exact.details(),
            "min_cosine_vs_float_model": round(float(vs_float.min()), 5),
            "check_violations": len(check_model(path)),
            "calibrate_seconds": round(calib_seconds, 1),
            "export_seconds": round(export_seconds, 1),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sface,fr_feature", help=f"comma-separated, of {', '.join(REAL_MODELS)}")
    parser.add_argument("--presets", default="w8a8,w6a6")
    parser.add_argument("--num-images", type=int, default=64, help="synthetic calibration images per model")
    parser.add_argument("--synthetic-dir", type=Path, help="keep the imports and synthetic datasets here (default: a temporary folder)")
    args = parser.parse_args()
    crops = np.stack([crop for _, crop in arcface_crops()])
    report = {"benchmark": "export_real", "target": TARGET, "calibration_method": METHOD, "probes": f"{len(crops)} real aligned crops",
              "onnxruntime": ort.__version__, "torch": torch.__version__}  # fmt: skip
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_root = args.synthetic_dir or Path(tmp) / "synthetic"
        for name in args.models.split(","):
            report[name] = measure(REAL_MODELS[name], args.presets.split(","), args.num_images, crops, Path(tmp), synthetic_root)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
