"""IResNet (insightface arcface_torch), with parameter names and shapes of its checkpoints.

Input: aligned 112x112 RGB scaled to [-1, 1]; output: 512-d embedding (before L2 norm).
"""

from __future__ import annotations

import torch
from torch import nn

from .card import CardedModel
from .layers import ResidualAdd

DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5


class IBasicBlock(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu -> conv2 (stride) -> bn3, plus the identity or downsample."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample
        self.add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.add(out, identity)


class IResNet(CardedModel):
    """Improved ResNet backbone for 112x112 face crops."""

    def __init__(self, depths: tuple[int, int, int, int], embedding_size: int = 512, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for index, (width, depth) in enumerate(zip(STAGE_WIDTHS, depths), start=1):
            setattr(self, f"layer{index}", _make_stage(inplanes, width, depth))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        _init_weights(self)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))


def _make_stage(inplanes: int, planes: int, depth: int) -> nn.Sequential:
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride=2, bias=False),
        nn.BatchNorm2d(planes, eps=BN_EPS),
    )
    blocks = [IBasicBlock(inplanes, planes, stride=2, downsample=downsample)]
    blocks += [IBasicBlock(planes, planes) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def _init_weights(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


def iresnet(name: str, dropout: float = 0.0) -> IResNet:
    """Build ``iresnet18|34|50|100`` by name."""
    return IResNet(DEPTHS[name], dropout=dropout)
