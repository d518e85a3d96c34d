"""Export a float zoo model to ONNX with its contract in ``metadata_props``."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from qfsdk._version import __version__
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output
from qfsdk.runtime.metadata import ARCHITECTURE_KEY, CONTRACT_KEY, VERSION_KEY

from .graph_tools import bypass_identities, unshare_prelu_slopes

DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def export_float(
    model: nn.Module,
    path: str | Path,
    contract: FaceContract,
    architecture: str,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    simplify: bool = False,
) -> Path:
    """Write ``model`` (eval mode) to ``path`` with a dynamic batch dimension; atomic.

    ``fp16``: weights, input and output in float16 (for GPUs; the model itself is not changed).
    ``simplify``: run onnx-simplifier (float graphs only; it would fold Q/DQ weights back to float).
    """
    import copy

    model = copy.deepcopy(model).half().eval() if fp16 else model.eval()
    example = torch.zeros(1, 3, *contract.input_size, dtype=torch.float16 if fp16 else torch.float32)
    path = Path(path)
    with atomic_output(path) as tmp:
        proto = torchscript_export(model, example, tmp, opset)
        bypass_identities(proto)
        unshare_prelu_slopes(proto)
        if simplify:
            proto = simplify_float_graph(proto)
        add_metadata(proto, contract, architecture)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def simplify_float_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-simplifier's constant folding and shape simplification, checked by onnxsim itself."""
    from qfsdk.errors import MissingDependencyError, QfsdkError

    try:
        import onnxsim
    except ImportError:
        raise MissingDependencyError("onnxsim", "--simplify", "pip install 'qfsdk[simplify]'") from None
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise QfsdkError("onnx-simplifier could not verify its simplified graph; export without --simplify")
    kept = [p for p in simplified.metadata_props if not p.key.startswith("onnxsim.")]
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(kept)
    return simplified


def torchscript_export(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> onnx.ModelProto:
    """Trace ``model`` with the TorchScript exporter (it writes fake-quant ops as Q/DQ with constant
    scales; the dynamo exporter cannot) into ``path``, dynamic batch; returns the loaded graph."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return onnx.load(str(path))


def add_metadata(
    proto: onnx.ModelProto, contract: FaceContract, architecture: str, extra: dict[str, str] | None = None
) -> None:
    """Store the contract, SDK version, architecture (and ``extra`` keys) in the model's metadata."""
    values = {CONTRACT_KEY: contract.to_json(), VERSION_KEY: __version__, ARCHITECTURE_KEY: architecture, **(extra or {})}
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)
