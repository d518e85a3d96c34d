"""Small layers shared by the zoo's architectures."""

from __future__ import annotations

import torch
from torch import nn


class ResidualAdd(nn.Module):
    """``main + skip`` as a module, so quantization passes can find residual adds by type.

    It has no parameters, so checkpoints keep their reference key names.
    """

    def forward(self, main: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return main + skip
