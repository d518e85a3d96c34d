"""Run a native command under valgrind's memcheck and assert it is clean (test support, no tests here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import pytest

SUPPRESSIONS = Path(__file__).resolve().parents[1] / "runtime" / "native" / "valgrind.supp"


def assert_memcheck_clean(command: Sequence[object], timeout: float, options: Sequence[str] = ()) -> None:
    """``command`` exits 0 under memcheck with no errors and no definitely or indirectly lost bytes."""
    if not shutil.which("valgrind"):
        pytest.skip("valgrind not installed")
    valgrind = ["valgrind", "--tool=memcheck", *options, "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                "--error-exitcode=99", f"--suppressions={SUPPRESSIONS}"]
    done = subprocess.run([*valgrind, *map(str, command)], capture_output=True, text=True, timeout=timeout)
    summary = "\n".join(line for line in done.stderr.splitlines() if "lost:" in line or "ERROR SUMMARY" in line)
    assert done.returncode == 0, done.stderr[-6000:]
    no_leaks = "definitely lost: 0 bytes" in summary and "indirectly lost: 0 bytes" in summary
    assert no_leaks or "All heap blocks were freed" in done.stderr, summary
    assert "ERROR SUMMARY: 0 errors" in summary, summary
