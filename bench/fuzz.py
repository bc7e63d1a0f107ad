"""Long fuzz run over the checkpoint readers; prints a summary table.

Usage (from the repository root)::

    python bench/fuzz.py --inputs 200000                 # the long run (all targets, all cores)
    python bench/fuzz.py --inputs 5000 --targets pickle,zip --workers 1
    python bench/fuzz.py --replay zip:12345 --out /tmp/repro   # rebuild one input, show the traceback

Inputs are numbered ``--start .. --start+--inputs-1``; input ``n`` goes to target
``targets[n % len(targets)]`` and is built from ``random.Random(f"{target}:{n}")``, so any input
is rebuilt exactly by ``--replay TARGET:N`` (the targets and the contract are in
``tests/fuzz_targets.py``). Each worker process caps its address space (``--mem-gb``, default 3)
and each input's wall time (``--timeout``, default 10 s); an input that exceeds either, raises
anything but ``SdfError``, yields a tensor unlike its info, or runs a planted payload, is a bug.
Failing inputs are copied under ``--out`` (default ``$TMPDIR/sdf-fuzz-out``), first few per signature.

The table: per target, inputs run, accepted (opened and read), rejected (clean ``SdfError``),
unexpected (bugs), the slowest input and its number; then wall time, inputs/s, peak RSS of the
largest worker, and every distinct bug signature with a replay command. Exit status 1 when any
bug was found.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHUNK = 250
KEEP_PER_SIGNATURE = 3


def _init(mem_gb: float, workroot: str) -> None:
    tempfile.tempdir = workroot  # seed folders and markers land there, removed at the end
    if mem_gb > 0:
        cap = int(mem_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import fuzz_targets

    fuzz_targets.build_corpus()


def _chunk(names: list[str], first: int, count: int, timeout: float, workroot: str) -> tuple[list[tuple], int]:
    """Run inputs first..first+count-1; returns compact outcomes and this worker's peak RSS (KiB)."""
    import fuzz_targets as ft

    work = Path(workroot) / f"w{os.getpid()}"
    rows = []
    for n in range(first, first + count):
        target = names[n % len(names)]
        try:
            o = ft.run_one(target, n, work, timeout=timeout)
            rows.append((o.target, o.seed, o.status, o.error, o.where, o.seconds))
        except Exception as err:  # noqa: BLE001 - a harness failure (building the input) is reported too
            rows.append((target, n, "harness", f"{type(err).__name__}: {err}", "", 0.0))
    return rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _save(target: str, n: int, out: Path) -> None:
    import fuzz_targets as ft

    ft.run_one(target, n, out / ".work", timeout=30, keep=out)
    shutil.rmtree(out / ".work", ignore_errors=True)


