"""User-facing errors.

Every error a user can fix (a bad file, a wrong option, a missing optional package)
derives from :class:`QfsdkError`. The CLI prints these as one line on stderr and exits
non-zero; anything else is a bug and keeps its traceback.

The classes live in :mod:`qfsdk.runtime.errors` so the runtime stays self-contained; these
are the same objects.
"""

from __future__ import annotations

from qfsdk.runtime.errors import CheckpointError, ConfigError, MissingDependencyError, QfsdkError, did_you_mean

__all__ = ["CheckpointError", "ConfigError", "MissingDependencyError", "QfsdkError", "did_you_mean"]
