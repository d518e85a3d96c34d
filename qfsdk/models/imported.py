"""Imported ONNX face models (``qfsdk import``) as zoo-like models: ``create("model.onnx")``.

Every command that takes ``--model NAME`` takes the path of an imported float ONNX too: the
registry resolves it to a :class:`~qfsdk.models.registry.ModelSpec` whose ``build`` converts the
graph to PyTorch. Its card says how a quantized checkpoint rebuilds it (``{"kind": "onnx"}``); the
checkpoint stores the ONNX bytes, so it still loads when the file is moved or deleted.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from qfsdk.errors import CheckpointError, QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.metadata import ARCHITECTURE_KEY, CONTRACT_KEY, QUANT_CONFIG_KEY, metadata_of

from .card import ModelCard, attach_card
from .registry import ModelSpec, register_resolver

if TYPE_CHECKING:
    import onnx

def _parse(data: bytes, path: Path) -> onnx.ModelProto:
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 -- protobuf decode errors have no common base
        raise QfsdkError(f"{path}: not an ONNX model ({type(exc).__name__}); pass a file written by `qfsdk import`") from None
    if not proto.graph.node:
        raise QfsdkError(f"{path}: not an ONNX model (no graph); pass a file written by `qfsdk import`")
    return proto


def _contract_and_name(proto: onnx.ModelProto, where: str) -> tuple[FaceContract, str]:
    from qfsdk.runtime.contract import contract_from_json

    metadata = metadata_of(proto)
    if QUANT_CONFIG_KEY in metadata:
        raise QfsdkError(f"{where}: a quantized ONNX model; pass the float model (`qfsdk import` output or a --fp32 export)")
    if CONTRACT_KEY not in metadata:
        raise QfsdkError(f"{where}: an ONNX model without a qfsdk contract; import it first: `qfsdk import {where} -o MODEL.onnx`")
    return contract_from_json(metadata[CONTRACT_KEY]), metadata.get(ARCHITECTURE_KEY) or Path(where).stem


def _build(proto: onnx.ModelProto, contract: FaceContract, name: str, rebuild: dict[str, Any], weights: str) -> nn.Module:
    """The graph as the zoo architecture it is (an insightface iresnet export), else op by op."""
    from .onnx_graph import to_torch
    from .zoo_match import zoo_model

    module = to_torch(proto, name="ImportedFaceModel")
    matched = zoo_model(proto, contract.input_size, module)
    if matched is not None:
        name, module = matched
    return attach_card(module, ModelCard(name, contract, weights=weights, rebuild=rebuild))


def from_bytes(data: bytes, spec: dict[str, Any]) -> nn.Module:
    """The float model of a checkpoint's stored ONNX bytes (checked against the recorded sha256)."""
    if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
        raise CheckpointError("the imported ONNX stored in the checkpoint does not match its recorded sha256: the file is damaged")
    proto = _parse(data, Path(spec.get("path", "checkpoint")))
    contract, name = _contract_and_name(proto, spec.get("path", "checkpoint"))
    return _build(proto, contract, name, spec, weights=f"imported ONNX (sha256 {spec['sha256'][:12]})")


def source_bytes(spec: dict[str, Any]) -> bytes:
    """The imported ONNX a checkpoint stores: the file the model was built from, unchanged since."""
    path = Path(spec["path"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: the imported model this checkpoint needs cannot be read ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:
        raise CheckpointError(f"{path}: changed since the model was built from it; rebuild from the current file")
    return data


def imported_spec(name: str) -> ModelSpec | None:
    """A spec for the path of an imported float ONNX; None for anything that is not an ONNX file
    (a ``.onnx`` name, or an ONNX model by content whatever its name)."""
    from qfsdk.file_kinds import identify

    path = Path(name)
    if not path.is_file() or (path.suffix.lower() != ".onnx" and identify(path).name != "onnx"):
        return None
    stat = path.stat()
    return _spec(name, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _spec(name: str, mtime_ns: int, size: int) -> ModelSpec:
    """The spec of an imported file, read and parsed once per version of it (a command asks several times)."""
    path = Path(name)
    data = path.read_bytes()
    proto = _parse(data, path)
    contract, architecture = _contract_and_name(proto, str(path))
    rebuild = {"kind": "onnx", "sha256": hashlib.sha256(data).hexdigest(), "path": str(path.resolve())}
    return ModelSpec(
        name=architecture,
        build=lambda: _build(proto, contract, architecture, rebuild, weights=str(path)),
        contract=contract,
        description=f"imported from {path.name}",
        weights_source=str(path),
        weights_included=True,
    )


register_resolver(imported_spec)