def replay(spec: str, out: Path) -> int:
    """Rebuild input ``TARGET:N`` under ``out/TARGET-N`` and run the contract on it, with traceback."""
    import random

    import fuzz_targets as ft

    target, _, num = spec.partition(":")
    ft.build_corpus()
    dest = out / f"{target}-{num}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    path = ft.TARGETS[target].build(random.Random(f"{target}:{int(num)}"), dest)
    print(f"input: {path}")
    try:
        print(ft.exercise(path))
    except Exception:  # noqa: BLE001 - show the traceback of the bug being replayed
        traceback.print_exc()
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=200_000)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--mem-gb", type=float, default=3.0)
    ap.add_argument("--targets", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sdf-fuzz-out")
    ap.add_argument("--workdir", default="/dev/shm" if Path("/dev/shm").is_dir() else "/tmp")
    ap.add_argument("--replay", default="", help="TARGET:N: rebuild one input, run it, show the traceback")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.out)

    import fuzz_targets as ft

    names = args.targets.split(",") if args.targets else list(ft.TARGETS)
    unknown = set(names) - set(ft.TARGETS)
    if unknown:
        ap.error(f"unknown targets {sorted(unknown)}; known: {', '.join(ft.TARGETS)}")
    workroot = tempfile.mkdtemp(prefix="sdf-fuzz-", dir=args.workdir)
    tempfile.tempdir = workroot
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    slowest: dict[str, tuple[float, int]] = {}
    bugs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    peak = 0
    t0 = time.perf_counter()
    done = 0
    last_report = t0
    todo = []
    n = args.start
    end = args.start + args.inputs
    while n < end:
        todo.append((n, min(CHUNK, end - n)))
        n += CHUNK
    with ProcessPoolExecutor(args.workers, initializer=_init, initargs=(args.mem_gb, workroot)) as pool:
        pending = set()
        it = iter(todo)
        for first, count in it:
            pending.add(pool.submit(_chunk, names, first, count, args.timeout, workroot))
            if len(pending) >= 4 * args.workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                rows, rss = fut.result()
                peak = max(peak, rss)
                for target, num, status, error, where, secs in rows:
                    done += 1
                    stats[target][status] += 1
                    if secs > slowest.get(target, (-1.0, 0))[0]:
                        slowest[target] = (secs, num)
                    if status in ("bug", "harness"):
                        sig = f"{target} {error.split(':', 1)[0]} @ {where}"
                        bugs[sig].append((num, error))
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_chunk, names, nxt[0], nxt[1], args.timeout, workroot))
            now = time.perf_counter()
            if now - last_report > 30:
                last_report = now
                n_bugs = sum(len(v) for v in bugs.values())
                print(f"[{now - t0:7.0f} s] {done:,} inputs, {done / (now - t0):.0f}/s, {n_bugs} unexpected",
                      file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    for sig, hits in bugs.items():
        for num, _ in hits[:KEEP_PER_SIGNATURE]:
            _save(sig.split(" ", 1)[0], num, args.out)
    shutil.rmtree(workroot, ignore_errors=True)
    print(_table(stats, slowest, wall, peak, bugs, args))
    return 1 if bugs else 0


def _table(stats: dict[str, Counter[str]], slowest: dict[str, tuple[float, int]], wall: float, peak_kib: int,
           bugs: dict[str, list[tuple[int, str]]], args: argparse.Namespace) -> str:
    lines = [f"{'target':<12} {'inputs':>9} {'accepted':>9} {'rejected':>9} {'unexpected':>10} "
             f"{'max s/input':>11} {'slowest #':>10}"]
    total: Counter[str] = Counter()
    for target in sorted(stats):
        c = stats[target]
        total.update(c)
        secs, num = slowest[target]
        n = sum(c.values())
        bad = c["bug"] + c["harness"]
        lines.append(f"{target:<12} {n:>9,} {c['accepted']:>9,} {c['rejected']:>9,} {bad:>10,} {secs:>11.3f} "
                     f"{num:>10}")
    n_all = sum(total.values())
    worst = max(slowest.values(), default=(0.0, 0))
    lines.append(f"{'all':<12} {n_all:>9,} {total['accepted']:>9,} {total['rejected']:>9,} "
                 f"{total['bug'] + total['harness']:>10,} {worst[0]:>11.3f}")
    lines.append("")
    lines.append(f"wall time {wall:,.0f} s, {n_all / max(wall, 1e-9):,.0f} inputs/s, {args.workers} workers, "
                 f"peak RSS {peak_kib / 1024:,.0f} MiB (largest worker), address-space cap {args.mem_gb} GB, "
                 f"timeout {args.timeout} s/input")
    if bugs:
        lines.append("")
        lines.append("unexpected exceptions (signature: count, first input, replay):")
        for sig, hits in sorted(bugs.items(), key=lambda kv: -len(kv[1])):
            num, err = hits[0]
            target = sig.split(" ", 1)[0]
            lines.append(f"  {sig}: {len(hits)}x, e.g. #{num}: {err[:160]}")
            lines.append(f"      python bench/fuzz.py --replay {target}:{num}")
    else:
        lines.append("no unexpected exceptions")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
