"""Quantized checkpoints: one safetensors file of plain tensors + JSON metadata.

No pickled classes: ``load`` rebuilds the float model with the builder the file names (the zoo
by default; a model family registers its own with :func:`register_builder`), applies the stored
quantization config and loads the tensors strictly. A builder may store a payload with the
tensors (an imported model's float ONNX), so the checkpoint stands alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from qfsdk._version import __version__
from qfsdk.errors import CheckpointError
from qfsdk.file_kinds import QUANTIZED_FORMAT as FORMAT
from qfsdk.models.card import card_of
from qfsdk.runtime.files import atomic_output

from .api import quant_config_of, quantize
from .config import QuantConfig
from .modules import prepare_optional_state

PAYLOAD_PREFIX = "__rebuild__."  # tensors a builder stores beside the state dict
Payload = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Builder:
    """``rebuild(spec, payload)`` -> the float model (with its card); ``payload(spec)`` -> tensors to store."""

    rebuild: Callable[[dict[str, Any], Payload], nn.Module]
    payload: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None


BUILDERS: dict[str, Builder] = {}


def register_builder(kind: str, rebuild: Callable[[dict[str, Any], Payload], nn.Module],
                     payload: Callable[[dict[str, Any]], dict[str, torch.Tensor]] | None = None) -> None:
    """Let checkpoints whose card says ``{"kind": kind, ...}`` be rebuilt by ``rebuild(spec, payload)``;
    ``payload(spec)`` gives the tensors saved with the checkpoint for that (None: nothing)."""
    BUILDERS[kind] = Builder(rebuild, payload)


def _zoo_model(spec: dict[str, Any], payload: Payload) -> nn.Module:
    from qfsdk.models import create

    return create(spec["name"], pretrained=False)


def _imported_model(spec: dict[str, Any], payload: Payload) -> nn.Module:
    from qfsdk.models.imported import from_bytes

    return from_bytes(payload["onnx"].numpy().tobytes(), spec)


def _imported_payload(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    from qfsdk.models.imported import source_bytes

    return {"onnx": torch.frombuffer(bytearray(source_bytes(spec)), dtype=torch.uint8)}


register_builder("zoo", _zoo_model)
register_builder("onnx", _imported_model, _imported_payload)


def rebuild_spec(model: nn.Module) -> dict[str, Any]:
    """How a checkpoint of ``model`` rebuilds its float model: the card's, else the zoo's architecture."""
    from qfsdk.models import names

    card = card_of(model)
    if card.rebuild is not None:
        return card.rebuild
    if card.architecture in names():
        return {"kind": "zoo", "name": card.architecture}
    raise CheckpointError(f"{card.architecture} is neither a zoo model nor has a rebuild spec in its card: "
                          f"register a builder (qfsdk.quant.checkpoint.register_builder) and set card.rebuild")


def save_quantized(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a quantized model (tensors + config + contract + calibration info + how to rebuild it); atomic."""
    from safetensors.torch import save_file

    config = quant_config_of(model)
    card = card_of(model)
    if card.contract is None:
        raise CheckpointError("the model has no preprocessing contract: describe it with qfsdk.models.describe(model, FaceContract(...))")
    spec = rebuild_spec(model)
    metadata = {
        "format": FORMAT,
        "qfsdk_version": __version__,
        "architecture": card.architecture,
        "weights": card.weights,  # where the float weights came from ("random weights (seed 0)" says it)
        "rebuild": json.dumps(spec, sort_keys=True),
        "quant_config": config.to_json(),
        "contract": card.contract.to_json(),
        "calibration": json.dumps(card.calibration),
        "extra": json.dumps(extra or {}),
    }
    builder = BUILDERS.get(spec.get("kind"))
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if builder is not None and builder.payload is not None:
        tensors.update({PAYLOAD_PREFIX + k: v for k, v in builder.payload(spec).items()})
    path = Path(path)
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a quantized checkpoint; a clear error for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a qfsdk quantized checkpoint ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qfsdk quantized checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def _rebuild_spec_of(metadata: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(metadata.get("rebuild") or "null") or {"kind": "zoo", "name": metadata["architecture"]}


def load_float(path: str | Path) -> nn.Module | None:
    """The float model a quantized checkpoint was made from, with its original weights, where the file
    can say: a payload builder's (an imported ONNX carried in the file), or a zoo model whose weights file
    is still where the checkpoint's card says (the packaged dlib weights included). None otherwise
    (random or moved weights): the quantized model's own float weights are then the only reference."""
    from safetensors import safe_open

    from qfsdk.models import create

    metadata = read_metadata(path)
    spec = _rebuild_spec_of(metadata)
    builder = BUILDERS.get(spec.get("kind"))
    if builder is None:
        return None
    if builder.payload is None:
        weights = metadata.get("weights", "")
        return create(spec["name"], weights=weights) if spec.get("kind") == "zoo" and Path(weights).is_file() else None
    with safe_open(str(path), framework="pt") as handle:
        payload = {k[len(PAYLOAD_PREFIX):]: handle.get_tensor(k) for k in handle.keys() if k.startswith(PAYLOAD_PREFIX)}
    return builder.rebuild(spec, payload).eval()


def load(path: str | Path) -> nn.Module:
    """Rebuild a quantized model saved by :func:`save_quantized` (eval mode, ranges fixed)."""
    from safetensors.torch import load_file

    from qfsdk.models.weights import describe_mismatch

    metadata = read_metadata(path)
    spec = _rebuild_spec_of(metadata)
    if spec.get("kind") not in BUILDERS:
        raise CheckpointError(f"{path}: rebuilding a {spec.get('kind')!r} model needs its builder registered "
                              f"(known: {', '.join(BUILDERS)})")
    state = load_file(str(path))
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} tensor(s) hold NaN or infinity ({', '.join(broken[:3])}); "
                              "the file is damaged or was trained into divergence: calibrate or train it again")
    payload = {k[len(PAYLOAD_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(PAYLOAD_PREFIX)]}
    model = quantize(BUILDERS[spec["kind"]].rebuild(spec, payload), QuantConfig.from_json(metadata["quant_config"]))
    prepare_optional_state(model, state)
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path}: does not fit {metadata['architecture']} with its stored config: {problems}")
    model.load_state_dict(state, strict=True)
    card = card_of(model)
    card.calibration = json.loads(metadata.get("calibration", "null"))
    card.weights = metadata.get("weights", card.weights)
    return model.eval()
