"""quantize / calibrate / save / load through the public API."""

import copy

import pytest
import torch

import qfsdk
from qfsdk.errors import CheckpointError, ConfigError
from qfsdk.models import create
from qfsdk.quant import LayerOverride, preset
from qfsdk.quant.modules import ActQuantizer, QuantBatchNorm2d, QuantConv2d, QuantLinear, QuantPReLU, QuantResidualAdd


@pytest.fixture(scope="module")
def mfn():
    torch.manual_seed(0)
    model = create("mobilefacenet")
    with torch.no_grad():  # realistic BN statistics so activations are not degenerate
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 112, 112))
    return model.eval()


def images(n=8, seed=1):
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b).min().item()


@pytest.mark.parametrize(
    "config, match",
    [
        ({"preset": "w8a8", "weight_bits": 9}, "weight_bits must be an integer from 2 to 8"),
        ("w9a9", r"unknown preset 'w9a9' \(presets: w8a8, w6a6, w4a8, w4a4\)"),
        ({"preset": "w8a8", "act_bit": 8}, "unknown quantization config key 'act_bit'; did you mean 'act_bits'"),
        ({"scheme": "tensorrrt"}, "unknown scheme"),
        ({"scheme": "quantface", "observer": "mse"}, "scheme 'quantface' uses"),
        ({"preset": "w6a6", "unsigned_acts": "yes"}, "unsigned_acts must be true or false"),
    ],
)
def test_bad_configs_fail_before_any_work(mfn, config, match):
    model = copy.deepcopy(mfn)
    with pytest.raises(ConfigError, match=match):
        qfsdk.quantize(model, config)
    assert not any(isinstance(m, QuantConv2d) for m in model.modules())


def test_pattern_matching_nothing_fails_with_close_names(mfn):
    config = preset("w4a4").with_overrides(LayerOverride("conv_1.conv", weight_bits=8))
    with pytest.raises(ConfigError, match="matches no quantizable layer; close names: conv1.conv"):
        qfsdk.quantize(copy.deepcopy(mfn), config)


def test_tensorrt_placement(mfn):
    model = qfsdk.quantize(copy.deepcopy(mfn), "w8a8")
    modules = dict(model.named_modules())
    assert isinstance(modules["conv1.conv"], QuantConv2d) and modules["conv1.conv"].input_quantizer is not None
    assert isinstance(modules["output_layer.linear"], QuantLinear)
    assert isinstance(modules["conv_3.model.0.add"], QuantResidualAdd)
    assert modules["conv_3.model.0.add"].skip_quantizer is not None
    assert type(modules["conv1.prelu"]) is torch.nn.PReLU  # no Q/DQ around PReLU for TensorRT
    assert set(model.state_dict()) >= set(mfn.state_dict())  # float keys keep their names


def test_onnxruntime_placement_quantizes_every_conv_output():
    """The BatchNorm that finishes each conv gets an output quantizer; an iresnet block's leading BatchNorm does not."""
    model = qfsdk.quantize(create("iresnet18", pretrained=False), {"preset": "w8a8", "scheme": "onnxruntime"})
    modules = dict(model.named_modules())
    quantized_bns = {name for name, m in modules.items() if isinstance(m, QuantBatchNorm2d)}
    convs = [name for name, m in modules.items() if isinstance(m, QuantConv2d)]
    assert len(quantized_bns) == len(convs) == 21
    assert {"bn1", "layer1.0.bn2", "layer1.0.bn3", "layer2.0.downsample.1"} <= quantized_bns
    assert type(modules["layer1.0.bn1"]) is torch.nn.BatchNorm2d and type(modules["bn2"]) is torch.nn.BatchNorm2d
    assert modules["layer1.0.conv1"].input_quantizer is not None  # the tensorrt placement's quantizers stay


