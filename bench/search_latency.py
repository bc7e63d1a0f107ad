"""Exact search latency at N references (default 1,000,000) x 432 values (SD1 search vectors), one
query at a time, on this machine: the floor any index must beat (docs/SCALE.md).

    nice python bench/search_latency.py [--refs 1000000] [--repeat 5] [--stored DIR]

With ``--stored DIR``, also the library's vector file at N records (written under DIR, ~1.8 GB at 1M,
deleted after): the time and peak-memory growth of reading every stored vector back
(:meth:`sdforensics.library.vecstore.VectorFile.lookup`, what a search does before its products),
against ``cat`` of the same file to /dev/null.

Rows: float32 matrix (numpy ``@``, one BLAS GEMV) and the float16 change matrix the library keeps
(``sdforensics.library.vectors._matvec``: float32 products a chunk at a time), each followed by the
top 32 (``argpartition``). Random unit-normal vectors (the latency does not depend on the values).
Median of ``--repeat`` queries; peak memory is the one matrix (1.73 GB float32 at 1M, then 0.86 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from sdforensics.library.vecstore import VectorFile
from sdforensics.library.vectors import SearchVector, _matvec
from sdforensics.model.architecture import block_map_of

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


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stored(n: int, where: Path, rng: np.random.Generator) -> None:
    """Write ``n`` SD1 vectors to a library's vector file, then read them all back by key."""
    folder = Path(tempfile.mkdtemp(dir=where))
    try:
        vf = VectorFile(folder, block_map_of("sd1"))
        keys = [hashlib.sha256(i.to_bytes(8, "little")).digest() for i in range(n)]
        t = time.perf_counter()
        for s in range(0, n, 65536):
            raw = rng.standard_normal((min(65536, n - s), vf.projector.dim), dtype=np.float32)
            present = np.ones(vf.projector.n_blocks, bool)
            vf.append([(k, SearchVector(r, present)) for k, r in zip(keys[s : s + 65536], raw, strict=True)])
        wrote = time.perf_counter() - t
        size = vf.path.stat().st_size
        t = time.perf_counter()
        subprocess.run(["cat", str(vf.path)], stdout=subprocess.DEVNULL, check=True)
        cat = time.perf_counter() - t
        order = rng.permutation(n)
        query = np.array([keys[i] for i in order], dtype="S32")
        before = rss_mb()
        t = time.perf_counter()
        got, _, found = vf.lookup(query)
        took = time.perf_counter() - t
        grew = rss_mb() - before
        assert found.all()
        print(f"\nvector file, {n:,} records ({size / 1e9:.2f} GB, written in {wrote:.1f} s): lookup of every key "
              f"{took:.2f} s (cat of the file, warm cache: {cat:.2f} s); peak RSS grew {grew:.0f} MB "
              f"(the float32 result alone is {got.nbytes / 1e6:.0f} MB)")
    finally:
        shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--refs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stored", type=Path, default=None, help="also time the vector file, written under this folder")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    if args.stored is not None:  # first, so its peak RSS is not hidden by the matrices' below
        stored(args.refs, args.stored, rng)
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
