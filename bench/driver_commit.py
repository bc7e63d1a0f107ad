"""The one writer's cost per file (docs/SCALE.md, "what breaks first"): how many files a second the
driver of `sdf index --engine ray` can commit, whatever the cluster's size.

    nice python bench/driver_commit.py [--commits 200] [--width 16] [--out /work/scratch/scale/commit]

1. ``Library.add`` of one real fingerprint (a width-1/W synthetic SD1.5 model) under ``--commits``
   names into a fresh library: one transaction each (``.sdfp`` written and fsync'd, SQLite WAL commit
   with ``synchronous=FULL``, the search vector appended);
2. the baseline in the same run: writing and fsyncing a file of the same size, and one of 9.60 MB
   (a full-size SD1.5 fingerprint, bench/RESULTS.md), on the same disk.
Prints milliseconds per file (median) and files per second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

from sdforensics.api import fingerprint_model
from sdforensics.library.store import Library
from sdforensics.synth.specs import family_specs, write_safetensors

FULL_SD15 = 9_600_000


def write_fsync(path: Path, data: bytes) -> float:
    t = time.perf_counter()
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("/work/scratch/scale/commit"))
    args = ap.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        spec = family_specs("sd1", width=args.width, finetunes=1, seed=4)["ft1"]
        _, fp = fingerprint_model(write_safetensors(spec, out / "m.safetensors"), device="cpu")
        lib_dir = out / "lib"
        lib_dir.mkdir()
        lib = Library(lib_dir)
        times = []
        for i in range(args.commits):
            t = time.perf_counter()
            lib.add(fp, f"ref{i:06d}")
            times.append(time.perf_counter() - t)
        size = Library(lib_dir).get("ref000000").path.stat().st_size
        same = [write_fsync(out / f"same{i}.bin", os.urandom(size)) for i in range(20)]
        full = [write_fsync(out / f"full{i}.bin", os.urandom(FULL_SD15)) for i in range(20)]
        k = max(1, min(20, len(times) // 4))
        rows = [(f"Library.add, one transaction ({size / 1e6:.2f} MB .sdfp), all", statistics.median(times)),
                (f"Library.add, first {k}", statistics.median(times[:k])),
                (f"Library.add, last {k}", statistics.median(times[-k:])),
                (f"baseline: write + fsync {size / 1e6:.2f} MB", statistics.median(same)),
                ("baseline: write + fsync 9.60 MB (full-size SD1.5 fingerprint)", statistics.median(full))]
        print(f"\n{args.commits} commits into one library; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
        print("| step | median ms | per second |\n|---|---|---|")
        for label, dt in rows:
            print(f"| {label} | {dt * 1e3:.1f} | {1 / dt:.0f} |")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
