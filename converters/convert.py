"""``qfsdk convert``'s pipeline: read a model, make it deployable for a target, export, verify.

Inputs are recognised by a small registry of readers (a qfsdk quantized checkpoint, a QuantFace
pickled model, or a float zoo model / checkpoint); each gives a ``Source``. The exported file is
checked (``qfsdk check`` rules for TensorRT) and compared with the source model under ONNX
Runtime before it is moved into place, so a failed conversion leaves no file behind.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from qfsdk.errors import QfsdkError
from qfsdk.eval.metrics import cosine_similarities
from qfsdk.models.card import card_of
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output
from qfsdk.runtime.placement import ZERO_POINTS_ON_TENSORRT, mismatch

from .graph_check import Violation, check_model
from .onnx_export import export_float
from .parity import ParityReport, export_parity
from .qdq_export import Target, default_target, export_quantized, get_target, is_symmetric, to_symmetric

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
QFSDK_CHECKPOINT = "qfsdk quantized checkpoint"


@dataclass
class Source:
    """A model read from the user's input, and what it is."""

    model: nn.Module
    architecture: str
    contract: FaceContract
    kind: str
    quantized: bool
    description: str


@dataclass
class ConvertOptions:
    target: str | None = None  # default: the one the model's placement scheme is for (see default_target)
    precision: str | None = None  # fp32/fp16: a float export
    model_name: str | None = None  # architecture of a float checkpoint
    recalibrate: str | None = None  # a RECALIBRATIONS name
    num_images: int = 32
    iterations: int | None = None
    probe_images: Path | None = None
    num_probes: int = 8
    opset: int = 17
    allow_nonconforming: bool = False
    int6_plugin: bool = False  # sub-8-bit activations as qfsdk::FakeQuantize plugin nodes
    simplify: bool = False  # onnx-simplifier, float exports only


@dataclass
class ConversionReport:
    """What ``convert`` did and measured, printed as its summary."""

    source: str
    architecture: str
    target: str
    output: Path
    bits: str
    probes: str
    lines: list[str] = field(default_factory=list)
    violations: list[Violation] | None = None  # None: not checked (the rules are TensorRT's)
    fidelity: dict[str, dict[str, float]] = field(default_factory=dict)
    export: ParityReport | None = None  # a quantized export vs the PyTorch model it was made from
    quantization: tuple[dict[str, float], str] | None = None  # (quantized vs float cosine stats, which float)

    def summary(self) -> str:
        out = [
            f"source:       {self.source}",
            f"architecture: {self.architecture}",
            f"target:       {self.target}",
            f"precision:    {self.bits}",
            f"output:       {self.output} ({self.output.stat().st_size / 1e6:.2f} MB)",
            *self.lines,
        ]
        if self.export is not None:
            out.append("export:       " + export_text(self.export))
        for name, stats in self.fidelity.items():
            out.append(f"{name}: min cosine {stats['min']:.5f}, mean {stats['mean']:.5f} ({self.probes})")
        if self.quantization is not None:
            stats, reference = self.quantization
            out.append(f"quantization: vs {reference}: min cosine {stats['min']:.5f}, mean {stats['mean']:.5f} "
                       f"({self.probes}; the loss of quantizing, not of the export)")
        if self.violations is None:
            out.append("qfsdk check:  not run (its rules are TensorRT's)")
        else:
            out.append("qfsdk check:  " + ("passes" if not self.violations else f"{len(self.violations)} violation(s)"))
        return "\n".join(out)


EXACT = 0.9999  # forced-parity min cosine from which an export computes its PyTorch model exactly


