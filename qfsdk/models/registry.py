"""One registry and one factory for the face-model zoo."""

from __future__ import annotations

import difflib
import os
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from qfsdk.errors import ConfigError
from qfsdk.runtime.contract import FaceContract

from .card import ModelCard, attach_card

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the SDK knows about one architecture.

    ``read_weights`` reads a native weights format that is not a torch/safetensors state
    dict (dlib's ``.dat``); ``default_weights`` locates packaged pretrained weights;
    ``weights_included``: ``build`` returns the trained model (an imported ONNX) with its card.
    """

    name: str
    build: Callable[[], nn.Module]
    contract: FaceContract
    description: str
    weights_source: str
    default_weights: Callable[[], Path] | None = None
    read_weights: Callable[[Path], StateDict] | None = None
    native_suffix: str | None = None
    weights_included: bool = False

    def num_parameters(self) -> int:
        """Parameter count, computed on the meta device (no memory, no init)."""
        with torch.device("meta"):
            model = self.build()
        return sum(p.numel() for p in model.parameters())


_REGISTRY: dict[str, ModelSpec] = {}
# Functions mapping a name that is not registered (a file path) to a spec, or None; tried in order.
_RESOLVERS: list[Callable[[str], "ModelSpec | None"]] = []


def register_resolver(resolve: Callable[[str], "ModelSpec | None"]) -> None:
    """Let ``get_spec``/``create`` accept names ``resolve`` recognises (e.g. imported ONNX paths)."""
    _RESOLVERS.append(resolve)


def register(spec: ModelSpec) -> ModelSpec:
    """Add an architecture to the zoo."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    """Names of all registered models."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; unknown names fail with the closest matches."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolve in _RESOLVERS:
        spec = resolve(name)
        if spec is not None:
            return spec
    if os.sep in name or "/" in name or Path(name).suffix:  # meant as a file, not a zoo name
        what = ("no such file" if not os.path.lexists(name)
                else "not an ONNX model (a float checkpoint goes in --weights, with its architecture in --model)")
        raise ConfigError(f"{name}: {what}; --model takes a zoo name (see `qfsdk models`) or the .onnx file "
                          "that `qfsdk import` writes")
    close = difflib.get_close_matches(name, names(), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(names())}, or the .onnx file of `qfsdk import`)")


def create(name: str, weights: str | Path | None = None, *, pretrained: bool = True, seed: int | None = None) -> nn.Module:
    """Build model ``name`` in eval mode.

    ``weights`` is a checkpoint file (``.pth``/``.pt``, ``.safetensors`` or the model's native
    format). Without it, a model whose pretrained weights ship in an installed package (dlib)
    loads those unless ``pretrained=False``; other models start randomly initialised (from ``seed``
    when given), recorded as the card's weights and, unless ``pretrained=False`` asked for it, logged
    as a warning every time.
    The model carries a :class:`~qfsdk.models.card.ModelCard` (zoo name, preprocessing contract,
    weights source), also readable as ``model.contract`` and ``model.arch``.
    """
    from qfsdk.models.weights import load_weights

    spec = get_spec(name)
    if spec.weights_included:
        if weights is not None:
            raise ConfigError(f"{name} carries its own weights: drop the weights file ({weights})")
        return spec.build().eval()
    if weights is None and pretrained and spec.default_weights is not None:
        weights = spec.default_weights()
    if weights is None and seed is not None:
        torch.manual_seed(seed)  # the random initialisation is reproducible
    model = spec.build()
    if weights is not None:
        load_weights(model, weights, spec, others={n: s.build for n, s in _REGISTRY.items()})
        log.info("%s: loaded weights from %s", name, weights)
        source = str(weights)
    else:
        source = f"random weights (seed {seed})" if seed is not None else "random weights (unseeded)"
        report = log.warning if pretrained else log.debug  # pretrained=False: a skeleton whose weights load next
        report("%s has %s: pass --weights FILE (weights=...) for a trained model; results say nothing about real fidelity",
                    name, source)
    return attach_card(model, ModelCard(name, spec.contract, weights=source)).eval()
