"""What a file is, by its content: the one place qfsdk recognises checkpoints and models.

Every command that reads a checkpoint or model file asks :func:`identify` (or :func:`require`)
instead of trusting the suffix, so ``calibrate -o out`` (no extension) converts, and a PNG
renamed ``.pth`` is called a PNG image. Torch-free: safetensors headers and ONNX protobuf are
read with the standard library only, and only as far as needed to tell a complete file from a
truncated or foreign one.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from qfsdk.errors import CheckpointError

QUANTIZED_FORMAT = "qfsdk.quantized/1"  # the "format" metadata of `qfsdk calibrate`/`qat` checkpoints
QAT_STATE_FORMAT = "qfsdk.qat-state/1"  # the "format" metadata of a resumable QAT state

# Kinds a PyTorch weights file can be (zip archive of `torch.save`, or a legacy pickle).
TORCH_KINDS = ("torch", "pickle")
# Kinds holding a state dict of float weights (`--weights`).
WEIGHTS_KINDS = ("safetensors", *TORCH_KINDS)

# magic bytes at offset 0 -> description, for files qfsdk does not read but can name
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"ftrt", "a TensorRT engine"),
)
_SNIFF = 64  # bytes read to recognise magic numbers and text
_TEXT_LIMIT = 16 << 20  # text/JSON files larger than this are not parsed

# ONNX ModelProto fields: number -> protobuf wire type (0 varint, 2 length-delimited)
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_ONNX_GRAPH, _ONNX_IR_VERSION = 7, 1


@dataclass(frozen=True)
class FileKind:
    """What a file holds: ``name`` is a stable key, ``description`` reads "X is <description>"."""

    name: str
    description: str
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors metadata, when it has any



def identify(path: str | Path) -> FileKind:
    """What ``path`` is, judged by its bytes (never by its name)."""
    path = Path(path)
    if not path.exists():
        return FileKind("missing", "missing (no such file)")
    if path.is_dir():
        return FileKind("directory", "a directory")
    if not path.is_file():
        return FileKind("special", "not a regular file (a pipe or device)")
    size = path.stat().st_size
    if size == 0:
        return FileKind("empty", "an empty file (0 bytes)")
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF)
            return (_safetensors(handle, head, size) or _zip(path, head) or _pickle(head) or _onnx(handle, head, size)
                    or _magic(head) or _text(path, head, size) or FileKind("unknown", "data of no format qfsdk knows (random or damaged bytes?)"))
    except PermissionError:
        return FileKind("unreadable", "not readable (permission denied)")


def require(path: str | Path, kinds: Iterable[str], what: str, fix: str = "") -> FileKind:
    """``identify(path)`` if it is one of ``kinds``, else a one-line :class:`CheckpointError`:
    ``"<path> is <what it is>, not <what>; <fix>"``."""
    kind = identify(path)
    if kind.name in kinds:
        return kind
    if kind.name == "truncated":
        raise CheckpointError(f"{path} is {kind.description}: write it again (an interrupted copy or download?)")
    raise CheckpointError(f"{path} is {kind.description}, not {what}" + (f"; {fix}" if fix else ""))


def require_quantized_checkpoint(path: str | Path) -> dict[str, str]:
    """The metadata of a complete qfsdk quantized checkpoint, with the fields ``qfsdk.load`` needs
    present and well-formed; else one line naming the file and what to do."""
    kind = require(path, ["quantized"], "a qfsdk quantized checkpoint",
                   "write one with `qfsdk calibrate` or `qfsdk qat`")
    metadata = kind.metadata
    redo = "the checkpoint was edited or damaged: write it again with `qfsdk calibrate` or `qfsdk qat`"
    if not metadata.get("architecture"):
        raise CheckpointError(f"{path}: its metadata has no 'architecture'; {redo}")
    for key, required in (("quant_config", True), ("rebuild", False), ("contract", False)):
        if key not in metadata and not required:
            continue
        if key not in metadata:
            raise CheckpointError(f"{path}: its metadata has no {key!r}; {redo}")
        try:
            value = json.loads(metadata[key])
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: its metadata {key!r} is not valid JSON; {redo}") from None
        if not isinstance(value, dict) and not (value is None and not required):
            raise CheckpointError(f"{path}: its metadata {key!r} is not a JSON object; {redo}")
    return metadata


# ---- recognisers: each returns a FileKind or None -------------------------------------------------------------------


def _safetensors(handle: BinaryIO, head: bytes, size: int) -> FileKind | None:
    """8-byte little-endian header length, a JSON header, then the tensor data it describes."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", head[:8])
    if length > 100 << 20:
        return None
    if 8 + length > size:
        return FileKind("truncated", f"a truncated safetensors file ({size} bytes, its header alone needs {8 + length})")
    handle.seek(8)
    try:
        header = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return FileKind("truncated", "a damaged safetensors file (its header is not valid JSON)")
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", None) or {}
    try:
        data_end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return FileKind("truncated", "a damaged safetensors file (its header does not describe tensors)")
    if 8 + length + data_end != size:
        return FileKind("truncated", f"a truncated safetensors file ({size} bytes, its header describes {8 + length + data_end})")
    metadata = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
    if metadata.get("format") == QUANTIZED_FORMAT:
        return FileKind("quantized", "a qfsdk quantized checkpoint", metadata)
    if metadata.get("format") == QAT_STATE_FORMAT:
        return FileKind("qat-state", "a qfsdk QAT training state", metadata)
    return FileKind("safetensors", "a safetensors weights file", metadata)


