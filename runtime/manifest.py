"""Manifests of resumable outputs: a JSON file that says what a folder was made with, so a rerun
with the same settings resumes it and one with other settings is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Mapping

from .errors import QfsdkError
from .files import atomic_output

CHANGE = "{key}: {old!r} before, {new!r} now"
_ABSENT = object()  # a key missing on one side differs even from None (shown as None)


def read_manifest(path: Path, format_name: str) -> dict[str, Any] | None:
    """The manifest at ``path`` (None if there is no file), or a QfsdkError naming the file when it
    cannot be read or its ``format`` field is not ``format_name``."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QfsdkError(f"{path}: unreadable manifest ({exc}); delete the folder to start over") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise QfsdkError(f"{path}: not a {format_name} manifest")
    return manifest


def write_manifest(path: Path, manifest: Mapping[str, Any], *, sort_keys: bool = False) -> None:
    """Write ``manifest`` as indented JSON, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=sort_keys) + "\n")


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], *, form: str = CHANGE,
                     opaque: Collection[str] = ()) -> str:
    """Each key whose value differs (sorted, ``"; "``-joined) in ``form`` (fields ``key``, ``old``,
    ``new``), or by name alone for the ``opaque`` keys (hashes); empty when nothing differs."""
    changed = sorted(key for key in old.keys() | new.keys() if old.get(key, _ABSENT) != new.get(key, _ABSENT))
    return "; ".join(key if key in opaque else form.format(key=key, old=old.get(key), new=new.get(key)) for key in changed)
