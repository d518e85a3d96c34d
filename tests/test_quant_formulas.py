"""The quantizer formulas, pinned numerically."""

import pytest
import torch

from qfsdk.quant.fake_quant import (
    asymmetric_params,
    fake_quant_asymmetric,
    fake_quant_symmetric,
    signed_range,
    symmetric_scale,
    unsigned_range,
)
from qfsdk.quant.modules import ActQuantizer


@pytest.mark.parametrize("bits, narrow, expected", [(8, True, (-127, 127)), (8, False, (-128, 127)), (6, True, (-31, 31)), (4, False, (-8, 7)), (2, False, (-2, 1))])
def test_signed_ranges(bits, narrow, expected):
    assert signed_range(bits, narrow) == expected


def test_symmetric_8bit_values_and_half_to_even():
    scale = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, -0.25, 1.0, 100.0, -100.0])
    # 0.5 -> 0 and 1.5 -> 2 (half to even, like ONNX QuantizeLinear); clamp to [-128, 127]
    assert fake_quant_symmetric(x, scale, 8, narrow=False).tolist() == [0.0, 1.0, -0.0, 1.0, 63.5, -64.0]


def test_six_bit_weights_use_the_31_level_grid():
    w = torch.tensor([[-1.0, 0.5, 1.0]])
    scale = symmetric_scale(w.abs().amax(1, keepdim=True), 6, narrow=True)
    assert scale.item() == pytest.approx(1 / 31)
    q = fake_quant_symmetric(w, scale, 6, narrow=True) / scale
    assert q.tolist() == [[-31.0, 16.0, 31.0]]  # 15.5 rounds half to even


def test_symmetric_gradient_is_straight_through_inside_and_zero_outside():
    x = torch.tensor([0.3, 200.0], requires_grad=True)
    fake_quant_symmetric(x, torch.tensor(1.0), 8, narrow=False).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]


def test_asymmetric_reference_formula():
    """k=4: n=15, range [-1, 2] -> scale 5, zp = round(-5) + 8 = 3."""
    x_min, x_max = torch.tensor(-1.0), torch.tensor(2.0)
    scale, zero_point = asymmetric_params(x_min, x_max, 4)
    assert (scale.item(), zero_point.item()) == (5.0, 3.0)
    x = torch.tensor([-1.0, 0.0, 0.13, 2.0, 5.0])
    # q = clamp(round(5x - 3), -8, 7); x_hat = (q + 3) / 5
    expected = [(max(-8, min(7, round(5 * v - 3))) + 3) / 5 for v in x.tolist()]
    assert fake_quant_asymmetric(x, x_min, x_max, 4).tolist() == pytest.approx(expected)


def test_asymmetric_gradient_is_plain_straight_through():
    x = torch.tensor([0.5, 50.0], requires_grad=True)
    fake_quant_asymmetric(x, torch.tensor(0.0), torch.tensor(1.0), 8).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_non_negative_sub_8_bit_ranges_use_the_unsigned_grid_inside_int8():
    """6 bits after ReLU: 64 levels [0, 63] with zero point 0 (int8 holds them), not the signed grid's 32."""
    assert unsigned_range(6) == (0, 63)
    quantizer = ActQuantizer(6, symmetric=True)
    quantizer.set_range(0.0, 6.3)
    assert quantizer.unsigned and quantizer.levels() == (0, 63)
    assert quantizer.scale().item() == pytest.approx(0.1)
    x = torch.tensor([-1.0, 0.26, 3.05, 10.0])
    assert quantizer(x).tolist() == pytest.approx([0.0, 0.3, 3.0, 6.3])  # 30.5 rounds half to even

    quantizer.set_range(-0.5, 6.3)  # one negative value: the signed grid
    assert not quantizer.unsigned and quantizer.levels() == (-32, 31)
    assert quantizer.scale().item() == pytest.approx(6.3 / 31)


@pytest.mark.parametrize("bits, allow_unsigned", [(8, True), (6, False)])
def test_eight_bit_and_opted_out_quantizers_stay_signed(bits, allow_unsigned):
    quantizer = ActQuantizer(bits, symmetric=True, allow_unsigned=allow_unsigned)
    quantizer.set_range(0.0, 1.0)
    assert not quantizer.unsigned and quantizer.levels() == signed_range(bits, narrow=False)