def _zip(path: Path, head: bytes) -> FileKind | None:
    """``torch.save`` writes a zip archive holding ``<name>/data.pkl``; ``.npz`` is a zip of ``.npy``."""
    if not head.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return FileKind("truncated", "a truncated or damaged zip archive (a PyTorch checkpoint cut short?)")
    if any(name.endswith("data.pkl") for name in names):
        return FileKind("torch", "a PyTorch checkpoint")
    if names and all(name.endswith(".npy") for name in names):
        return FileKind("npz", "a NumPy .npz archive")
    return FileKind("zip", "a zip archive")


def _pickle(head: bytes) -> FileKind | None:
    """Pickle protocol 2..5 opens with PROTO (0x80) and its number (legacy ``torch.save``, ``.bin`` sets)."""
    if len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FileKind("pickle", "a Python pickle (a legacy PyTorch checkpoint or a data set)")
    return None


def _onnx(handle: BinaryIO, head: bytes, size: int) -> FileKind | None:
    """Walk the top-level fields of an ONNX ModelProto (skipping their contents)."""
    if not head or head[0] != (_ONNX_IR_VERSION << 3):
        return None
    handle.seek(0)
    seen = set()
    while handle.tell() < size:
        tag = _varint(handle)
        if tag is None:
            return FileKind("truncated", "a truncated ONNX model")
        number, wire = tag >> 3, tag & 7
        if _ONNX_FIELDS.get(number, wire) != wire or wire not in (0, 2) or number == 0:
            return None if not seen else FileKind("truncated", "a damaged ONNX model (unexpected bytes inside it)")
        value = _varint(handle)
        if value is None:
            return FileKind("truncated", "a truncated ONNX model")
        if wire == 2:
            if handle.tell() + value > size:
                return FileKind("truncated", f"a truncated ONNX model ({size} bytes, its contents need {handle.tell() + value})")
            handle.seek(value, os.SEEK_CUR)
        seen.add(number)
    if _ONNX_GRAPH not in seen:
        return FileKind("truncated", "a damaged ONNX model (it has no graph)")
    return FileKind("onnx", "an ONNX model")


def _varint(handle: BinaryIO) -> int | None:
    """A protobuf varint, or None at end of file / over 10 bytes."""
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    return None


def _magic(head: bytes) -> FileKind | None:
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return FileKind("image", "a WebP image")
    for magic, description in _MAGIC:
        if head.startswith(magic):
            return FileKind("image" if description.endswith("image") else "other", description)
    return None


def _text(path: Path, head: bytes, size: int) -> FileKind | None:
    """A JSON document or other UTF-8 text."""
    if size > _TEXT_LIMIT or b"\x00" in head:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    try:
        value: Any = json.loads(text)
    except json.JSONDecodeError:
        return FileKind("text", "a text file")
    kind = {dict: "object", list: "list"}.get(type(value), "value")
    return FileKind("json", f"a JSON {kind}")

