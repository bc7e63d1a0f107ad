"""Process-level tuning for streaming multi-GB checkpoints.

glibc serves every allocation above 32 MB with a fresh ``mmap``, so each large tensor buffer
is page-faulted and zero-filled again: measured here, converting one 15M-value fp16 tensor to
fp32 took 72 ms with fresh pages and 36 ms with reused ones, and a 60 MB buffer 95 ms vs 17 ms.
Raising the mmap threshold lets freed tensor buffers be reused from the heap. Elsewhere (not
glibc), this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(threshold: int = 1 << 30) -> bool:
    """Keep buffers up to ``threshold`` bytes on the heap for reuse; True when applied."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2 * threshold) == 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU operators on ``n`` threads inside the block, then restore the setting.

    While a checkpoint streams, two hashing threads already keep the cores busy; torch's own
    OpenMP pool on top of them only spins waiting for cores (measured on 2 cores: 19.1 s of CPU
    for an analysis with the default pool, 12.3 s with one thread, and a shorter wall time).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run numpy's BLAS on ``n`` threads inside the block, then restore the setting.

    The library comparison multiplies many small matrices (16 references x one layer's sketch):
    OpenBLAS's threads cost more to wake and spin than they save (measured on 2 cores, 50
    references: 2.4 s of CPU and 1.2 s of wall time with two threads, 1.0 s of both with one).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield
