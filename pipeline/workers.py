"""Ordered parallel map with a bounded number of tasks in flight.

``Pool.imap`` queues every input at once and lets results pile up when the consumer is slower; here at most
``4 * workers`` chunks are in flight, so memory stays bounded (results carry image bytes) whatever the data
set size, and results come back in input order, so the output never depends on which worker finished first.
A worker process that dies (out-of-memory kill, decoder crash) raises `WorkerDied` instead of leaving the
consumer waiting forever for a result that will never come (``multiprocessing.Pool`` silently replaces the
dead process and loses its task); hence ``concurrent.futures``, whose pool notices dead workers.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any


class WorkerDied(RuntimeError):
    """A worker process ended without returning its results (killed, e.g. by the out-of-memory killer, or
    crashed)."""


def _run_batch(fn: Callable[[Any], Any], batch: list[Any]) -> list[Any]:
    return [fn(x) for x in batch]


class OrderedPool:
    """``map(fn, items)`` in-process for one worker, else over a fork pool of ``workers`` processes."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            methods = mp.get_all_start_methods()
            ctx = mp.get_context("fork" if "fork" in methods else None)  # fork: no re-import of torch per worker
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
            # Fork every worker now, before progress bars start tqdm's monitor thread: a fork while another
            # thread holds a lock (tqdm's, logging's, stdout's) leaves the child waiting on it forever.
            self._pool.submit(int).result()

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunk: int = 8) -> Iterator[Any]:
        """Results of ``fn`` over ``items``, in order; ``fn`` must be module-level (it is pickled)."""
        if self._pool is None:
            yield from map(fn, items)
            return
        pool = self._pool
        it = iter(items)
        inflight: deque[Future] = deque()

        def submit() -> None:
            batch = list(islice(it, chunk))
            if batch:
                inflight.append(pool.submit(_run_batch, fn, batch))

        try:
            for _ in range(4 * self.workers):
                submit()
            while inflight:
                results = inflight.popleft().result()
                submit()
                yield from results
        except BrokenProcessPool as e:
            raise WorkerDied(
                f"a worker process died without returning its results (killed, e.g. by the out-of-memory "
                f"killer, or crashed) while running {getattr(fn, '__name__', fn)}"
            ) from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop now: drop queued tasks and kill the workers (the executor has no public kill before 3.14)."""
        if self._pool is not None:
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            for p in procs:
                p.join()
            self._pool = None

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.terminate()
