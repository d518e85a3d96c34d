"""The quantization core is open: foreign layer types, functional residual adds, PTQ steps and
model builders registered from outside the package, and one model card through wrappers."""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qfsdk
from qfsdk.converters import export_quantized
from qfsdk.converters.graph_check import check_model
from qfsdk.errors import ConfigError
from qfsdk.models import describe
from qfsdk.models.card import card_of
from qfsdk.models.layers import ResidualAdd
from qfsdk.quant.algorithms import ALGORITHMS, register_algorithm, weight_quantizers
from qfsdk.quant.checkpoint import BUILDERS, register_builder
from qfsdk.quant.modules import QuantConvMixin, QuantResidualAdd
from qfsdk.runtime.contract import FaceContract

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = FaceContract(input_size=(16, 16), embedding_size=8)
MODEL_FILES = {"qfsdk.models.dlib_resnet", "qfsdk.models.iresnet", "qfsdk.models.mobilefacenet", "qfsdk.models.zoo"}


class ScaledConv(nn.Conv2d):
    """A user's own conv type: a subclass with a method of its own."""

    def describe(self) -> str:
        return f"scaled {self.out_channels}"


class PlainResidualNet(nn.Module):
    """A model written the plain way: a subclassed conv, BatchNorm, PReLU and ``x + y`` residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ScaledConv(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.PReLU(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.stem(x)))
        x = self.bn_a(self.conv_a(x)) + x  # the skip input is the second operand here
        return self.fc(torch.flatten(self.pool(x), 1))


def _plain_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = PlainResidualNet().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return describe(model, CONTRACT, "plain_residual_net")


def _data(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, *CONTRACT.input_size, generator=torch.Generator().manual_seed(1))


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def test_subclass_and_plain_add_are_quantized_and_exported_with_the_skip_quantized(tmp_path):
    float_model = _plain_model()
    model = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), _data())
    modules = dict(model.named_modules())
    assert isinstance(modules["stem"], QuantConvMixin) and isinstance(modules["stem"], ScaledConv)
    assert modules["stem"].describe() == "scaled 8"  # the subclass keeps its own methods
    adds = [m for m in model.modules() if isinstance(m, QuantResidualAdd)]
    assert len(adds) == 1 and adds[0].skip_quantizer is not None and bool(adds[0].skip_quantizer.has_range)
    assert card_of(model).architecture == "plain_residual_net"

    path = export_quantized(model, tmp_path / "plain.onnx", target="tensorrt")
    proto = onnx.load(str(path))
    assert check_model(path) == []
    producers = {out: node for node in proto.graph.node for out in node.output}
    (add,) = [n for n in proto.graph.node if n.op_type == "Add"]
    kinds = [producers[name].op_type for name in add.input]
    assert "DequantizeLinear" in kinds  # the skip input arrives through Q/DQ ...
    main = add.input[kinds.index("DequantizeLinear") ^ 1]
    assert producers[main].op_type == "Conv"  # ... and the main branch straight from the (BatchNorm-folded) conv

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _data(4)
    exported = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(exported, model(x).numpy(), atol=2e-2)


@dataclass(frozen=True)
class RoundDownOptions:
    layers: str = "*"


def test_a_ptq_step_registered_outside_the_package_exports_exactly_its_codes(tmp_path):
    @register_algorithm("test_round_down", "every weight rounded toward -inf", RoundDownOptions)
    def round_down(run, options):
        for layer, quantizer in weight_quantizers(run.model):
            quantizer.set_rounding(torch.zeros_like(layer.weight, dtype=torch.int8))

    try:
        model = qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w8a8"), _data(), algorithm=["ranges", {"name": "test_round_down"}])
        assert card_of(model).calibration["algorithm"] == [{"name": "ranges"}, {"name": "test_round_down"}]
        expected, nearest = {}, {}
        for layer, quantizer in weight_quantizers(model):
            scaled = layer.weight.detach() / quantizer.step_size(layer.weight.detach())
            expected[tuple(layer.weight.shape)] = torch.clamp(torch.floor(scaled), -127, 127).numpy()
            nearest[tuple(layer.weight.shape)] = torch.clamp(torch.round(scaled), -127, 127).numpy()
        path = export_quantized(model, tmp_path / "floor.onnx", target="onnxruntime")
        proto = onnx.load(str(path))
        consumers = _consumers(proto.graph)
        stored = [numpy_helper.to_array(i) for i in proto.graph.initializer
                  if i.data_type == onnx.TensorProto.INT8 and any(n.op_type == "DequantizeLinear" for n in consumers.get(i.name, []))]
        weights = {a.shape: a for a in stored if a.ndim in (2, 4)}
        assert set(weights) == set(expected)
        for shape, codes in weights.items():
            # BatchNorm folding may flip a channel's sign (codes negate exactly); the magnitudes are the floor codes.
            assert np.array_equal(np.abs(codes), np.abs(expected[shape])), shape
            assert not np.array_equal(np.abs(codes), np.abs(nearest[shape])), shape  # nearest rounding would differ
    finally:
        ALGORITHMS.pop("test_round_down", None)


def test_learned_rounding_survives_a_checkpoint_through_a_registered_builder(tmp_path):
    register_builder("test_plain", lambda spec, payload: _plain_model(spec["seed"]))
    try:
        model = qfsdk.calibrate(qfsdk.quantize(_plain_model(3), "w6a6"), _data())
        for layer, quantizer in weight_quantizers(model):
            quantizer.set_rounding(torch.ones_like(layer.weight, dtype=torch.int8))
        card_of(model).rebuild = {"kind": "test_plain", "seed": 3}
        path = qfsdk.save_quantized(model, tmp_path / "plain.safetensors")
        loaded = qfsdk.load(path)
        x = _data(3)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model.eval()(x))
        assert all(q.rounding is not None for _, q in weight_quantizers(loaded))
    finally:
        BUILDERS.pop("test_plain", None)


def test_unknown_ptq_steps_and_options_are_config_errors():
    model = qfsdk.quantize(_plain_model(), "w8a8")
    with pytest.raises(ConfigError, match="did you mean 'ranges'"):
        qfsdk.calibrate(model, _data(), algorithm="range")
    with pytest.raises(ConfigError, match="takes no options"):
        qfsdk.calibrate(model, _data(), algorithm={"name": "ranges", "bins": 3})


def test_the_card_survives_wrappers_and_its_absence_is_an_error():
    model = qfsdk.quantize(_plain_model(), "w8a8")
    wrapped = nn.DataParallel(model)
    assert card_of(wrapped).quant_config.weight_bits == 8
    with pytest.raises(ConfigError, match="no model card"):
        card_of(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="no contract"):
        qfsdk.quantize(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)), {"preset": "w8a8", "scheme": "onnxruntime"})


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_quantization_core_imports_no_model_file():
    for path in sorted((ROOT / "qfsdk" / "quant").glob("*.py")):
        bad = _imports(path) & MODEL_FILES
        assert not bad, f"{path.name} imports {bad}"


def test_bias_correction_zeroes_each_layers_mean_output_error():
    """After ``bias_correction`` every corrected layer's per-channel output mean equals the float model's
    on the calibration images; before, W4 weights shift them visibly."""
    from qfsdk.quant.bias_correction import _means

    data = _data(16)
    float_model = _plain_model()
    plain = qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w4a8"), data)
    corrected = qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w4a8"), data, algorithm=["ranges", "bias_correction"])
    assert card_of(corrected).calibration["algorithm"] == [{"name": "ranges"}, {"name": "bias_correction"}]
    names = ["stem", "conv_a", "fc"]
    float_layers = [dict(float_model.named_modules())[n] for n in names]
    reference = _means(float_model, float_layers, [data], torch.device("cpu"))

    def errors(model):
        layers = [dict(model.named_modules())[n] for n in names]
        quantized = _means(model, layers, [data], torch.device("cpu"))
        return [float((reference.mean(f) - quantized.mean(q)).abs().max()) for f, q in zip(float_layers, layers)]

    before, after = errors(plain), errors(corrected)
    assert min(before) > 5e-4
    assert max(after) < 1e-5


def test_an_imported_graphs_residual_add_is_quantized_in_place():
    """An ONNX graph converted to PyTorch keeps its Add as ``x + y``; quantize finds it in the graph itself
    (no re-tracing, which ops such as a Flatten on axis 2 would break) and converts the module in place."""
    from onnx import TensorProto, helper

    from qfsdk.models.onnx_graph import to_torch
    from qfsdk.quant.modules import bypassed

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 3, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "x"], ["a"]),
         helper.make_node("Flatten", ["a"], ["f"], axis=2), helper.make_node("Reshape", ["f", "shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, shape])
    module = describe(to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])), CONTRACT, "tiny")
    x = _data(2)
    with torch.no_grad():
        expected = module(x)
    quantized = qfsdk.quantize(module, "w8a8")
    assert quantized is module
    (add,) = [m for m in quantized.modules() if isinstance(m, QuantResidualAdd)]
    assert add.skip_quantizer is not None
    with torch.no_grad(), bypassed(quantized):
        torch.testing.assert_close(quantized(x), expected)  # the same function with the quantizers passing values


class ChainNet(nn.Module):
    """conv -> BatchNorm -> PReLU -> conv -> ReLU -> depthwise conv: two equalizable pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8)
        self.conv2, self.act2 = nn.Conv2d(8, 8, 1), nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.act2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _uneven_chain() -> nn.Module:
    """A ChainNet whose channel ranges differ by 1000x, as in folded MobileFaceNets: no per-tensor int8 grid holds them."""
    torch.manual_seed(0)
    model = ChainNet().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.logspace(-2, 1, 8))
        model.conv2.weight.mul_(torch.logspace(1, -2, 8).view(-1, 1, 1, 1))
    return describe(model, CONTRACT, "chain")


