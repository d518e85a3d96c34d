"""User-facing errors (re-exported as :mod:`qfsdk.errors`).

Every error a user can fix (a bad file, a wrong option, a missing optional package)
derives from :class:`QfsdkError`. The CLI prints these as one line on stderr and exits
non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class QfsdkError(Exception):
    """Base class for errors caused by user input or the environment."""


class CheckpointError(QfsdkError):
    """A weights file cannot be read or does not fit the model."""


class MissingDependencyError(QfsdkError):
    """An optional package is needed for this feature."""

    def __init__(self, package: str, feature: str, install: str):
        super().__init__(f"{feature} needs the '{package}' package: install it with `{install}`")
        self.package = package
        self.install = install


class ConfigError(QfsdkError):
    """A configuration value is unknown or inconsistent."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class LandmarkError(QfsdkError, ValueError):
    """Five landmarks that cannot align a face: not finite, outside the image, or degenerate."""


class ModelFileError(QfsdkError, ValueError):
    """A model file cannot be read or used."""


class ContractMissingError(ModelFileError):
    """The model file carries no qfsdk contract."""
