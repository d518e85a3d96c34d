"""`qfsdk convert --int6-plugin`: sub-8-bit activations as one `qfsdk::FakeQuantize` node each.

On CPU the graph runs in ONNX Runtime through its model-local reference function and must equal the
default Clip + int8 Q/DQ export. The GPU tests run the plugin's PTX kernel through cuda-python and,
where TensorRT exists, build an engine with the Python plugin; they skip elsewhere.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import helper
from torch import nn

from qfsdk.converters.qdq_export import export_mode
from qfsdk.converters.qdq_forms import PLUGIN_DOMAIN, PLUGIN_OP, attach_plugin_reference, is_plugin_node
from qfsdk.quant.modules import ActQuantizer

OPSET = 17


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class OneQuantizer(nn.Module):
    """A single calibrated activation quantizer."""

    def __init__(self, bits: int, symmetric: bool) -> None:
        super().__init__()
        self.quantizer = ActQuantizer(bits, symmetric)
        self.quantizer.set_range(-1.3, 2.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(x)


def export_toy(model: nn.Module, path: Path, act_plugin: bool) -> onnx.ModelProto:
    """The exporter's quantizer forms on a bare module (export_quantized needs a whole face model)."""
    with export_mode(model, act_plugin), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 64),), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}}, opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(path))
    attach_plugin_reference(proto, OPSET)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def ops(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node if n.op_type != "Constant"]


def toy_inputs(form_scale: float) -> np.ndarray:
    """Random values, exact rounding ties (k + 0.5 steps) and values far outside the range."""
    rng = np.random.default_rng(0)
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32) * np.float32(form_scale)
    values = np.concatenate([rng.normal(0, 1.5, 4096).astype(np.float32), ties, np.float32([-1e3, 1e3, 0.0])])
    return values[: len(values) // 64 * 64].reshape(-1, 64)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_toy_plugin_equals_clip_qdq_elementwise(tmp_path, symmetric):
    model = OneQuantizer(6, symmetric).eval()
    qdq = export_toy(model, tmp_path / "qdq.onnx", act_plugin=False)
    plugin = export_toy(model, tmp_path / "plugin.onnx", act_plugin=True)
    assert ops(qdq) == ["Clip", "QuantizeLinear", "DequantizeLinear"]
    (node,) = plugin.graph.node
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert (node.domain, node.op_type) == (PLUGIN_DOMAIN, PLUGIN_OP)
    assert attributes["plugin_namespace"] == b"qfsdk" and attributes["plugin_version"] == b"1"
    assert (attributes["qmin"], attributes["qmax"]) == (-32, 31) and attributes["scale"] > 0
    assert symmetric == (attributes["zero_point"] == 0)
    assert {(o.domain, o.version) for o in plugin.opset_import} == {("", OPSET), (PLUGIN_DOMAIN, 1)}
    assert [(f.domain, f.name) for f in plugin.functions] == [(PLUGIN_DOMAIN, PLUGIN_OP)]

    x = toy_inputs(attributes["scale"])
    want = run_ort(tmp_path / "qdq.onnx", x)
    got = run_ort(tmp_path / "plugin.onnx", x)
    np.testing.assert_array_equal(got, want)
    with torch.no_grad():  # the custom op's own forward (what PyTorch traced) agrees too
        traced = torch.ops.qfsdk.fake_quantize(torch.from_numpy(x), attributes["scale"], attributes["zero_point"], -32, 31)
    np.testing.assert_array_equal(traced.numpy(), want)
    assert len(np.unique(got)) <= 64  # on the 6-bit grid


def test_8bit_quantizers_keep_qdq(tmp_path):
    proto = export_toy(OneQuantizer(8, True).eval(), tmp_path / "w8.onnx", act_plugin=True)
    assert ops(proto) == ["QuantizeLinear", "DequantizeLinear"]
    assert not proto.functions and all(o.domain != PLUGIN_DOMAIN for o in proto.opset_import)


@pytest.fixture(scope="module")
def dlib_w6a6(tmp_path_factory):
    """Pretrained dlib ResNet at W6A6, calibrated on real face chips, converted both ways with the CLI."""
    import qfsdk
    from face_photos import face_chips
    from qfsdk.cli import main
    from qfsdk.models import create

    root = tmp_path_factory.mktemp("int6_plugin")
    model = create("dlib_resnet")
    chips = torch.from_numpy(model.contract.preprocess(np.stack(face_chips()[:6])))
    quantized = qfsdk.calibrate(qfsdk.quantize(copy.deepcopy(model), "w6a6"), chips, method="minmax")
    checkpoint = qfsdk.save_quantized(quantized, root / "dlib_w6a6.safetensors")
    runner = CliRunner()
    outputs = {}
    for name, flags in (("qdq", []), ("plugin", ["--int6-plugin"])):
        outputs[name] = root / f"{name}.onnx"
        result = runner.invoke(main, ["convert", str(checkpoint), *flags, "-o", str(outputs[name])])
        assert result.exit_code == 0, result.output
        outputs[f"{name}_summary"] = result.output
    outputs["chips"] = chips.numpy()
    return outputs


def test_cli_plugin_export_matches_default_export(dlib_w6a6):
    plugin = onnx.load(str(dlib_w6a6["plugin"]))
    ops = [n.op_type for n in plugin.graph.node]
    count = ops.count(PLUGIN_OP)
    assert count > 20 and "Clip" not in ops  # every 6-bit activation is one FakeQuantize, no Clip
    assert ops.count("DequantizeLinear") == ops.count("Conv") + ops.count("Gemm") + ops.count("MatMul")  # weights only
    assert f"activations:  {count} sub-8-bit quantizers as qfsdk::FakeQuantize" in dlib_w6a6["plugin_summary"]
    assert "qfsdk check:  passes" in dlib_w6a6["plugin_summary"]
    x = dlib_w6a6["chips"]
    cosine = cosines(run_ort(dlib_w6a6["plugin"], x), run_ort(dlib_w6a6["qdq"], x))
    assert cosine.min() >= 0.9999, cosine


def test_check_accepts_plugin_nodes_and_flags_missing_attributes(dlib_w6a6, tmp_path):
    from qfsdk.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["check", str(dlib_w6a6["plugin"])])
    assert result.exit_code == 0 and "ready for TensorRT" in result.output, result.output
    proto = onnx.load(str(dlib_w6a6["plugin"]))
    node = next(n for n in proto.graph.node if is_plugin_node(n))
    kept = [a for a in node.attribute if a.name != "plugin_version"]
    del node.attribute[:]
    node.attribute.extend(kept)
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    result = runner.invoke(main, ["check", str(tmp_path / "bad.onnx")])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"{node.name}: custom op qfsdk::FakeQuantize lacks plugin_version; TensorRT "
                                          "looks plugins up by op type, plugin_namespace and plugin_version "
                                          "[plugin-attributes]"]


