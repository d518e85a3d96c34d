"""Quantized checkpoints: one safetensors file of plain tensors + JSON metadata.

No pickled classes: ``load`` rebuilds the float architecture from the zoo, applies the stored
quantization config and loads the tensors strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from qfsdk._version import __version__
from qfsdk.errors import CheckpointError
from qfsdk.runtime.files import atomic_output

from .api import quant_config_of, quantize
from .config import QuantConfig

FORMAT = "qfsdk.quantized/1"


def save_quantized(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a quantized zoo model (tensors + config + contract + calibration info); atomic."""
    from safetensors.torch import save_file

    config = quant_config_of(model)
    arch = getattr(model, "arch", None)
    if arch is None:
        raise CheckpointError("only zoo models (qfsdk.models.create) can be saved: the file names its architecture")
    metadata = {
        "format": FORMAT,
        "qfsdk_version": __version__,
        "architecture": arch,
        "quant_config": config.to_json(),
        "contract": model.contract.to_json(),
        "calibration": json.dumps(getattr(model, "calibration", None)),
        "extra": json.dumps(extra or {}),
    }
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
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


def load(path: str | Path) -> nn.Module:
    """Rebuild a quantized model saved by :func:`save_quantized` (eval mode, ranges fixed)."""
    from safetensors.torch import load_file

    from qfsdk.checkpoints import describe_mismatch
    from qfsdk.models import create

    metadata = read_metadata(path)
    model = create(metadata["architecture"], pretrained=False)
    quantize(model, QuantConfig.from_json(metadata["quant_config"]))
    state = load_file(str(path))
    problems = describe_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path}: does not fit {metadata['architecture']} with its stored config: {problems}")
    model.load_state_dict(state, strict=True)
    model.calibration = json.loads(metadata.get("calibration", "null"))
    return model.eval()
