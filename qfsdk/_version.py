"""The package version; its single source is :mod:`qfsdk.runtime._version`."""

from qfsdk.runtime._version import __version__

__all__ = ["__version__"]
