"""Peer W8A8 quantizers on two real trained face embedders, calibrated and scored on real aligned faces.

Install the peers in a venv of their own (ModelOpt pins its own onnx and pulls onnxruntime-gpu, which
must not reach the project's venv), then run from the repository root:

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0
    /work/bench-venv/bin/pip install -e '.[dev,openvino,bench]'
    # ModelOpt's onnxruntime-gpu and onnxruntime share one folder: keep the CPU build only
    /work/bench-venv/bin/pip uninstall -y onnxruntime-gpu onnxruntime && /work/bench-venv/bin/pip install onnxruntime
    /work/bench-venv/bin/python benchmarks/peers.py [--models sface fr_feature]
        [--tools onnxruntime modelopt nncf] [--score-sets A B] [--threads 2] [--out DIR]

Prints one JSON document. The models are OpenCV's SFace and faceplugin's MobileFaceNet
(``fr_feature``), the crops YuNet-aligned real faces from registry photos in two sets cut from
different photos (tests/crop_sets.py): every tool calibrates on set A's calibration half, and all are
scored on each of ``--score-sets``: A's other half and all of B. Per model, (tool, method) and
scoring set: the minimum and mean cosine, over its crops, of the quantized model's
embedding vs the source float model's, both run on ONNX Runtime CPU one image at a time (the two
graphs have batch 1), the same quantized file on OpenVINO CPU (``openvino_*``, where it is
installed), and the seconds the tool's call took (its imports included, in a fresh process). Every tool starts from the same float graph, normalised only as far as all of them need
(weights out of the input list, opset 13), and then follows its own documented path:

* ``onnxruntime``: ``quant_pre_process``, then ``quantize_static``: QDQ, per-channel S8S8, MinMax or
  Percentile (its default 99.999), and the same with U8 activations and zero points (``_u8``: U8S8);
* ``modelopt``: ``modelopt.onnx.quantization.quantize``, int8, ``max`` or ``entropy`` calibration on
  the CPU execution provider; fp32 outside the Q/DQ pairs (its fp16 default is for TensorRT and
  would add fp16 error on ONNX Runtime CPU);
* ``nncf``: ``nncf.quantize`` on the ONNX model, preset ``performance`` or ``mixed``, every
  calibration crop in its subset;
* ``qfsdk``: no real face at all: ``qfsdk import``, 64 synthetic images made from the model itself
  (``auto`` inversion, made once per model and kept in ``.cache/ptq-recipes``, shared with
  ``ptq_recipes.py``: the first recipe's seconds include them), W8A8 PTQ with
  percentile ranges and the recipe named (``ranges``, ``ranges+bias_correction``,
  ``equalize+ranges+bias_correction``: ``qfsdk calibrate``'s W8A8 default, equalization by weights;
  ``equalize:by=activations+ranges+bias_correction``; ``...@asymmetric``: the default recipe with
  ``--asymmetric-acts``, zero-point activations over their min/max, for the CPU backends), the default
  export (TensorRT-ready for symmetric activations, OpenVINO/ONNX Runtime for asymmetric ones). It
  needs no peer package: ``--tools qfsdk onnxruntime`` runs in the project's venv.

A tool is a function ``(job, method) -> quantized ONNX path`` in ``TOOLS``, run in a process of its
own (ModelOpt patches ONNX Runtime's quantization modules); a tool that is missing or fails gives its
rows an ``error``. ``table`` sums up one row per model; ``verdict``, per model and scoring set, says
whether qfsdk's default (``equalize+ranges+bias_correction``) has a higher minimum cosine (ONNX Runtime)
than every peer row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as ort_quant

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # real_models: registry models and crops
sys.path.insert(0, str(Path(__file__).resolve().parent))  # ptq_recipes: the synthetic sets, made once

from crop_sets import SETS, scoring_crops  # noqa: E402
from real_models import REAL_MODELS, RealModel, crop_halves  # noqa: E402

PEER_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear
QFSDK_DEFAULT = "equalize+ranges+bias_correction"


@dataclass(frozen=True)
class Job:
    """One model to quantize: its contract and source file (what a data-free tool needs), the normalised
    float graph every peer starts from, its input's name, the calibration inputs and a work folder."""

    model: RealModel
    source: Path
    normalised: Path
    input_name: str
    calibration: list[np.ndarray]  # each the model's (1, 3, 112, 112) float32 input
    folder: Path

    def output(self, tool: str, method: str) -> Path:
        return self.folder / f"{self.model.name}_{tool}_{method}.onnx"


