"""TensorRT plugin ``qfsdk::FakeQuantize`` version 1 for TensorRT >= 10.9 (``tensorrt.plugin``).

UNTESTED WITH TENSORRT: no machine here has TensorRT. Its kernel (``ptx.py``) was run on a GPU through
cuda-python and matches the ONNX reference function bit for bit.

Importing this file registers the plugin; ``qfsdk build m.onnx -o m.engine --plugins <this file>`` does
that before parsing (``qfsdk.runtime.plugins.PYTHON_PLUGIN`` is its path). TensorRT's ONNX parser maps
each ``FakeQuantize`` node (op type + ``plugin_namespace`` + ``plugin_version``) to this plugin and
passes the node's ``scale``, ``zero_point``, ``qmin`` and ``qmax``. Only an ahead-of-time
implementation is defined: its PTX is baked into the engine, so running the engine needs neither
Python nor this file. Float32 only. Simulation: the node sits between layers that TensorRT would
otherwise fuse into int8 kernels.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import tensorrt as trt

from qfsdk.runtime.plugins.ptx import BLOCK_SIZE, KERNEL_NAME, fake_quantize_ptx

MIN_TENSORRT = (10, 9)
if tuple(int(part) for part in trt.__version__.split(".")[:2]) < MIN_TENSORRT:
    raise ImportError(
        f"the qfsdk Python plugin needs TensorRT >= {'.'.join(map(str, MIN_TENSORRT))} (this is {trt.__version__}); "
        "build runtime/plugins/cpp (libqfsdk_trt_plugins.so) for older TensorRT"
    )

import tensorrt.plugin as trtp  # noqa: E402  (after the version check: older releases lack it)

PLUGIN_ID = "qfsdk::FakeQuantize"


@trtp.register(PLUGIN_ID)
def fake_quantize_desc(x: trtp.TensorDesc, scale: float, zero_point: int, qmin: int, qmax: int) -> trtp.TensorDesc:
    """Output: same shape and type as the input."""
    return x.like()


@trtp.autotune(PLUGIN_ID)
def fake_quantize_autotune(x: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
    """The kernel reads and writes linear float32."""
    return [trtp.AutoTuneCombination("FP32, FP32", "LINEAR")]


@trtp.aot_impl(PLUGIN_ID)
def fake_quantize_aot(
    x: trtp.TensorDesc, scale: float, zero_point: int, qmin: int, qmax: int, outputs: Tuple[trtp.TensorDesc]
) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
    """One thread per element; the element count is the kernel's int32 scalar argument."""
    count = x.shape_expr.numel()
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(count, BLOCK_SIZE)
    launch.block_x = BLOCK_SIZE
    launch.shared_mem = 0
    extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(count)])
    return KERNEL_NAME.encode(), fake_quantize_ptx(scale, zero_point, qmin, qmax).encode(), launch, extra_args
