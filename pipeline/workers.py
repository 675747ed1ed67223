"""Ordered parallel map with a bounded number of tasks in flight.

``Pool.imap`` queues every input at once and lets results pile up when the consumer is slower; here at most
``4 * workers`` chunks are in flight, so memory stays bounded (results carry image bytes) whatever the data
set size, and results come back in input order, so the output never depends on which worker finished first.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any


def _run_batch(fn: Callable[[Any], Any], batch: list[Any]) -> list[Any]:
    return [fn(x) for x in batch]


class OrderedPool:
    """``map(fn, items)`` in-process for one worker, else over a fork pool of ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else None)  # fork: no re-import of torch per worker
            self._pool = ctx.Pool(self.workers)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunk: int = 8) -> Iterator[Any]:
        """Results of ``fn`` over ``items``, in order; ``fn`` must be module-level (it is pickled)."""
        if self._pool is None:
            yield from map(fn, items)
            return
        it = iter(items)
        inflight: deque = deque()

        def submit() -> None:
            batch = list(islice(it, chunk))
            if batch:
                inflight.append(self._pool.apply_async(_run_batch, (fn, batch)))

        for _ in range(4 * self.workers):
            submit()
        while inflight:
            results = inflight.popleft().get()
            submit()
            yield from results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def terminate(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
