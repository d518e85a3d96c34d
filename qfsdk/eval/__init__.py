"""qfsdk.eval: face-verification benchmarks (.bin sets, IJB-B/C), fidelity and mixed-precision reports.

Importing it stays torch-free (metrics, set readers, runtime artifacts); the PyTorch parts
(zoo and quantized models, per-layer sensitivity) import torch when used.
"""

from .api import evaluate, fidelity_report
from .binset import BinSet, read_bin
from .ijb import IJBProtocol, evaluate_ijb, read_ijb
from .metrics import flip_sum, kfold_accuracy, l2_normalize, pair_distances, roc
from .models import FaceEmbedder, LoadedModel, load_model
from .report import to_markdown, write_report
from .verification import evaluate_bin

__all__ = [
    "BinSet",
    "FaceEmbedder",
    "IJBProtocol",
    "LoadedModel",
    "evaluate",
    "evaluate_bin",
    "evaluate_ijb",
    "fidelity_report",
    "flip_sum",
    "kfold_accuracy",
    "l2_normalize",
    "load_model",
    "pair_distances",
    "read_bin",
    "read_ijb",
    "roc",
    "to_markdown",
    "write_report",
]