def export_text(parity: ParityReport) -> str:
    """Export exactness in words: forced parity (ONNX Runtime's rounding decisions given to PyTorch) decides;
    plain parity, which float summation order moves where a value sits on a rounding tie, is reported."""
    forced, plain = float(parity.forced_cosine.min()), float(parity.cosine.min())
    verdict = "exact" if forced >= EXACT else "NOT exact (a bug: please report it)"
    flips = (f", {parity.differing_codes} of {parity.codes} activation codes on rounding ties flipped"
             if parity.differing_codes else "")
    return (f"{verdict}: ONNX Runtime vs the PyTorch quantized model, min cosine {forced:.7f} given the same rounding "
            f"decisions, {plain:.5f} as run{flips}")


# ---- input readers: (name, recognises(input, options), read(input, options)) --------------------------------------


def _kind(text: str) -> str:
    """The content kind of the file ``text`` (see :mod:`qfsdk.file_kinds`), or "" when it is no file."""
    from qfsdk.file_kinds import identify

    return identify(text).name if Path(text).is_file() else ""


def _is_qfsdk_checkpoint(text: str, options: ConvertOptions) -> bool:
    from qfsdk.loading import is_quantized_checkpoint

    return is_quantized_checkpoint(text)


def _read_qfsdk_checkpoint(text: str, options: ConvertOptions) -> Source:
    from qfsdk.file_kinds import require_quantized_checkpoint
    from qfsdk.loading import load_model

    require_quantized_checkpoint(text)
    model = load_model(text)
    card = card_of(model)
    return Source(model, card.architecture, card.contract, QFSDK_CHECKPOINT, True, text)


def _is_float(text: str, options: ConvertOptions) -> bool:
    return options.precision is not None


def _read_float(text: str, options: ConvertOptions) -> Source:
    from qfsdk.file_kinds import WEIGHTS_KINDS, require
    from qfsdk.loading import load_model, split_weights
    from qfsdk.models import get_spec, names

    name, weights = split_weights(text, None)
    if weights is not None:  # NAME=PATH, as --model NAME with the checkpoint
        if options.model_name not in (None, name):
            raise QfsdkError(f"{text}: names architecture {name} but --model says {options.model_name}: keep one")
        model = load_model(name, weights)
        return Source(model, name, model.contract, "float checkpoint", False, str(weights))
    if not Path(text).exists() and text in names():
        model = load_model(text)
        return Source(model, text, model.contract, "zoo model", False, f"zoo model {text}")
    if not Path(text).is_file():
        raise QfsdkError(f"{text}: neither a file nor a zoo model name (see `qfsdk models`)")
    if _kind(text) == "onnx":
        spec = get_spec(text)  # an imported face model
        return Source(load_model(text), spec.name, spec.contract, "imported model", False, text)
    if options.model_name is None:
        require(text, ["onnx", *WEIGHTS_KINDS], "a float model",
                "--fp32/--fp16 take a zoo name, NAME=PATH, an ONNX model written by `qfsdk import` or a float "
                "checkpoint with --model NAME")
        raise QfsdkError(f"{text}: a float checkpoint needs --model NAME (or NAME={text}) to say its architecture "
                         "(see `qfsdk models`)")
    model = load_model(options.model_name, text)
    return Source(model, options.model_name, model.contract, "float checkpoint", False, text)


def _is_quantface(text: str, options: ConvertOptions) -> bool:
    from qfsdk.file_kinds import TORCH_KINDS

    return _kind(text) in TORCH_KINDS


def _read_quantface(text: str, options: ConvertOptions) -> Source:
    from .quantface_import import import_quantface

    imported = import_quantface(text)
    bits = f"W{imported.weight_bits}A{imported.act_bits}"
    return Source(imported.model, imported.architecture, imported.model.contract, f"QuantFace checkpoint ({bits})", True, text)


INPUT_READERS: list[tuple[str, Callable[[str, ConvertOptions], bool], Callable[[str, ConvertOptions], Source]]] = [
    ("float", _is_float, _read_float),
    ("qfsdk", _is_qfsdk_checkpoint, _read_qfsdk_checkpoint),
    ("quantface", _is_quantface, _read_quantface),
]


