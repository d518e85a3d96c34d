"""A Triton Inference Server model repository for an exported model or a TensorRT engine."""

from __future__ import annotations

import shutil
from pathlib import Path

from qfsdk.errors import QfsdkError
from qfsdk.runtime.contract import FaceContract
from qfsdk.runtime.files import atomic_output

PLATFORMS = {".onnx": ("onnxruntime_onnx", "model.onnx"), ".engine": ("tensorrt_plan", "model.plan"), ".plan": ("tensorrt_plan", "model.plan")}
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def config_pbtxt(name: str, platform: str, contract: FaceContract, max_batch_size: int, input_name: str, output_name: str,
                 dtype: str = "float32") -> str:
    """``config.pbtxt`` with the model's dims (batch dimension implied) and dynamic batching."""
    triton_type = DTYPES[dtype]
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: {triton_type}
    dims: [ 3, {contract.height}, {contract.width} ]
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: {triton_type}
    dims: [ {contract.embedding_size} ]
  }}
]
dynamic_batching {{ }}
instance_group [ {{ kind: {"KIND_GPU" if platform == "tensorrt_plan" else "KIND_AUTO"} }} ]
"""


def write_triton_repo(repo: str | Path, model_file: str | Path, contract: FaceContract, *, name: str | None = None,
                      max_batch_size: int = 64, input_name: str = "input", output_name: str = "embedding",
                      dtype: str = "float32") -> Path:
    """Write ``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.onnx|model.plan``; returns the model folder."""
    model_file = Path(model_file)
    if model_file.suffix not in PLATFORMS:
        raise QfsdkError(f"{model_file}: Triton repositories take .onnx models or TensorRT .engine/.plan files")
    platform, filename = PLATFORMS[model_file.suffix]
    name = name or model_file.stem
    folder = Path(repo) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / "1" / filename) as tmp:
        shutil.copyfile(model_file, tmp)
    with atomic_output(folder / "config.pbtxt") as tmp:
        tmp.write_text(config_pbtxt(name, platform, contract, max_batch_size, input_name, output_name, dtype))
    return folder
