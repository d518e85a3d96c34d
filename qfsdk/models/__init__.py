"""The face-model zoo: ``create(name, weights=None)`` and ``names()``."""

from . import zoo as _zoo  # noqa: F401  (registers the zoo's models)
from .registry import ModelSpec, create, get_spec, names, register

__all__ = ["ModelSpec", "create", "get_spec", "names", "register"]
