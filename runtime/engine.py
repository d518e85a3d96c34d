"""The sidecar JSON beside a TensorRT engine: where it was built, from what, and its contract.

An engine runs only with the TensorRT version and GPU compute capability it was built for;
the sidecar lets the runtime say so before TensorRT fails with a cryptic error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .contract import ModelContract, contract_from_dict
from .files import atomic_output
from .errors import ModelFileError

log = logging.getLogger(__name__)


class EngineMismatchError(ModelFileError):
    """An engine was built for another TensorRT version or GPU."""


@dataclass(frozen=True)
class EngineInfo:
    """What ``qfsdk build`` records beside an engine."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    source_onnx: str
    source_onnx_sha256: str
    max_batch: int
    contract: ModelContract
    qfsdk_version: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "contract": self.contract.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineInfo":
        values = dict(data)
        values["compute_capability"] = tuple(values["compute_capability"])
        values["contract"] = contract_from_dict(values["contract"])
        return cls(**values)


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_engine_info(engine: str | Path, info: EngineInfo) -> Path:
    """Write the sidecar atomically; returns its path."""
    path = sidecar_path(engine)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def read_engine_info(engine: str | Path) -> EngineInfo:
    """Read and validate the sidecar of ``engine``."""
    path = sidecar_path(engine)
    if not path.is_file():
        raise ModelFileError(f"{engine}: no sidecar {path.name} beside it; build the engine with `qfsdk build`")
    try:
        return EngineInfo.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a valid engine sidecar ({exc}); rebuild with `qfsdk build`") from None


def check_compatible(info: EngineInfo, engine: str | Path, tensorrt_version: str, gpu_name: str,
                     compute_capability: tuple[int, int]) -> None:
    """Raise :class:`EngineMismatchError` if ``engine`` cannot run with this TensorRT and GPU."""
    built = f"TensorRT {info.tensorrt_version} on {info.gpu_name} (compute capability {_cc(info.compute_capability)})"
    here = f"TensorRT {tensorrt_version} on {gpu_name} (compute capability {_cc(compute_capability)})"
    if info.tensorrt_version != tensorrt_version or tuple(info.compute_capability) != tuple(compute_capability):
        raise EngineMismatchError(
            f"{engine} was built with {built}; this machine has {here}. Engines are specific to both: "
            f"rebuild it here with `qfsdk build {info.source_onnx} -o {engine}`"
        )
    if info.gpu_name != gpu_name:
        log.warning("%s was built on %s and runs on %s (same compute capability)", engine, info.gpu_name, gpu_name)


def _cc(capability: tuple[int, int]) -> str:
    return f"{capability[0]}.{capability[1]}"
