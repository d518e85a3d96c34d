"""Read weights files safely and load them strictly into zoo models.

Formats, recognised by content (:mod:`qfsdk.file_kinds`): PyTorch state dicts (read with
``weights_only=True``: a file that needs code execution is refused), safetensors, and a model's
native format by its suffix (dlib ``.dat``).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from qfsdk.errors import CheckpointError

if TYPE_CHECKING:
    from qfsdk.models.registry import ModelSpec

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "backbone", "module")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOW = 4  # keys listed per category in a mismatch message


def read_state_dict(path: str | Path, spec: "ModelSpec | None" = None) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from ``path`` without executing any code from the file."""
    from qfsdk.file_kinds import WEIGHTS_KINDS, require

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if spec is not None and spec.native_suffix and path.suffix == spec.native_suffix:
        state = dict(spec.read_weights(path))
    elif require(path, WEIGHTS_KINDS, "a float weights file",
                 "weights are a PyTorch state dict (.pth) or a .safetensors file").name == "safetensors":
        state = _read_safetensors(path)
    else:
        state = _read_torch(path)
    return _strip_wrappers(state, path)


def load_weights(model: nn.Module, path: str | Path, spec: "ModelSpec | None" = None,
                 others: Mapping[str, Callable[[], nn.Module]] | None = None) -> None:
    """Load ``path`` into ``model`` with ``strict=True``; a mismatch names every kind of problem, and the
    architecture of ``others`` (name -> builder, e.g. the zoo's) the file fits, if any."""
    state = read_state_dict(path, spec)
    problems = describe_mismatch(model, state)
    if problems:
        name = spec.name if spec else type(model).__name__
        guess = _guess_architecture(state, {k: v for k, v in (others or {}).items() if k != name})
        hint = f"; it looks like a {guess} checkpoint" if guess else ""
        raise CheckpointError(f"{path}: does not fit {name}: {problems}{hint}")
    model.load_state_dict(state, strict=True)


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Empty when ``state`` loads strictly into ``model``, else a one-line summary."""
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself; older checkpoints lack it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: file {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    parts = [
        _listing(f"{len(missing)} missing", missing),
        _listing(f"{len(unexpected)} unexpected", unexpected),
        _listing(f"{len(wrong)} wrongly shaped", wrong),
    ]
    return "; ".join(p for p in parts if p)


def _listing(title: str, items: list[str]) -> str:
    if not items:
        return ""
    more = f", ... {len(items) - SHOW} more" if len(items) > SHOW else ""
    return f"{title} ({', '.join(items[:SHOW])}{more})"


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f" (it references {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: loading it would execute code from the file{culprit}. qfsdk reads "
            "weights only: save a plain state dict (torch.save(model.state_dict(), ...)) or safetensors; "
            "QuantFace whole-module checkpoints go through `qfsdk convert`"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}); is the file complete?") from None
    return _unwrap(obj, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); is the file complete?") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict in the usual training-checkpoint wrappers."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in NESTED_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        kind = type(obj).__name__
        raise CheckpointError(f"{path}: holds a {kind}, not a state dict of tensors")
    return dict(obj)


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_wrappers(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors")
    return state


def _guess_architecture(state: Mapping[str, torch.Tensor], candidates: Mapping[str, Callable[[], nn.Module]]) -> str | None:
    """The first of ``candidates`` (built on the meta device, no memory) whose keys and shapes ``state`` fits."""
    for name, build in candidates.items():
        with torch.device("meta"):
            candidate = build()
        if not describe_mismatch(candidate, state):
            return name
    return None
