"""The model contract as stored in ONNX ``metadata_props`` or a TensorRT engine's sidecar.

ONNX metadata is read straight from the file's protobuf encoding (no onnx, ONNX Runtime or
OpenVINO needed): only the top-level ``ModelProto`` fields are walked, the graph is skipped.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Iterator

from .contract import ModelContract, contract_from_json
from .errors import ContractMissingError, ModelFileError  # noqa: F401  (re-exported: the model-file errors)

CONTRACT_KEY = "qfsdk.contract"
VERSION_KEY = "qfsdk.version"
ARCHITECTURE_KEY = "qfsdk.architecture"
QUANT_CONFIG_KEY = "qfsdk.quant_config"  # the quantization config of a quantized file (JSON)
IMPORTED_PREFIX = "imported:"  # the architecture of a `qfsdk import`-ed model: this prefix + its file stem
ENGINE_SUFFIXES = (".engine", ".plan")

_METADATA_PROPS = 14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}


def contract_from_metadata(metadata: dict[str, str], source: str | Path) -> ModelContract:
    """Parse the contract (of the task it names) from a model's custom metadata map."""
    text = metadata.get(CONTRACT_KEY)
    if text is None:
        raise ContractMissingError(
            f"{source}: no '{CONTRACT_KEY}' metadata; export the model with `qfsdk convert` so it carries its preprocessing contract"
        )
    try:
        return contract_from_json(text)
    except (ValueError, TypeError) as exc:  # broken JSON (a JSONDecodeError is a ValueError) or impossible values
        raise ModelFileError(f"{source}: its '{CONTRACT_KEY}' metadata is not a valid contract ({exc}); "
                             "re-export the model with `qfsdk convert` (or `qfsdk import`)") from None


def _varint(buf: mmap.mmap, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _length_delimited(buf: mmap.mmap, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, stop) of each length-delimited field of the message in ``buf[start:stop]``."""
    pos = start
    while pos < stop:
        key, pos = _varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(buf, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(buf, pos)
            yield number, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != stop:
        raise ValueError("truncated message")


def metadata_of(proto: object) -> dict[str, str]:
    """The ``metadata_props`` of a parsed ONNX ``ModelProto`` as a dict (what :func:`read_onnx_metadata`
    reads from a file without parsing it)."""
    return {p.key: p.value for p in proto.metadata_props}  # type: ignore[attr-defined]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    path = Path(path)
    metadata: dict[str, str] = {}
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            for number, start, stop in _length_delimited(buf, 0, len(buf)):
                if number == _METADATA_PROPS:
                    entry = {n: buf[s:e].decode() for n, s, e in _length_delimited(buf, start, stop)}
                    metadata[entry.get(1, "")] = entry.get(2, "")
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, IndexError, UnicodeDecodeError):
        raise ModelFileError(f"{path}: not an ONNX model file") from None
    return metadata


def read_onnx_contract(path: str | Path) -> ModelContract:
    """The contract stored in an ONNX file's metadata."""
    return contract_from_metadata(read_onnx_metadata(path), path)


def read_contract(path: str | Path) -> ModelContract:
    """The contract of a model artifact: ONNX metadata, or the sidecar JSON of a TensorRT engine."""
    from .engine import read_engine_info

    path = Path(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return read_engine_info(path).contract
    return read_onnx_contract(path)