@pytest.mark.parametrize("by, narrower, iterations", [("weights", 3, 20), ("activations", 10, 2)])
def test_equalization_keeps_the_float_function_and_evens_out_channel_ranges(by, narrower, iterations):
    from qfsdk.quant.modules import bypassed

    float_model = _uneven_chain()
    data = _data(16)
    with torch.no_grad():
        expected = float_model(data)

    def channel_spread(model: nn.Module, layer: str) -> float:
        seen = {}

        def record(_module, _args, out):
            seen["x"] = out.detach().abs().transpose(0, 1).flatten(1).amax(1)

        hook = dict(model.named_modules())[layer].register_forward_hook(record)
        with torch.no_grad(), bypassed(model):
            model(data)
        hook.remove()
        ranges = seen["x"][seen["x"] > 0]  # a ReLU channel may be dead
        return float(ranges.max() / ranges.min())

    plain = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), data)
    equalized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), data, algorithm=[{"name": "equalize", "by": by, "iterations": iterations}, "ranges"])
    with torch.no_grad(), bypassed(equalized):
        torch.testing.assert_close(equalized(data), expected, rtol=1e-4, atol=1e-5)  # the same float function
    for layer in ("act1", "act2"):  # the inputs of conv2 and conv3, quantized per tensor
        assert channel_spread(equalized, layer) < channel_spread(plain, layer) / narrower

    def min_cosine(model: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(model(data), expected).min())

    assert min_cosine(equalized) > min_cosine(plain)
    if by == "weights":  # iterated, both sides of every pair converge to sqrt(r_c w_c): one range per channel
        gain = (equalized.bn1.weight / torch.sqrt(equalized.bn1.running_var + equalized.bn1.eps)).abs().detach()
        pairs = [(equalized.conv1.weight.detach().abs().flatten(1).amax(1) * gain,
                  equalized.conv2.weight.detach().abs().transpose(0, 1).flatten(1).amax(1)),
                 (equalized.conv2.weight.detach().abs().flatten(1).amax(1), equalized.conv3.weight.detach().abs().flatten(1).amax(1))]
        for first, second in pairs:
            torch.testing.assert_close(first, second, rtol=0.05, atol=0)


