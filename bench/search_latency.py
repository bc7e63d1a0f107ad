"""Exact search latency at N references (default 1,000,000) x 432 values (SD1 search vectors), one
query at a time, on this machine: the floor any index must beat (docs/SCALE.md).

    nice python bench/search_latency.py [--refs 1000000] [--repeat 5]

Rows: float32 matrix (numpy ``@``, one BLAS GEMV) and the float16 change matrix the library keeps
(``sdforensics.library.vectors._matvec``: float32 products a chunk at a time), each followed by the
top 32 (``argpartition``). Random unit-normal vectors (the latency does not depend on the values).
Median of ``--repeat`` queries; peak memory is the one matrix (1.73 GB float32 at 1M, then 0.86 GB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from sdforensics.library.vectors import _matvec

DIM = 432
TOP = 32


def fill(n: int, dtype: type, rng: np.random.Generator) -> np.ndarray:
    m = np.empty((n, DIM), dtype)
    for s in range(0, n, 65536):
        m[s : s + 65536] = rng.standard_normal((min(65536, n - s), DIM), dtype=np.float32)
    return m


def query(matvec: object, m: np.ndarray, q: np.ndarray) -> float:
    t = time.perf_counter()
    scores = matvec(m, q)  # type: ignore[operator]
    top = np.argpartition(-scores, TOP)[:TOP]
    top[np.argsort(-scores[top])]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, dtype, fn in (("float32, numpy @ (BLAS GEMV)", np.float32, lambda m, q: m @ q),
                             ("float16 change matrix, library _matvec", np.float16, _matvec)):
        m = fill(args.refs, dtype, rng)
        q = rng.standard_normal(DIM).astype(np.float32)
        query(fn, m, q)  # warm (page faults, BLAS threads)
        times = [query(fn, m, rng.standard_normal(DIM).astype(np.float32)) for _ in range(args.repeat)]
        rows.append((label, m.nbytes / 1e9, statistics.median(times), min(times), max(times)))
        del m
    print(f"\n{args.refs:,} references x {DIM} values, top {TOP}; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; median of {args.repeat} queries\n")
    print("| matrix | GB in memory | median ms | min ms | max ms |\n|---|---|---|---|---|")
    for label, gb, med, lo, hi in rows:
        print(f"| {label} | {gb:.2f} | {med * 1e3:.0f} | {lo * 1e3:.0f} | {hi * 1e3:.0f} |")


if __name__ == "__main__":
    main()