def normalise(source: Path, out: Path) -> Path:
    """The source graph as every peer takes it: initializers out of the input list, opset >= 13."""
    model = onnx.load(source)
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < PEER_OPSET:
        model = onnx.version_converter.convert_version(model, PEER_OPSET)
    onnx.checker.check_model(model)
    onnx.save(model, out)
    return out


class _Feeds(ort_quant.CalibrationDataReader):
    """ONNX Runtime's calibration reader over single-image inputs."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._feeds = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnxruntime(job: Job, method: str) -> Path:
    """``quant_pre_process`` + ``quantize_static`` (QDQ, per-channel int8 weights) with MinMax or Percentile;
    activations S8 (symmetric), or U8 with a zero point for ``METHOD_u8`` (U8S8, asymmetric)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ready = job.folder / f"{job.model.name}_onnxruntime_pre.onnx"
    quant_pre_process(str(job.normalised), str(ready))
    calibrate = {"minmax": ort_quant.CalibrationMethod.MinMax, "percentile": ort_quant.CalibrationMethod.Percentile}
    name, _, form = method.partition("_")
    activations = ort_quant.QuantType.QUInt8 if form == "u8" else ort_quant.QuantType.QInt8
    out = job.output("onnxruntime", method)
    ort_quant.quantize_static(str(ready), str(out), _Feeds(job.input_name, job.calibration),
                              quant_format=ort_quant.QuantFormat.QDQ, per_channel=True,
                              activation_type=activations, weight_type=ort_quant.QuantType.QInt8,
                              calibrate_method=calibrate[name])  # fmt: skip
    return out


def quantize_modelopt(job: Job, method: str) -> Path:
    """NVIDIA ModelOpt ONNX PTQ, int8, ``max`` or ``entropy`` calibration on the CPU."""
    from modelopt.onnx.quantization import quantize

    out = job.output("modelopt", method)
    quantize(str(job.normalised), quantize_mode="int8", calibration_data=np.concatenate(job.calibration),
             calibration_method=method, calibration_eps=["cpu"], high_precision_dtype="fp32",
             output_path=str(out), log_level="ERROR")  # fmt: skip
    return out


def quantize_nncf(job: Job, method: str) -> Path:
    """``nncf.quantize`` on the ONNX model with preset ``performance`` or ``mixed``."""
    import nncf

    name = job.input_name
    dataset = nncf.Dataset(job.calibration, lambda x: {name: x})
    quantized = nncf.quantize(onnx.load(job.normalised), dataset, preset=nncf.QuantizationPreset(method),
                              subset_size=len(job.calibration))  # fmt: skip
    out = job.output("nncf", method)
    onnx.save(quantized, out)
    return out


QFSDK_WORK = Path(__file__).resolve().parents[1] / ".cache" / "ptq-recipes"  # imports and synthetic sets, shared with ptq_recipes.py


def quantize_qfsdk(job: Job, recipe: str) -> Path:
    """qfsdk with NO real face: ``qfsdk import``, synthetic images made from the model itself (once per
    model, reused by every recipe), PTQ with ``recipe`` (``qfsdk calibrate --recipe`` steps joined by
    ``+``; ``RECIPE@asymmetric``: with ``asymmetric_acts``, zero-point activations over their min/max),
    the default export. ``job.calibration`` (the real faces) is never read."""
    import copy

    import qfsdk
    from qfsdk.calib.sources import open_source
    from qfsdk.converters import export_quantized
    from qfsdk.converters.onnx_import import ImportOptions, import_onnx
    from qfsdk.models import create
    from qfsdk.quant.config import preset

    from ptq_recipes import synthetic_images

    QFSDK_WORK.mkdir(parents=True, exist_ok=True)
    imported = QFSDK_WORK / f"{job.model.name}_float.onnx"
    if not imported.is_file():
        mean, std = (job.model.mean,) * 3, (job.model.std,) * 3
        import_onnx(job.source, imported, ImportOptions(mean=mean, std=std))
    model = create(str(imported))
    data, _ = open_source(synthetic_images(str(imported), QFSDK_WORK / f"{job.model.name}_synthetic"), model)
    steps, _, acts = recipe.partition("@")
    config = preset("w8a8", asymmetric_acts=acts == "asymmetric")
    quantized = qfsdk.quantize(copy.deepcopy(model), qfsdk.Recipe.create(config, steps=steps.replace("+", ",")), data)
    return export_quantized(quantized, job.output("qfsdk", recipe))


