"""What ``qfsdk eval`` can evaluate, and one registry that loads each kind.

A model spec is one of:

* a zoo name (``dlib_resnet``): the float model, pretrained where weights are installed;
* ``NAME=PATH``: zoo architecture ``NAME`` with a float checkpoint (``.pth``/``.safetensors``/native);
* a qfsdk quantized checkpoint (``.safetensors`` written by ``qfsdk calibrate``/``qat``);
* an ONNX file or a TensorRT engine, run through :class:`qfsdk.runtime.Embedder`.

The first three are read by :func:`qfsdk.loading.load_model`, as every command reads a PyTorch model;
an ONNX file here is the deployed model, run as it is.

Every kind becomes a :class:`LoadedModel` whose ``embed`` maps uint8 RGB crops (N, H, W, 3)
to raw float32 embeddings (N, D); the protocol code adds flips and normalisation itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.metadata import ENGINE_SUFFIXES

DEFAULT_BATCH_SIZE = 32


class FaceEmbedder(Protocol):
    """Anything with a preprocessing contract that embeds aligned uint8 RGB crops."""

    contract: FaceContract

    def embed(self, crops: np.ndarray) -> np.ndarray: ...


class TorchEmbedder:
    """A PyTorch face model (float or fake-quantized) as a :class:`FaceEmbedder`."""

    def __init__(self, module: Any, batch_size: int = DEFAULT_BATCH_SIZE):
        self.module = module.eval()
        self.contract: FaceContract = module.contract
        self.batch_size = batch_size

    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.from_numpy(self.contract.preprocess(crops[start : start + self.batch_size]))
                outputs.append(self.module(batch).float().numpy())
        return np.concatenate(outputs)


@dataclass
class LoadedModel:
    """A model ready to embed; ``module`` is the torch model (None for runtime artifacts)."""

    label: str
    kind: str
    embedder: FaceEmbedder
    module: Any = None

    @property
    def contract(self) -> FaceContract:
        return self.embedder.contract

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return np.asarray(self.embedder.embed(np.ascontiguousarray(crops)), dtype=np.float32)


def _torch(spec: str, batch_size: int) -> LoadedModel:
    """A zoo name, NAME=PATH or a quantized checkpoint, through :func:`qfsdk.loading.load_model`."""
    from qfsdk.errors import CheckpointError
    from qfsdk.file_kinds import require_quantized_checkpoint
    from qfsdk.loading import is_quantized_checkpoint, load_model, split_weights

    if not is_quantized_checkpoint(spec):
        name, path = split_weights(spec)
        return _torch_model(name if path is None else f"{name}={Path(path).name}", "float", load_model(spec), batch_size)
    require_quantized_checkpoint(spec)
    try:
        module = load_model(spec)
    except CheckpointError as exc:
        raise QfsdkError(f"{exc}; for a float checkpoint write NAME={spec} (e.g. iresnet50={spec})") from None
    return _torch_model(Path(spec).name, "quantized", module, batch_size)


def _runtime(spec: str, batch_size: int) -> LoadedModel:
    if not Path(spec).is_file():
        raise QfsdkError(f"{spec}: no such file")
    from qfsdk.runtime import Embedder

    try:
        embedder = Embedder(spec, backend="auto", batch_size=batch_size, flip=False, normalize=False)
    except ValueError as exc:  # no contract in the file, input shape not the contract's
        raise QfsdkError(str(exc)) from None
    return LoadedModel(Path(spec).name, "runtime", embedder)


def _torch_model(label: str, kind: str, module: Any, batch_size: int) -> LoadedModel:
    return LoadedModel(label, kind, TorchEmbedder(module, batch_size), module)


# kind -> loader(spec, batch_size); the single place a model kind is added.
LOADERS: dict[str, Callable[[str, int], LoadedModel]] = {
    "torch": _torch,
    "runtime": _runtime,
}
# content kind (qfsdk.file_kinds) of a model file -> loader kind
CONTENT_KINDS = {"quantized": "torch", "onnx": "runtime"}


def model_kind(spec: str) -> str:
    """Which loader ``spec`` needs (see the module docstring); files are recognised by content,
    TensorRT engines by their suffix."""
    from qfsdk.file_kinds import WEIGHTS_KINDS, identify

    path = Path(spec)
    if "=" in spec and not path.exists():
        return "torch"
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return "runtime"
    if not path.exists():
        return "torch"
    kind = identify(path)
    if kind.name in CONTENT_KINDS:
        return CONTENT_KINDS[kind.name]
    fix = (f"for a float checkpoint write NAME={spec} (e.g. iresnet50={spec})" if kind.name in WEIGHTS_KINDS else
           f"eval takes a quantized checkpoint, an ONNX model, a TensorRT engine ({', '.join(ENGINE_SUFFIXES)}), "
           "a zoo name or NAME=PATH for a float checkpoint")
    raise QfsdkError(f"{spec} is {kind.description}, not a model qfsdk eval reads: {fix}")


def load_model(spec: str, batch_size: int = DEFAULT_BATCH_SIZE) -> LoadedModel:
    """Load ``spec`` with the loader of its kind."""
    return LOADERS[model_kind(spec)](spec, batch_size)