def test_quantface_placement_is_the_papers(mfn):
    model = qfsdk.quantize(copy.deepcopy(mfn), {"preset": "w8a8", "scheme": "quantface"})
    modules = dict(model.named_modules())
    assert isinstance(modules["conv1.prelu"], QuantPReLU)
    assert modules["conv1.conv"].input_quantizer is None
    assert modules["conv_3.model.0.add"].output_quantizer is not None
    assert not modules["conv1.prelu"].output_quantizer.symmetric


def test_overrides_keep_stem_and_head_at_8_bit(mfn):
    config = preset("w4a4").with_overrides(LayerOverride("conv1.conv", 8, 8), LayerOverride("output_layer.*", 8, 8))
    model = qfsdk.quantize(copy.deepcopy(mfn), config)
    modules = dict(model.named_modules())
    assert modules["conv1.conv"].weight_quantizer.bits == 8
    assert modules["output_layer.linear"].input_quantizer.bits == 8
    assert modules["conv_23.conv.conv"].weight_quantizer.bits == 4


def test_already_quantized_is_refused(mfn):
    model = qfsdk.quantize(copy.deepcopy(mfn), "w8a8")
    with pytest.raises(ConfigError, match="already quantized"):
        qfsdk.quantize(model, "w8a8")


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibrate_freezes_ranges_and_w8a8_is_close(mfn, method):
    model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(mfn), "w8a8"), images(16), method=method)
    quantizers = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    assert quantizers and all(bool(q.has_range) and q.amax > 0 for q in quantizers)
    before = [float(q.amax) for q in quantizers]
    with torch.no_grad():
        out = model(images(4, seed=7))
        ref = mfn(images(4, seed=7))
    assert [float(q.amax) for q in quantizers] == before  # frozen
    assert cosine(out, ref) > 0.99


def test_post_relu_inputs_calibrate_to_the_unsigned_grid_and_lose_less():
    """dlib's convs read ReLU outputs: at 6 bits they get [0, 63], which nearly halves the W6A6 error on real faces."""
    import numpy as np

    from face_photos import face_chips

    teacher = create("dlib_resnet")
    chips = torch.from_numpy(teacher.contract.preprocess(np.stack(face_chips()[:8])))
    with torch.no_grad():
        reference = teacher(chips)
    errors = {}
    for unsigned in (True, False):
        model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(teacher), preset("w6a6", unsigned_acts=unsigned)), chips)
        flags = [q.unsigned for q in model.modules() if isinstance(q, ActQuantizer)]
        assert (sum(flags) == len(flags) - 1) if unsigned else not any(flags)  # only the stem reads signed pixels
        with torch.no_grad():
            errors[unsigned] = 1 - cosine(model(chips), reference)
    assert errors[True] < 0.75 * errors[False], errors


def test_lower_bits_lose_more(mfn):
    errors = {}
    for name in ("w8a8", "w4a4"):
        model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(mfn), name), images(16))
        with torch.no_grad():
            errors[name] = 1 - cosine(model(images(4, 7)), mfn(images(4, 7)))
    assert errors["w4a4"] > errors["w8a8"]


def test_save_and_load_round_trip(tmp_path, mfn):
    model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(mfn), preset("w6a6")), images(8), method="mse")
    path = qfsdk.save_quantized(model, tmp_path / "mfn_w6a6.safetensors")
    loaded = qfsdk.load(path)
    assert loaded.quant_config == model.quant_config
    assert loaded.calibration == {"method": "mse", "images": 8, "algorithm": [{"name": "ranges"}]}
    with torch.no_grad():
        assert torch.equal(loaded(images(2, 3)), model(images(2, 3)))
    assert b"__reduce__" not in path.read_bytes()[:1000]


def test_load_rejects_other_files(tmp_path):
    float_file = tmp_path / "float.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(float_file))
    with pytest.raises(CheckpointError, match="not a qfsdk quantized checkpoint"):
        qfsdk.load(float_file)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.safetensors: not a qfsdk quantized checkpoint"):
        qfsdk.load(junk)