Quantizer = Callable[[Job, str], Path]
TOOLS: dict[str, tuple[Quantizer, tuple[str, ...]]] = {
    "qfsdk": (quantize_qfsdk, ("ranges", "ranges+bias_correction", QFSDK_DEFAULT,
                               "equalize:by=activations+ranges+bias_correction", "equalize+ranges+bias_correction@asymmetric")),
    "onnxruntime": (quantize_onnxruntime, ("minmax", "percentile", "minmax_u8", "percentile_u8")),
    "modelopt": (quantize_modelopt, ("max", "entropy")),
    "nncf": (quantize_nncf, ("performance", "mixed")),
}


def embeddings(path: Path, inputs: list[np.ndarray], threads: int) -> np.ndarray:
    """The model's outputs for ``inputs`` on ONNX Runtime CPU, one image a run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in inputs])


def openvino_fidelity(path: Path, scoring: list[np.ndarray], reference: np.ndarray) -> dict[str, float]:
    """:func:`fidelity` of the same file on OpenVINO CPU (the embedded default); empty without openvino."""
    try:
        import openvino
    except ImportError:
        return {}
    compiled = openvino.Core().compile_model(str(path), "CPU")
    cos = cosines(np.concatenate([compiled(x)[0] for x in scoring]), reference)
    return {"openvino_min_cosine": round(float(cos.min()), 6), "openvino_mean_cosine": round(float(cos.mean()), 6)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def fidelity(path: Path, scoring: list[np.ndarray], reference: np.ndarray, threads: int) -> dict[str, float]:
    """Minimum and mean cosine of ``path``'s embeddings vs ``reference``."""
    cos = cosines(embeddings(path, scoring, threads), reference)
    return {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}


def set_scores(path: Path, scoring: dict[str, list[np.ndarray]], references: dict[str, np.ndarray],
               threads: int) -> dict[str, dict[str, float]]:
    """{scoring set: :func:`fidelity` and :func:`openvino_fidelity` of ``path`` on its inputs}."""
    return {name: {**fidelity(path, inputs, references[name], threads), **openvino_fidelity(path, inputs, references[name])}
            for name, inputs in scoring.items()}  # fmt: skip


def qdq_count(path: Path) -> int:
    """QuantizeLinear nodes in an ONNX file."""
    return sum(node.op_type == "QuantizeLinear" for node in onnx.load(path).graph.node)


def run_tool(job: Job, tool: str, method: str, scoring: dict[str, list[np.ndarray]], references: dict[str, np.ndarray],
             threads: int) -> dict[str, Any]:
    """One (tool, method) row: seconds, fidelity on ONNX Runtime and OpenVINO per scoring set, QuantizeLinear
    count, or the error it raised."""
    try:
        path, seconds = run_isolated(job, tool, method)
    except Exception as exc:  # a peer that is missing or fails is a result, not the end of the run
        return {"tool": tool, "method": method, "error": f"{type(exc).__name__}: {str(exc).strip()[-300:]}"}
    return {"tool": tool, "method": method, "seconds": round(seconds, 1),
            **set_scores(path, scoring, references, threads), "quantize_linear_nodes": qdq_count(path)}


def run_isolated(job: Job, tool: str, method: str) -> tuple[Path, float]:
    """(quantized path, seconds) of one tool run in a fresh process: ModelOpt patches ONNX Runtime's
    quantization modules for good, which breaks ``quantize_static`` in the same process afterwards."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_quantize_timed, job, tool, method).result()


def _quantize_timed(job: Job, tool: str, method: str) -> tuple[Path, float]:
    """Run one tool, its progress output sent to stderr (stdout is the JSON)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        path = TOOLS[tool][0](job, method)
    return path, time.perf_counter() - start