def read_input(text: str, options: ConvertOptions) -> Source:
    """The model ``text`` names, read by the first reader that recognises its content."""
    from qfsdk.file_kinds import identify

    for _, recognises, read in INPUT_READERS:
        if recognises(text, options):
            return read(text, options)
    from qfsdk.models import names

    if text in names():
        raise QfsdkError(f"{text} is a float zoo model: add --fp32 (or --fp16) for a float export, or quantize it first with `qfsdk calibrate`")
    kind = identify(text)
    if kind.name == "missing":
        raise QfsdkError(f"{text}: no such file or zoo model name (see `qfsdk models`)")
    if kind.name in ("safetensors", "onnx"):
        raise QfsdkError(f"{text} is {kind.description}, not a quantized checkpoint: for a float export add --fp32 "
                         "(with --model NAME for a weights file), or quantize it first with `qfsdk calibrate`")
    raise QfsdkError(f"{text} is {kind.description}, not a checkpoint: convert reads a qfsdk quantized checkpoint "
                     "(`qfsdk calibrate`/`qat`), a QuantFace checkpoint, or with --fp32/--fp16 a float model")


# ---- helpers -------------------------------------------------------------------------------------------------------


def probe_batch(contract: FaceContract, options: ConvertOptions) -> tuple[torch.Tensor, str]:
    """Inputs for the fidelity numbers: the user's aligned faces, or seeded pixel noise."""
    if options.probe_images is not None:
        from qfsdk.calib.folder import ImageFolderSource

        batch = next(iter(ImageFolderSource(options.probe_images, contract, batch_size=options.num_probes)))
        return batch, f"{len(batch)} images from {options.probe_images}"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(options.num_probes, contract.height, contract.width, 3), dtype=np.uint8)
    return torch.from_numpy(contract.preprocess(pixels)), f"{options.num_probes} noise images; pass --probe-images DIR for faces"


