"""The model card: everything the SDK records about one model object, in one place.

A card travels as ``model.card`` and is read with :func:`card_of`, which looks through the
wrappers that drop ad-hoc attributes (DistributedDataParallel/DataParallel ``.module``,
``torch.compile``'s ``._orig_mod``) and fails with one clear line when a model has none, instead of
silently defaulting (a wrong target, a wrong distillation loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from qfsdk.errors import ConfigError
from qfsdk.runtime.contract import FaceContract

CARD_ATTRIBUTE = "card"
_FX_PRESERVED = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")


@dataclass
class ModelCard:
    """What a model is and what has been done to it.

    ``architecture``: the zoo name, or any name for a model built elsewhere; ``contract``: how to feed
    it; ``weights``: where its weights came from; ``rebuild``: how a saved checkpoint rebuilds the float
    model (``{"kind": name, ...}`` of :mod:`qfsdk.quant.checkpoint`'s builders; None: the zoo's
    ``architecture``); ``quant_config``/``calibration``: set by ``quantize``/``calibrate``.
    """

    architecture: str
    contract: FaceContract | None
    weights: str = "unknown"
    rebuild: dict[str, Any] | None = None
    quant_config: Any = None
    calibration: dict[str, Any] | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel and ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or (model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else None)
        if inner is None:
            return model
        model = inner


def attach_card(model: nn.Module, card: ModelCard) -> nn.Module:
    """Give ``model`` its card and return it (a torch.fx GraphModule keeps it through deepcopy too)."""
    inner = unwrap(model)
    object.__setattr__(inner, CARD_ATTRIBUTE, card)
    if isinstance(inner, fx.GraphModule):  # its deepcopy rebuilds the module and restores only these attributes
        inner.meta.setdefault(_FX_PRESERVED, {})[CARD_ATTRIBUTE] = card
    return model


def describe(model: nn.Module, contract: FaceContract, architecture: str | None = None, weights: str = "unknown") -> nn.Module:
    """Card a model built outside the zoo: its preprocessing contract and a name for its architecture."""
    return attach_card(model, ModelCard(architecture or type(unwrap(model)).__name__, contract, weights))


def card_of(model: nn.Module, required: bool = True) -> ModelCard | None:
    """The card of ``model`` (through wrappers); without one, a ConfigError (or None if not ``required``)."""
    card = unwrap(model).__dict__.get(CARD_ATTRIBUTE)
    if card is None and required:
        raise ConfigError(
            f"{type(unwrap(model)).__name__} has no model card: build it with qfsdk.models.create(...) or describe it "
            "with qfsdk.models.describe(model, FaceContract(...))"
        )
    return card


class CardedModel(nn.Module):
    """Base of the zoo's architectures: ``contract``, ``arch``, ``quant_config`` and ``calibration``
    read the model card."""

    @property
    def contract(self) -> FaceContract:
        return card_of(self).contract

    @property
    def arch(self) -> str:
        return card_of(self).architecture

    @property
    def quant_config(self):
        return card_of(self).quant_config

    @property
    def calibration(self) -> dict[str, Any] | None:
        return card_of(self).calibration


class CardedGraphModule(CardedModel, fx.GraphModule):
    """A torch.fx GraphModule (an imported graph, a model whose adds were made modules) with the card's properties."""