def bench_model(model: RealModel, calibration: list[np.ndarray], scoring: dict[str, list[np.ndarray]],
                args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every requested (tool, method) on ``model``, scored on each set against the source float model."""
    source = model.onnx()
    normalised = normalise(source, folder / f"{model.name}_normalised.onnx")
    job = Job(model, source, normalised, onnx.load(normalised).graph.input[0].name,
              [model.inputs(c) for c in calibration], folder)
    inputs = {name: [model.inputs(c) for c in crops] for name, crops in scoring.items()}
    references = {name: embeddings(source, x, args.threads) for name, x in inputs.items()}
    rows = [run_tool(job, tool, method, inputs, references, args.threads)
            for tool in args.tools for method in TOOLS[tool][1]]  # fmt: skip
    return {"normalised_vs_source": set_scores(job.normalised, inputs, references, args.threads), "rows": rows}


def table_row(rows: list[dict[str, Any]], sets: list[str]) -> dict[str, str]:
    """One model's summary: ``"tool method": "A min / mean cosine, B min / mean (seconds)"``."""
    return {f"{r['tool']} {r['method']}": "error" if "error" in r else
            ", ".join(f"{s} {r[s]['min_cosine']:.3f} / {r[s]['mean_cosine']:.3f}" for s in sets) + f" ({r['seconds']} s)"
            for r in rows}  # fmt: skip


def verdict(rows: list[dict[str, Any]], sets: list[str]) -> dict[str, dict[str, Any]]:
    """Per scoring set: qfsdk's default's minimum cosine, the best peer row's, and whether qfsdk's is higher."""
    scored = [r for r in rows if "error" not in r]
    default = next((r for r in scored if (r["tool"], r["method"]) == ("qfsdk", QFSDK_DEFAULT)), None)
    peers = [r for r in scored if r["tool"] != "qfsdk"]
    if default is None or not peers:
        return {}
    result = {}
    for s in sets:
        best = max(peers, key=lambda r: r[s]["min_cosine"])
        qfsdk, peer = default[s]["min_cosine"], best[s]["min_cosine"]
        result[s] = {"qfsdk": qfsdk, "best_peer": f"{best['tool']} {best['method']}", "best_peer_min_cosine": peer,
                     "qfsdk_beats_every_peer": qfsdk > peer}
    return result


def versions(tools: list[str]) -> dict[str, str]:
    """Installed versions of onnx, onnxruntime and the requested peers' packages."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {"onnx": "onnx", "onnxruntime": "onnxruntime", "modelopt": "nvidia-modelopt", "nncf": "nncf", "qfsdk": "qfsdk"}
    found = {}
    for key in ("onnx", "onnxruntime", *tools):
        try:
            found[packages[key]] = version(packages[key])
        except PackageNotFoundError:
            found[packages[key]] = "missing"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(REAL_MODELS), default=["sface", "fr_feature"])
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--score-sets", nargs="+", choices=SETS, default=list(SETS),
                        help="Real crop sets to score on: A's scoring half and/or all of B (tests/crop_sets.py).")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for scoring.")
    parser.add_argument("--out", type=Path, help="Keep the ONNX files here (default: a temporary folder).")
    args = parser.parse_args()
    calibration = crop_halves()[0]
    scoring = {name: scoring_crops(name) for name in args.score_sets}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        models = {name: bench_model(REAL_MODELS[name], [c for _, c in calibration],
                                    {s: [c for _, c in crops] for s, crops in scoring.items()}, args, folder)
                  for name in args.models}  # fmt: skip
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "versions": versions(args.tools),
        "crops": {"calibration": [n for n, _ in calibration],
                  "scoring": {s: [n for n, _ in crops] for s, crops in scoring.items()}},
        "models": models,
        "table": {name: table_row(result["rows"], args.score_sets) for name, result in models.items()},
        "verdict": {name: verdict(result["rows"], args.score_sets) for name, result in models.items()},
    }
    print(json.dumps(report, indent=2))



if __name__ == "__main__":
    main()