def run_onnx(path: Path, batch: torch.Tensor) -> np.ndarray:
    """The exported file's output on ONNX Runtime's CPU provider (the runtime's own backend)."""
    from qfsdk.runtime.backends.ort import OrtBackend

    backend = OrtBackend(path, providers=["CPUExecutionProvider"])
    try:
        return backend.run(batch.numpy())
    finally:
        backend.close()


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Minimum and mean row-wise cosine of two embedding arrays."""
    cos = cosine_similarities(a, b)
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def float_twin(model: nn.Module, architecture: str) -> nn.Module:
    """The float network inside a quantized model (same weights, no quantizers)."""
    from qfsdk.models import create

    float_model = create(architecture, pretrained=False)
    expected = float_model.state_dict()
    float_model.load_state_dict({k: v for k, v in model.state_dict().items() if k in expected})
    return float_model


def float_reference(source: Source) -> tuple[nn.Module, str] | None:
    """The float model a quantized source's loss is measured against, and what it is: the one the checkpoint
    was made from where it says (:func:`qfsdk.quant.checkpoint.load_float`), else the source's own weights
    without quantizers; None when neither can be built."""
    from qfsdk.quant.checkpoint import load_float

    if source.kind == QFSDK_CHECKPOINT:
        original = load_float(source.description)
        if original is not None:
            return original, "the float model it was made from"
    try:
        return float_twin(source.model, source.architecture).eval(), "its own weights without quantizers"
    except QfsdkError:  # an architecture that is no zoo model
        return None


def float_input_layers(model: nn.Module) -> list[str]:
    """The quantized convs/linears whose input no quantizer covers: no input quantizer of their own and
    no producing module that quantizes its output (QuantFace quantizes PReLU/ReLU and add outputs, so
    the stem, convs after a linear bottleneck and the embedding head read float)."""
    from qfsdk.quant.graph import traced_graph
    from qfsdk.quant.modules import WeightQuantizer

    graph = traced_graph(model, "finding float layer inputs")
    modules = dict(model.named_modules())

    def covered(name: str) -> bool:
        return any(getattr(modules[p], "output_quantizer", None) is not None for p in graph.producers.get(name, ()))

    return [name for name in dict.fromkeys(graph.order)
            if isinstance(getattr(modules[name], "weight_quantizer", None), WeightQuantizer)
            and getattr(modules[name], "input_quantizer", "none") is None and not covered(name)]


def quantize_float_inputs(model: nn.Module) -> list[str]:
    """Give each of :func:`float_input_layers` a symmetric input quantizer (calibrate afterwards); their names."""
    from qfsdk.quant.modules import ActQuantizer

    config = card_of(model).quant_config
    modules = dict(model.named_modules())
    names = float_input_layers(model)
    for name in names:
        modules[name].input_quantizer = ActQuantizer(config.act_bits, symmetric=True, allow_unsigned=config.unsigned_acts)
    return names


def _listing(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def recalibrate_synthetic(model: nn.Module, source: Source, options: ConvertOptions) -> str:
    """Re-fit the symmetric activation ranges on synthetic images made from the float twin; layers whose
    inputs the source left float get int8 inputs calibrated with them."""
    import qfsdk
    from qfsdk.calib.synth import synthetic_source
    from qfsdk.quant.recipe import DEFAULT_METHOD

    added = quantize_float_inputs(model) if is_symmetric(model) else []
    teacher = float_twin(source.model, source.architecture)
    data = synthetic_source(teacher, source.contract, options.num_images, seed=0, batch_size=min(32, options.num_images),
                            iterations=options.iterations, progress=True)
    method = card_of(model).quant_config.range_method(default=DEFAULT_METHOD)
    qfsdk.calibrate(model, data, method=method)
    line = f"ranges re-fitted on {options.num_images} synthetic images ({method})"
    if added:
        line += f"; {len(added)} layer inputs the source left float now int8 ({_listing(added)})"
    return line


# --recalibrate NAME -> the function re-fitting a deployable model's ranges (returns its report line).
RECALIBRATIONS: dict[str, Callable[[nn.Module, Source, ConvertOptions], str]] = {"synthetic": recalibrate_synthetic}

# The note for converting, for these targets, a model whose placement is made for another target.
def plugin_summary(path: Path) -> str:
    """How many sub-8-bit activation quantizers became ``qfsdk::FakeQuantize`` plugin nodes."""
    import onnx

    from qfsdk.runtime.plugins import PYTHON_PLUGIN

    from .qdq_forms import is_plugin_node

    count = sum(is_plugin_node(node) for node in onnx.load(str(path)).graph.node)
    if not count:
        return "no sub-8-bit activation quantizers: --int6-plugin left the graph pure Q/DQ"
    return (f"{count} sub-8-bit quantizers as qfsdk::FakeQuantize plugin nodes (simulation: TensorRT cannot fuse "
            f"them into int8 layers; build with `qfsdk build --plugins {PYTHON_PLUGIN}`)")


def _bits(model: nn.Module) -> str:
    card = card_of(model, required=False)
    config = card.quant_config if card is not None else None
    if config is None:
        return "float"
    return (f"W{config.weight_bits}A{config.act_bits} ({config.scheme} placement"
            + (", asymmetric activations)" if config.asymmetric_acts else ")"))


# ---- the pipeline --------------------------------------------------------------------------------------------------


def choose_target(text: str, source: Source, options: ConvertOptions) -> Target:
    """``options.target``, else the target the model's placement is made for; refuses (unless
    ``allow_nonconforming``) a symmetric-only target for a placement made for another one."""
    made_for = default_target(source.model)
    target = get_target(options.target or made_for)
    if target.symmetric_only and target.name != made_for and not options.allow_nonconforming:
        config = card_of(source.model).quant_config
        if config.asymmetric_acts:
            raise QfsdkError(f"{text}: {ZERO_POINTS_ON_TENSORRT}; "
                             f"convert it with --target {made_for} (or onnxruntime), or calibrate without "
                             "--asymmetric-acts for TensorRT")
        raise QfsdkError(f"{text}: its quantizers use the onnxruntime placement (conv outputs quantized, Q/DQ into "
                         "PReLU), which TensorRT cannot fuse; convert it with --target onnxruntime (or openvino), or "
                         "calibrate with --scheme tensorrt for TensorRT")
    return target


def check_options(source: Source, options: ConvertOptions) -> None:
    """Refuse options that do not apply to this kind of source."""
    if options.precision not in (None, *PRECISIONS):
        raise QfsdkError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    if options.recalibrate not in (None, *RECALIBRATIONS):
        raise QfsdkError(f"unknown recalibration {options.recalibrate!r}; choose one of {', '.join(RECALIBRATIONS)}")
    if options.int6_plugin and not source.quantized:
        raise QfsdkError("--int6-plugin applies to quantized models; a float export has no activation quantizers")
    if options.simplify and source.quantized:
        raise QfsdkError("--simplify is for float exports: onnx-simplifier folds int8 weights back to float, and Q/DQ "
                         "graphs get qfsdk's own exact clean-up already")


def calibration_line(model: nn.Module) -> str | None:
    """How the checkpoint was calibrated (observer, images, PTQ recipe), when its card says."""
    from qfsdk.quant.algorithms import DEFAULT_RECIPE, recipe_text

    card = card_of(model, required=False)
    calibration = (card.calibration if card is not None else None) or {}
    if "method" not in calibration:
        return None
    from qfsdk.quant.end_layers import raised_text
    from qfsdk.quant.float_fallback import float_layers

    recipe = recipe_text(calibration.get("algorithm") or DEFAULT_RECIPE)
    kept, raised = float_layers(model), raised_text(model)
    return (f"{calibration['method']} ranges on {calibration.get('images', '?')} images, PTQ recipe {recipe}"
            + (f", kept in float: {', '.join(kept)}" if kept else "") + (f", above the preset: {raised}" if raised else ""))


def placement_note(source: Source, target: Target) -> str | None:
    """What the target loses on a model whose placement is made for other backends, if anything."""
    config = card_of(source.model).quant_config
    return mismatch(config.scheme, config.asymmetric_acts, target.name)


def deployable_model(source: Source, target: Target, options: ConvertOptions, report: ConversionReport) -> nn.Module:
    """The quantized source in the form ``target`` runs: symmetric quantizers for a symmetric-only
    target, ranges re-fitted on request (on a copy: the source model stays the reference)."""
    deployable = source.model
    if target.symmetric_only and not is_symmetric(source.model):
        deployable = to_symmetric(source.model)
        report.lines.append("quantizers:   asymmetric -> symmetric for TensorRT (ranges widened to [-amax, amax])")
    if options.recalibrate is not None:
        if deployable is source.model:
            deployable = copy.deepcopy(source.model)
        report.lines.append("recalibrate:  " + RECALIBRATIONS[options.recalibrate](deployable, source, options))
    if target.symmetric_only:
        floating = float_input_layers(deployable)
        if floating:
            report.lines.append(f"float inputs: {len(floating)} layers ({_listing(floating)}) read float inputs: the source "
                                "placed no quantizer there and TensorRT runs them unfused; --recalibrate synthetic "
                                "gives them int8 inputs")
    return deployable


def write_float(source: Source, path: Path, options: ConvertOptions, probes: torch.Tensor, reference: np.ndarray,
                report: ConversionReport) -> None:
    """Export the float source to ``path`` and measure it against PyTorch."""
    report.bits = options.precision or "fp32"
    export_float(source.model, path, source.contract, source.architecture, opset=options.opset,
                 fp16=options.precision == "fp16", simplify=options.simplify)
    report.fidelity["ONNX vs PyTorch float"] = cosine_stats(reference, run_onnx(path, probes))


def write_quantized(source: Source, target: Target, path: Path, options: ConvertOptions, probes: torch.Tensor,
                    reference: np.ndarray, report: ConversionReport) -> None:
    """Export the quantized source as a Q/DQ graph for ``target`` to ``path`` and measure it."""
    deployable = deployable_model(source, target, options, report)
    calibration = calibration_line(source.model)
    if calibration is not None:
        report.lines.append("calibration:  " + calibration)
    note = placement_note(source, target)
    if note is not None:
        report.lines.append("note:         " + note)
    export_quantized(deployable, path, target=target.name, contract=source.contract,
                     architecture=source.architecture, opset=options.opset, act_plugin=options.int6_plugin)
    if options.int6_plugin:
        report.lines.append("activations:  " + plugin_summary(path))
    report.export = export_parity(deployable, path, probes)
    if deployable is not source.model:  # widened or re-fitted for the target: what that changed
        report.fidelity["ONNX vs source model"] = cosine_stats(reference, run_onnx(path, probes))
    measured = float_reference(source)
    if measured is not None:
        float_model, which = measured
        with torch.no_grad():
            report.quantization = cosine_stats(float_model(probes).numpy(), reference), which


PARITY_FLOOR = 0.5  # the export vs the PyTorch model it came from, below which nothing is written


def check_fidelity(report: ConversionReport) -> None:
    """Refuse (nothing written) an export whose measurements are NaN or far from the model it came from."""
    figures = dict(report.fidelity)
    if report.quantization is not None:
        figures["quantized vs float model"] = report.quantization[0]
    if report.export is not None:
        figures["export"] = {"min": float(report.export.forced_cosine.min()), "plain": float(report.export.cosine.min())}
    for name, stats in figures.items():
        if not all(math.isfinite(v) for v in stats.values()):
            raise QfsdkError(f"{name}: the cosine is NaN on the probe images, so the model or its export computes NaN; "
                             "nothing written: check the checkpoint's weights and ranges (recalibrate it)")
    name = "export" if report.export is not None else next(iter(report.fidelity), None)
    if name is not None and figures[name]["min"] < PARITY_FLOOR:
        raise QfsdkError(f"{name}: min cosine {figures[name]['min']:.4f} < {PARITY_FLOOR} on the probe images: the export "
                         "does not compute what the PyTorch model does; nothing written (a bug: please report it)")


def check_for_target(path: Path, target: Target, options: ConvertOptions) -> list[Violation] | None:
    """``qfsdk check``'s violations for a TensorRT graph (None for other targets: the rules are
    TensorRT's); refuses a nonconforming graph unless ``allow_nonconforming``."""
    if not target.symmetric_only:
        return None
    violations = check_model(path)
    if violations and not options.allow_nonconforming:
        listing = "\n".join(f"  {v}" for v in violations)
        raise QfsdkError(f"the exported graph breaks TensorRT rules; nothing written (pass --allow-nonconforming to keep it):\n{listing}")
    return violations


def convert(text: str, output: str | Path, options: ConvertOptions) -> ConversionReport:
    """Convert ``text`` (a file or zoo name) to an ONNX file at ``output``; nothing is written on failure."""
    source = read_input(text, options)
    target = choose_target(text, source, options)
    check_options(source, options)
    output = Path(output)
    probes, probe_text = probe_batch(source.contract, options)
    with torch.no_grad():
        reference = source.model.eval()(probes).numpy()
    report = ConversionReport(source.description, source.architecture, f"{target.name} ({target.description})", output,
                              _bits(source.model), probe_text)
    with atomic_output(output) as tmp:
        if source.quantized:
            write_quantized(source, target, tmp, options, probes, reference, report)
        else:
            write_float(source, tmp, options, probes, reference, report)
        check_fidelity(report)
        report.violations = check_for_target(tmp, target, options)
    return report