@pytest.mark.parametrize("module", ["qfsdk.quant.config", "qfsdk.quant.modules", "qfsdk.models", "qfsdk.models.dlib_resnet"])
def test_quantization_and_models_import_in_any_order(module):
    """dlib registers its quant layers while it loads: no import order may hit a half-loaded module."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_learned_rounding_lowers_each_layers_output_error_below_nearest_rounding(tmp_path):
    """``reconstruct`` at W4A8: every layer's output error vs the float layer (same float input) falls
    below nearest rounding's, the model's output gets closer to the float one, the codes it learned are
    the ones the ONNX export stores, and an option error names the option."""
    from qfsdk.quant.capture import layer_inputs
    from qfsdk.quant.modules import bypassed
    from qfsdk.quant.reconstruction import output_error

    data = _data(16)
    float_model = _plain_model()
    with torch.no_grad():
        expected = float_model(data)
    nearest = qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w4a8"), data)
    learned = qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w4a8"), data,
                              algorithm=["ranges", {"name": "reconstruct", "iterations": 300, "batch_size": 8}])

    def layer_errors(model: nn.Module) -> list[float]:
        errors = []
        for name in ("stem", "conv_a", "fc"):
            layer = dict(model.named_modules())[name]
            with bypassed(model):
                float_input = layer_inputs(model, layer, [data], torch.device("cpu"))
                with torch.no_grad():
                    target = layer(float_input)
            with torch.no_grad():
                errors.append(float(output_error(layer(layer_inputs(model, layer, [data], torch.device("cpu"))), target)))
        return errors

    before, after = layer_errors(nearest), layer_errors(learned)
    assert all(a <= b for a, b in zip(after, before))
    assert after[1] < 0.7 * before[1] and after[2] < 0.7 * before[2]  # the stem's error is mostly its input's
    with torch.no_grad():
        assert float(nn.functional.mse_loss(learned(data), expected)) < float(nn.functional.mse_loss(nearest(data), expected))
    layer, quantizer = next(iter(weight_quantizers(learned)))
    assert quantizer.rounding is not None and quantizer.step is not None
    differs = quantizer.rounding.float() != (torch.round(layer.weight / quantizer.step) - torch.floor(layer.weight / quantizer.step))
    assert differs.any()  # some weights no longer round to nearest
    onnx_path = export_quantized(learned, tmp_path / "learned.onnx")
    codes = {init.name: numpy_helper.to_array(init) for init in onnx.load(onnx_path).graph.initializer}
    assert any(np.array_equal(c, quantizer.form(layer.weight).codes) for c in codes.values() if c.dtype == np.int8)
    with pytest.raises(ConfigError, match="iterations"):
        qfsdk.calibrate(qfsdk.quantize(_plain_model(), "w4a8"), data, algorithm=["ranges", {"name": "reconstruct", "iterations": 0}])


class TwoConvBlock(nn.Module):
    """A residual block, written as the zoo's are (a ResidualAdd module): two convs learned together."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.add = ResidualAdd()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(self.conv2(self.act(self.conv1(x))), x)


class BlockNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = TwoConvBlock(8)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.block(self.stem(x)), 1), 1))


def test_block_reconstruction_with_dropped_quantization_lowers_the_blocks_error_below_nearest_rounding(caplog):
    """``reconstruct:blocks=true:drop=0.5`` learns the block's two convs together: the block's output error
    (vs the float block on the float input) falls below nearest rounding's, no dropping is left on the
    quantized model (its output is the same on every call), and a share outside [0, 1) names the option."""
    import logging

    from qfsdk.quant.capture import layer_inputs
    from qfsdk.quant.modules import bypassed
    from qfsdk.quant.reconstruction import output_error

    torch.manual_seed(0)
    float_model = describe(BlockNet().eval(), CONTRACT, "block_net")
    data = _data(16)

    def block_error(model: nn.Module) -> float:
        block = model.block
        with bypassed(model):
            target = block(layer_inputs(model, block, [data], torch.device("cpu")))
        with torch.no_grad():
            return float(output_error(block(layer_inputs(model, block, [data], torch.device("cpu"))), target))

    nearest = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w4a8"), data)
    with caplog.at_level(logging.INFO, logger="qfsdk.quant.reconstruction"):
        learned = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w4a8"), data, algorithm=[
            "ranges", {"name": "reconstruct", "blocks": True, "drop": 0.5, "iterations": 300, "batch_size": 8}])
    assert "3 units of 4 layers" in caplog.text  # stem, the block (conv1 + conv2), fc
    assert block_error(learned) < 0.7 * block_error(nearest)
    with torch.no_grad():
        torch.testing.assert_close(learned(data), learned(data), rtol=0, atol=0)
    assert not any(module._forward_hooks for module in learned.modules())
    with pytest.raises(ConfigError, match="drop must be in"):
        qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w4a8"), data,
                        algorithm=["ranges", {"name": "reconstruct", "drop": 1.0}])


def test_keep_float_returns_the_costliest_layer_to_float_through_checkpoint_and_export(tmp_path):
    """``keep_float`` keeps the layer that alone costs most in float: its quantizers go, the output gets
    closer to the float model's, the config names it, and the checkpoint and the ONNX file keep it float."""
    from qfsdk.quant.float_fallback import layer_costs
    from qfsdk.quant.modules import QuantModule

    float_model = _uneven_chain()
    data = _data(16)
    with torch.no_grad():
        expected = float_model(data)

    plain = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), data)
    (worst_cost, worst), (next_cost, _), *_ = layer_costs(plain, [data], torch.device("cpu"))
    assert worst_cost < next_cost
    kept = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), data,
                           algorithm=["ranges", {"name": "keep_float", "layers": 1}])
    layer = dict(kept.named_modules())[worst]
    assert type(layer) is nn.Conv2d and not any(isinstance(m, QuantModule) for m in layer.modules())
    assert [(o.pattern, o.enabled) for o in card_of(kept).quant_config.overrides] == [(worst, False)]

    def min_cosine(model: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(model(data), expected).min())

    assert min_cosine(kept) > min_cosine(plain)
    register_builder("test_chain", lambda spec, payload: _uneven_chain())
    try:
        card_of(kept).rebuild = {"kind": "test_chain"}
        loaded = qfsdk.load(qfsdk.save_quantized(kept, tmp_path / "chain.safetensors"))
    finally:
        BUILDERS.pop("test_chain", None)
    with torch.no_grad():
        torch.testing.assert_close(loaded(data), kept(data))
    proto = onnx.load(str(export_quantized(kept, tmp_path / "chain.onnx", target="tensorrt")))
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    fed = [producers.get(node.input[1], "initializer") for node in convs]
    assert fed.count("DequantizeLinear") == len(convs) - 1  # one conv keeps float weights
    with pytest.raises(ConfigError, match="layers must be a positive integer"):
        qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(float_model), "w8a8"), data, algorithm=["ranges", {"name": "keep_float", "layers": 0}])
