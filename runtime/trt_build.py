"""Build a TensorRT engine from a qfsdk ONNX file (strongly typed: precision comes from the Q/DQ graph)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Sequence

from . import cuda
from ._version import __version__
from .backends.trt import import_tensorrt, load_plugins
from .engine import EngineInfo, write_engine_info
from .errors import QfsdkError
from .files import atomic_output, sha256_file
from .metadata import ModelFileError, read_onnx_contract

log = logging.getLogger(__name__)


def has_fast_int8(capability: tuple[int, int]) -> bool:
    """dp4a/int8 tensor cores: compute capability 6.1 or >= 7.0 (not Nano 5.3, TX2 6.2, P100 6.0)."""
    return capability == (6, 1) or capability >= (7, 0)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    max_batch: int = 32,
    timing_cache: str | Path | None = None,
    plugins: Sequence[str | Path] = (),
    fp16_fallback: bool = False,
    workspace_gib: int = 4,
) -> EngineInfo:
    """Build ``engine_path`` (and its sidecar) from ``onnx_path`` for this GPU; atomic.

    One optimization profile covers batch 1..``max_batch`` (optimized for ``max_batch``). Without
    ``fp16_fallback`` the network is strongly typed: Q/DQ regions run int8, the rest in the ONNX
    dtype. ``fp16_fallback`` builds a weakly typed network that may run float layers in fp16
    (TensorRT <= 10; a float ONNX then gives an fp16 engine).
    """
    trt = import_tensorrt("`qfsdk build`")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    contract = read_onnx_contract(onnx_path)
    gpu, capability = cuda.device_info()
    logger = trt.Logger(trt.Logger.INFO if log.isEnabledFor(logging.INFO) else trt.Logger.WARNING)
    load_plugins(trt, logger, plugins)
    builder = trt.Builder(logger)
    network = builder.create_network(0 if fp16_fallback else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    quantized = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
    if quantized and not has_fast_int8(capability):
        raise QfsdkError(
            f"{gpu} (compute capability {capability[0]}.{capability[1]}) has no fast int8: "
            f"build the float ONNX with --fp16-fallback instead"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    if fp16_fallback:
        _allow_fp16(trt, config, quantized)
    profile = builder.create_optimization_profile()
    name, (height, width) = network.get_input(0).name, contract.input_size
    profile.set_shape(name, (1, 3, height, width), (max_batch, 3, height, width), (max_batch, 3, height, width))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise QfsdkError(f"TensorRT could not build an engine from {onnx_path}; rerun with `qfsdk -v build` for its log")
    with atomic_output(engine_path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    if timing_cache:
        with atomic_output(timing_cache) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    info = EngineInfo(trt.__version__, gpu, capability, str(onnx_path), sha256_file(onnx_path), max_batch, contract, __version__)
    write_engine_info(engine_path, info)
    return info


def _allow_fp16(trt: ModuleType, config: object, quantized: bool) -> None:
    """Weakly typed precision flags: fp16 for float layers (and int8 for Q/DQ layers)."""
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise QfsdkError(
            f"--fp16-fallback needs TensorRT <= 10 (this is {trt.__version__}, strongly typed only): "
            "export the float regions in fp16 instead"
        )
    config.set_flag(trt.BuilderFlag.FP16)
    if quantized:
        config.set_flag(trt.BuilderFlag.INT8)
