"""Atomic file output: a failed write never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL = ".partial"


def _umask() -> int:
    """The process umask (read without changing it where /proc says it)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_partials(target: Path) -> None:
    """Delete the ``.partial`` files of ``target`` left by killed writers (a live writer holds a lock on its own)."""
    for stale in target.parent.glob(f".{target.name}.*{PARTIAL}"):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # being written now
        else:
            stale.unlink(missing_ok=True)
            remove_stale_partials(stale)  # a writer nested inside the killed one leaves partials of the partial
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    The file gets the mode a plain ``open(path, "w")`` would (0666 less the umask); stale
    partial files of ``path`` from killed runs are removed first."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL, dir=target.parent)
    tmp = Path(tmp_name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the rename: marks the file as in use
        os.fchmod(fd, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, target)
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
