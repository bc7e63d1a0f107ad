"""Where per-file work runs: an :class:`Engine` maps a function over tasks and yields the results.

The function and its tasks and results are plain picklable values (a path string in, a frozen
dataclass out), so an engine may run them in this process, in a pool of processes
(:class:`LocalEngine`), or on a cluster (a Ray engine only needs ``map``). Results come back as
they finish, not in task order; the caller (one writer) commits each as it arrives.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    """Runs ``fn`` over ``tasks``; yields each result as soon as it is ready (any order)."""

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]: ...


class LocalEngine:
    """``jobs`` worker processes on this machine (1: in this process, no pool).

    Workers are started with ``spawn`` (a fresh interpreter: no torch or BLAS thread state copied
    by ``fork``), and at most ``2 * jobs`` tasks are in flight, so a folder of 100,000 files does not
    queue 100,000 futures. Each worker runs with one thread per core it is given.
    """

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs))

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        if self.jobs == 1:
            for task in tasks:
                yield fn(task)
            return
        ctx = multiprocessing.get_context("spawn")
        pending = iter(tasks)
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx)
        finished = False
        running: set[Future[R]] = set()
        try:
            while True:
                for task in itertools.islice(pending, 2 * self.jobs - len(running)):
                    running.add(pool.submit(fn, task))
                if not running:
                    break
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
            finished = True
        finally:
            # Stopped early (Ctrl-C, an error in the caller): queued tasks are dropped and the
            # workers are not waited for; the files in flight are simply not committed.
            pool.shutdown(wait=finished, cancel_futures=not finished)

