"""Progress bars that suit where they are written: every qfsdk progress bar is made here.

On a terminal a bar refreshes as tqdm's do (several times a second). Written into a log file or a
pipe (``qfsdk qat ... 2> train.log``), every refresh is a new line of text, so there a bar writes a
handful of lines: its first and last state, and in between a refresh only after at least
:data:`LOG_INTERVAL` seconds *and* :data:`LOG_STEP` of its total (at most 20 lines however long the
run); the numbers shown after the bar (``set_postfix``) wait for the next such refresh.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL = 20.0  # seconds between refreshes when the stream is not a terminal
LOG_STEP = 0.05  # share of the total between refreshes when the stream is not a terminal


class _LogBar(tqdm):
    """A bar for a log: ``set_postfix``/``set_description`` never force a refresh of their own."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, ...)`` with the same arguments; off a terminal, a handful of lines (see the module)."""
    if is_terminal(kwargs.get("file")):
        return tqdm(iterable, *args, **kwargs)
    interval = max(float(kwargs.get("mininterval", 0.0)), LOG_INTERVAL)
    total = kwargs.get("total")
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    # no maxinterval: tqdm's monitor thread would refresh (and drop miniters to 1) once it passes
    kwargs.update(mininterval=interval, maxinterval=float("inf"))
    if total:
        kwargs["miniters"] = max(1, int(total * LOG_STEP))
    return _LogBar(iterable, *args, **kwargs)
