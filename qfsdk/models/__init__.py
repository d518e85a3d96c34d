"""The face-model zoo: ``create(name, weights=None)`` and ``names()``."""

from . import imported as _imported  # noqa: F401  (resolves imported ONNX paths)
from . import zoo as _zoo  # noqa: F401  (registers the zoo's models)
from .card import ModelCard, card_of, describe
from .registry import ModelSpec, create, get_spec, names, register

__all__ = ["ModelCard", "ModelSpec", "card_of", "create", "describe", "get_spec", "names", "register"]
