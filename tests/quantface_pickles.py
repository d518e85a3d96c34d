"""QuantFace-format checkpoints for tests, built from test-local stand-ins at the reference class paths.

QuantFace releases quantized models as whole pickled modules whose classes live at
``backbones.*`` and ``quantization_utils.*``. ``write_reference_package`` writes small modules
at those paths (our own code: reference *semantics*, asymmetric quantizer with running min/max,
QuantAct after residual blocks and PReLUs), and ``quantface_checkpoint`` pickles a quantized
network made from them, exactly as ``torch.save(model)`` does in the reference training script.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import torch

QUANT_UTILS = '''
import torch


class AsymmetricQuantFunction(torch.autograd.Function):
    """k-bit asymmetric quantizer: scale multiplies, integral zero point, plain straight-through gradient."""

    @staticmethod
    def forward(ctx, x, k, x_min, x_max):
        scale = (2 ** k - 1) / torch.clamp(x_max - x_min, min=1e-8)
        zero_point = torch.round(scale * x_min) + 2 ** (k - 1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        q = torch.clamp(torch.round(scale * x - zero_point), -(2 ** (k - 1)), 2 ** (k - 1) - 1)
        return (q + zero_point) / scale

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None
'''

QUANT_MODULES = '''
import torch
import torch.nn.functional as F
from torch import nn

from .quant_utils import AsymmetricQuantFunction


class QuantAct(nn.Module):
    def __init__(self, activation_bit, full_precision_flag=False, running_stat=True, beta=0.9):
        super().__init__()
        self.activation_bit = activation_bit
        self.full_precision_flag = full_precision_flag
        self.running_stat = running_stat
        self.register_buffer("x_min", torch.zeros(1))
        self.register_buffer("x_max", torch.zeros(1))
        self.register_buffer("beta", torch.Tensor([beta]))
        self.register_buffer("beta_t", torch.ones(1))
        self.act_function = AsymmetricQuantFunction.apply

    def forward(self, x):
        if self.running_stat:
            self.x_min.copy_(torch.minimum(self.x_min, x.detach().min()))
            self.x_max.copy_(torch.maximum(self.x_max, x.detach().max()))
        return self.act_function(x, self.activation_bit, self.x_min, self.x_max)


class QuantActPreLu(nn.Module):
    def __init__(self, act_bit, full_precision_flag=False, running_stat=True):
        super().__init__()
        self.activation_bit = act_bit
        self.full_precision_flag = full_precision_flag
        self.running_stat = running_stat
        self.act_function = AsymmetricQuantFunction.apply
        self.quantAct = QuantAct(activation_bit=act_bit, running_stat=True)

    def set_param(self, prelu):
        self.weight = nn.Parameter(prelu.weight.data.clone())
        return self

    def forward(self, x):
        w = self.weight.detach()
        slope = self.act_function(self.weight, self.activation_bit, w.min(), w.max())
        return self.quantAct(F.prelu(x, slope))


class _QuantWeighted(nn.Module):
    def __init__(self, weight_bit, full_precision_flag=False):
        super().__init__()
        self.weight_bit = weight_bit
        self.full_precision_flag = full_precision_flag
        self.weight_function = AsymmetricQuantFunction.apply

    def quantized_weight(self):
        flat = self.weight.detach().flatten(1)
        return self.weight_function(self.weight, self.weight_bit, flat.min(1).values, flat.max(1).values)


class Quant_Conv2d(_QuantWeighted):
    def set_param(self, conv):
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, name, getattr(conv, name))
        self.weight = nn.Parameter(conv.weight.data.clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.data.clone())
        return self

    def forward(self, x):
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Quant_Linear(_QuantWeighted):
    def set_param(self, linear):
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.data.clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.data.clone())
        return self

    def forward(self, x):
        return F.linear(x, self.quantized_weight(), self.bias)
'''

BACKBONES = {
    "mobilefacenet": '''
from qfsdk.models import mobilefacenet as base


class Conv_block(base.ConvBlock):
    pass


class Linear_block(base.LinearBlock):
    pass


class Depth_Wise(base.DepthWise):
    def forward(self, x):
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(base.Residual):
    pass


class GDC(base.GDC):
    pass


class MobileFaceNet(base.MobileFaceNet):
    pass


RENAMES = {base.ConvBlock: Conv_block, base.LinearBlock: Linear_block, base.DepthWise: Depth_Wise,
           base.Residual: Residual, base.GDC: GDC, base.MobileFaceNet: MobileFaceNet}
RESIDUAL_BLOCK = Depth_Wise
''',
    "iresnet": '''
from qfsdk.models import iresnet as base


class IBasicBlock(base.IBasicBlock):
    residual = True

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(base.IResNet):
    pass


RENAMES = {base.IBasicBlock: IBasicBlock, base.IResNet: IResNet}
RESIDUAL_BLOCK = IBasicBlock
''',
}


def write_reference_package(root: Path) -> None:
    """Write ``backbones/`` and ``quantization_utils/`` under ``root`` and make them importable."""
    (root / "quantization_utils").mkdir(parents=True, exist_ok=True)
    (root / "backbones").mkdir(exist_ok=True)
    (root / "quantization_utils" / "__init__.py").write_text("")
    (root / "quantization_utils" / "quant_utils.py").write_text(textwrap.dedent(QUANT_UTILS))
    (root / "quantization_utils" / "quant_modules.py").write_text(textwrap.dedent(QUANT_MODULES))
    (root / "backbones" / "__init__.py").write_text("")
    for name, source in BACKBONES.items():
        (root / "backbones" / f"{name}.py").write_text(textwrap.dedent(source))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()


def forget_reference_package() -> None:
    """Unimport the stand-ins, so loading a checkpoint cannot fall back on them."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("backbones", "quantization_utils"):
            del sys.modules[name]


