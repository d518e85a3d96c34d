"""How exactly an exported Q/DQ graph computes its PyTorch quantized model.

Plain parity (the same input through PyTorch and ONNX Runtime) is limited by float32 rounding:
an activation within an ulp of a rounding tie lands on the other code when a convolution sums in
another order, and a low-bit network amplifies each such flip. So :func:`export_parity` also runs
the model *forced* onto ONNX Runtime's values at every activation quantizer. A faithful export then
matches to float rounding, and every code that still differs sits next to a tie; a wrong scale,
zero point, clip range or placement shows up as a low forced cosine and codes far from any tie.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper
from torch import nn

from qfsdk.eval.metrics import cosine_similarities
from qfsdk.quant.export_forms import ActForm
from qfsdk.quant.modules import ActQuantizer

# Nodes whose output is an activation quantizer's dequantized value, named by the exporter's module scope.
_OUTPUT_OPS = {"DequantizeLinear", "FakeQuantize"}
_SUFFIX = re.compile(r"/[A-Za-z]+(_c\d+)?$")


BIAS_QUANTIZATION = "WeightBiasQuantization"  # ONNX Runtime's transform rounding Conv biases to int32

@dataclass(frozen=True)
class ParityReport:
    """Per-sample cosines of ONNX Runtime vs PyTorch, plain and forced, and the codes that differ."""

    cosine: np.ndarray
    forced_cosine: np.ndarray
    differing_codes: int
    codes: int
    max_tie_distance: float  # over differing codes: |frac(x / scale) - 0.5| in steps (0 = exactly on a tie)

    def details(self) -> dict[str, float | int]:
        """The fields the export benchmarks print (benchmarks/export.py, benchmarks/export_real.py)."""
        return {
            "min_cosine_ort_vs_torch": round(float(self.cosine.min()), 7),
            "mean_cosine_ort_vs_torch": round(float(self.cosine.mean()), 7),
            "forced_min_cosine_ort_vs_torch": round(float(self.forced_cosine.min()), 7),
            "differing_codes": self.differing_codes,
            "activation_codes": self.codes,
            "max_tie_distance_of_differing_codes": self.max_tie_distance,
        }

    def summary(self) -> dict[str, float | int]:
        return {
            "min_cosine": round(float(self.cosine.min()), 7),
            "forced_min_cosine": round(float(self.forced_cosine.min()), 7),
            "differing_codes": self.differing_codes,
            "codes": self.codes,
            "max_tie_distance": float(self.max_tie_distance),
        }


def module_name(node_name: str) -> str:
    """The qualified module name in a TorchScript-exported node name: ``/layers/layers.0/conv1/Conv``
    -> ``layers.0.conv1`` (a container's item repeats the container's name as its prefix)."""
    parts: list[str] = []
    for part in _SUFFIX.sub("", node_name).strip("/").split("/"):
        if parts and part.startswith(parts[-1] + "."):
            parts[-1] = part
        else:
            parts.append(part)
    return ".".join(parts)


def _quantizer_outputs(proto: onnx.ModelProto, names: set[str]) -> dict[str, str]:
    """quantizer name -> the graph tensor holding its dequantized output."""
    outputs: dict[str, str] = {}
    for node in proto.graph.node:
        name = module_name(node.name)
        if node.op_type in _OUTPUT_OPS and name in names:
            outputs.setdefault(name, node.output[0])
    return outputs


@contextlib.contextmanager
def _hooks(quantizers: dict[str, ActQuantizer], hook_for: Callable) -> Iterator[None]:
    handles = [q.register_forward_hook(hook_for(name, q)) for name, q in quantizers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _share_merged_outputs(tensors: dict[str, str], inputs_seen: dict[str, tuple[int, ActForm]], onnx_path: str | Path) -> None:
    """Quantizers of one tensor with one scale share a Q/DQ pair (the exporter merges them): give
    each quantizer without a pair of its own the tensor of its twin."""
    by_key = {inputs_seen[name]: tensor for name, tensor in tensors.items() if name in inputs_seen}
    for name, key in inputs_seen.items():
        if name not in tensors:
            if key not in by_key:
                raise ValueError(f"{onnx_path}: no Q/DQ output found for quantizer {name}")
            tensors[name] = by_key[key]


def export_parity(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor, *,
                  disabled_optimizers: Sequence[str] = ()) -> ParityReport:
    """Compare ``model`` (calibrated, quantized) with its export at ``onnx_path`` on ``inputs``.

    ``disabled_optimizers``: ONNX Runtime graph transforms the plain (deployed-file) session runs without.
    """
    quantizers = {name: m for name, m in model.named_modules() if isinstance(m, ActQuantizer)}
    proto = onnx.load(str(onnx_path))
    tensors = _quantizer_outputs(proto, set(quantizers))
    plain_session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"],
                                         disabled_optimizers=list(disabled_optimizers))
    x = inputs.detach().float()
    plain = plain_session.run(None, {plain_session.get_inputs()[0].name: x.numpy()})[0]

    # A second session reads every quantizer's output; the plain one above stays the deployed file as is
    # (graph outputs on intermediate tensors can block some of ONNX Runtime's fusions). It also keeps conv
    # biases in float: ONNX Runtime's WeightBiasQuantization rounds them to int32 at input x weight scale,
    # which PyTorch does not, and on folded-BatchNorm depthwise convs (large weight scales) that moves the
    # next quantizer's input by up to 0.04 of a step -- a deployment effect, not an export error.
    final = proto.graph.output[0].name
    for tensor in tensors.values():
        proto.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=[BIAS_QUANTIZATION])
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x.numpy()})))

    inputs_seen: dict[str, tuple[int, ActForm]] = {}

    def record_input(name: str, quantizer: ActQuantizer):
        def record(module, args, output):
            inputs_seen[name] = (args[0].data_ptr(), quantizer.form())

        return record

    counts = {"differing": 0, "codes": 0, "tie": 0.0}

    def hook_for(name: str, quantizer: ActQuantizer):
        form = quantizer.form()

        def force(module, args, output):
            forced = torch.from_numpy(results[tensors[name]])
            differs = (forced - output).abs() > form.scale / 2
            if bool(differs.any()):
                steps = args[0].detach()[differs] / form.scale
                counts["tie"] = max(counts["tie"], float((steps - steps.floor() - 0.5).abs().max()))
            counts["differing"] += int(differs.sum())
            counts["codes"] += differs.numel()
            return forced

        return force

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with _hooks(quantizers, record_input):
                torch_out = model(x).numpy()
            _share_merged_outputs(tensors, inputs_seen, onnx_path)
            with _hooks(quantizers, hook_for):
                forced_out = model(x).numpy()
    finally:
        model.train(was_training)
    return ParityReport(
        cosine=cosine_similarities(torch_out, plain),
        forced_cosine=cosine_similarities(forced_out, results[final]),
        differing_codes=counts["differing"],
        codes=counts["codes"],
        max_tie_distance=counts["tie"],
    )
