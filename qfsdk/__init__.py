"""qfsdk: low-bit face recognition, from full-precision network to edge runtime.

Importing ``qfsdk`` stays light (no torch) so that ``qfsdk.runtime`` works in
deployment environments without PyTorch.
"""

from ._version import __version__

__all__ = ["__version__"]