def _quantize(module: torch.nn.Module, weight_bit: int, act_bit: int, block: type) -> torch.nn.Module:
    """The reference recipe: swap Conv/Linear/PReLU, wrap residual blocks as Sequential(block, QuantAct)."""
    qm = importlib.import_module("quantization_utils.quant_modules")
    if type(module) is torch.nn.Conv2d:
        return qm.Quant_Conv2d(weight_bit).set_param(module)
    if type(module) is torch.nn.Linear:
        return qm.Quant_Linear(weight_bit).set_param(module)
    if type(module) is torch.nn.PReLU:
        return qm.QuantActPreLu(act_bit).set_param(module)
    for name, child in list(module.named_children()):
        quantized = _quantize(child, weight_bit, act_bit, block)
        if isinstance(child, block) and child.residual:
            quantized = torch.nn.Sequential(quantized, qm.QuantAct(act_bit))
        module._modules[name] = quantized
    return module


def reference_model(architecture: str, family: str, weight_bit: int, act_bit: int, seed: int = 0) -> torch.nn.Module:
    """A QuantFace-style quantized network (stand-in classes), random weights, ranges not yet set."""
    from qfsdk.models import create

    backbone = importlib.import_module(f"backbones.{family}")
    torch.manual_seed(seed)
    model = create(architecture, pretrained=False)
    for module in model.modules():
        if type(module) in backbone.RENAMES:
            module.__class__ = backbone.RENAMES[type(module)]
        if isinstance(module, backbone.RESIDUAL_BLOCK):
            module.residual = module._modules.pop("add", None) is not None or family == "iresnet"
    model = _quantize(model, weight_bit, act_bit, backbone.RESIDUAL_BLOCK)
    model.__dict__.pop("card", None)  # a QuantFace pickle carries no qfsdk model card
    return model


def set_ranges(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Run the reference range tracking over ``batches``, then freeze the ranges (as training does)."""
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for module in model.modules():
        if hasattr(module, "running_stat"):
            module.running_stat = False
    model.eval()
