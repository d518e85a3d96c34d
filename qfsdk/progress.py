"""Progress bars that suit where they are written: every qfsdk progress bar is made here.

On a terminal a bar refreshes as tqdm's do (several times a second). Written into a log file or a
pipe (``qfsdk qat ... 2> train.log``), every refresh is a new line of text, so there it refreshes at
most once every :data:`LOG_INTERVAL` seconds, plus its first and last state.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL = 20.0  # seconds between refreshes when the stream is not a terminal: 3 per minute


def is_terminal(stream: TextIO | None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, ...)`` with the same arguments; off a terminal, at most one refresh per :data:`LOG_INTERVAL`."""
    if not is_terminal(kwargs.get("file")):
        interval = max(float(kwargs.get("mininterval", 0.0)), LOG_INTERVAL)
        kwargs.update(mininterval=interval, maxinterval=max(float(kwargs.get("maxinterval", 0.0)), interval))
    return tqdm(iterable, *args, **kwargs)
