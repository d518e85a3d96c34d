"""Work computed in threads a few items ahead of its consumer (decoding, detection), kept in order."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ahead(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """``map(fn, items)`` in order, computed by ``workers`` threads at most ``ahead`` items in advance."""
    source = iter(items)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="qfsdk-decode")
    pending: deque[Future[R]] = deque(pool.submit(fn, item) for _, item in zip(range(ahead), source))
    try:
        while pending:
            done = pending.popleft().result()
            for item in source:  # refill one
                pending.append(pool.submit(fn, item))
                break
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