def test_int6_plugin_refuses_float_exports(tmp_path):
    from qfsdk.cli import main

    result = CliRunner().invoke(main, ["convert", "mobilefacenet", "--fp32", "--int6-plugin", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "--int6-plugin applies to quantized models" in result.output
    assert not (tmp_path / "m.onnx").exists()


# ---- GPU: the plugin's kernel, and TensorRT where it exists -----------------------------------------------------


def run_ptx(ptx: str, x: np.ndarray) -> np.ndarray:
    """Launch the FakeQuantize PTX as TensorRT's AOT plugin would: (x, int32 count, y)."""
    from cuda.bindings import driver

    from qfsdk.runtime import cuda
    from qfsdk.runtime.plugins.ptx import BLOCK_SIZE, KERNEL_NAME

    def ok(result: tuple):
        error, *values = result
        assert error == driver.CUresult.CUDA_SUCCESS, error
        return values[0] if values else None

    stream = cuda.Stream()
    source, output = cuda.PinnedBuffer(x.shape, np.float32), cuda.PinnedBuffer(x.shape, np.float32)
    try:
        source.host[:] = x
        source.to_device(stream, source.nbytes)
        stream.synchronize()
        module = ok(driver.cuModuleLoadData(ptx.encode() + b"\0"))
        kernel = ok(driver.cuModuleGetFunction(module, KERNEL_NAME.encode()))
        args = [np.array([int(source.device)], np.uint64), np.array([x.size], np.int32),
                np.array([int(output.device)], np.uint64)]
        pointers = np.array([arg.ctypes.data for arg in args], np.uint64)
        blocks = (x.size + BLOCK_SIZE - 1) // BLOCK_SIZE
        ok(driver.cuLaunchKernel(kernel, blocks, 1, 1, BLOCK_SIZE, 1, 1, 0, 0, pointers.ctypes.data, 0))
        ok(driver.cuCtxSynchronize())
        ok(driver.cuModuleUnload(module))
        output.to_host(stream, output.nbytes)
        stream.synchronize()
        return output.host.copy()
    finally:
        source.close()
        output.close()
        stream.close()


@pytest.mark.gpu
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_plugin_kernel_equals_onnx_reference_on_gpu(gpu, tmp_path, symmetric):
    from qfsdk.runtime.plugins.ptx import fake_quantize_ptx

    proto = export_toy(OneQuantizer(6, symmetric).eval(), tmp_path / "plugin.onnx", act_plugin=True)
    attributes = {a.name: helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    x = toy_inputs(attributes["scale"])
    want = run_ort(tmp_path / "plugin.onnx", x)
    ptx = fake_quantize_ptx(attributes["scale"], attributes["zero_point"], attributes["qmin"], attributes["qmax"])
    np.testing.assert_array_equal(run_ptx(ptx, x), want)


KERNEL_HARNESS = r"""
#include "fakeQuantizeKernel.h"
#include <cstdio>
#include <cstdlib>
#include <vector>
int main(int argc, char** argv)  // in.bin out.bin count scale zero_point qmin qmax
{
    long const n = atol(argv[3]);
    std::vector<float> host(n);
    FILE* file = fopen(argv[1], "rb");
    if (fread(host.data(), sizeof(float), n, file) != size_t(n)) return 3;
    fclose(file);
    float *x, *y;
    cudaMalloc(&x, n * sizeof(float));
    cudaMalloc(&y, n * sizeof(float));
    cudaMemcpy(x, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    qfsdk::FakeQuantizeParams const params{strtof(argv[4], nullptr), atoi(argv[5]), atoi(argv[6]), atoi(argv[7])};
    if (qfsdk::launchFakeQuantize(x, y, n, params, 0) != cudaSuccess) return 2;
    cudaMemcpy(host.data(), y, n * sizeof(float), cudaMemcpyDeviceToHost);
    file = fopen(argv[2], "wb");
    fwrite(host.data(), sizeof(float), n, file);
    fclose(file);
    return 0;
}
"""


@pytest.mark.gpu
def test_cpp_plugin_kernel_equals_onnx_reference_on_gpu(gpu, tmp_path):
    """The C++ plugin's CUDA kernel (TensorRT-free part of runtime/plugins/cpp), built with nvcc."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc")
    cpp = Path(__file__).resolve().parents[1] / "runtime" / "plugins" / "cpp"
    (tmp_path / "main.cu").write_text(KERNEL_HARNESS)
    binary = tmp_path / "kernel_check"
    subprocess.run([nvcc, "-std=c++17", f"-I{cpp}", str(tmp_path / "main.cu"), str(cpp / "fakeQuantizeKernel.cu"),
                    "-o", str(binary)], check=True)
    proto = export_toy(OneQuantizer(6, False).eval(), tmp_path / "plugin.onnx", act_plugin=True)
    attributes = {a.name: helper.get_attribute_value(a) for a in proto.graph.node[0].attribute}
    x = toy_inputs(attributes["scale"])
    x.tofile(tmp_path / "in.bin")
    subprocess.run([str(binary), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), str(x.size),
                    repr(float(np.float32(attributes["scale"]))), str(attributes["zero_point"]), str(attributes["qmin"]),
                    str(attributes["qmax"])], check=True)
    got = np.fromfile(tmp_path / "out.bin", np.float32).reshape(x.shape)
    np.testing.assert_array_equal(got, run_ort(tmp_path / "plugin.onnx", x))


@pytest.mark.gpu
def test_tensorrt_engine_with_python_plugin(gpu, tmp_path):
    """UNVERIFIED here (no TensorRT on any machine we had): build with the plugin, compare with ONNX Runtime."""
    pytest.importorskip("tensorrt")
    import qfsdk
    from qfsdk.converters.qdq_export import export_quantized
    from qfsdk.models import create
    from qfsdk.runtime.backends.trt import TensorRTBackend
    from qfsdk.runtime.plugins import PYTHON_PLUGIN
    from qfsdk.runtime.trt_build import build_engine

    torch.manual_seed(0)
    model = create("mobilefacenet", pretrained=False)
    x = torch.randn(4, 3, *model.contract.input_size, generator=torch.Generator().manual_seed(1))
    quantized = qfsdk.calibrate(qfsdk.quantize(model, "w6a6"), x, method="minmax")
    onnx_path = export_quantized(quantized, tmp_path / "m.onnx", act_plugin=True)
    engine = tmp_path / "m.engine"
    build_engine(onnx_path, engine, max_batch=4, plugins=[PYTHON_PLUGIN])
    backend = TensorRTBackend(engine)
    try:
        got = backend.run(x.numpy())
    finally:
        backend.close()
    assert cosines(got, run_ort(onnx_path, x.numpy())).min() >= 0.999
