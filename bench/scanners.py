"""The scan corpus through ``sdf scan``, picklescan, modelscan and fickling; prints one table.

Usage (from the repository root, in the project venv)::

    python bench/scanners.py                # writes under bench/out/scanners/
    python bench/scanners.py --jobs 2

The corpus is ``tests/scan_corpus.py`` (generated, nothing committed); whether each file runs
code under ``torch.load(weights_only=False)`` is checked there in a forked subprocess. The other
scanners are installed from PyPI into their own venv, ``bench/out/scanners-venv`` (created here
the first time; never the project venv). Each scanner is one process per file, as CI would run
it; "flagged" means a non-zero exit status (a gate fails closed), and the time and peak RSS are
the process's own (``os.wait4``), start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PINS = ["picklescan==1.0.5", "modelscan==0.8.8", "fickling==0.1.12"]


def _venv() -> Path:
    env = OUT / "scanners-venv"
    if not (env / "bin" / "picklescan").exists():
        venv.create(env, with_pip=True, clear=True)
        subprocess.run([str(env / "bin" / "pip"), "install", "-q", *PINS], check=True)
    return env


def _run(cmd: list[str], timeout: float = 120.0) -> tuple[int, float, int]:
    """(exit status, seconds, peak RSS in KiB) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return -9, time.perf_counter() - t0, usage.ru_maxrss
        time.sleep(0.005)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    env = _venv()
    folder = OUT / "scanners" / "corpus"
    if folder.exists():
        shutil.rmtree(folder)
    py = sys.executable
    subprocess.run([py, str(ROOT / "tests" / "scan_corpus.py"), str(folder)], check=True, capture_output=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    check = subprocess.run([py, str(ROOT / "tests" / "scan_corpus.py"), "--check", str(folder)], check=True,
                           capture_output=True, text=True)
    runs = json.loads(check.stdout.strip().splitlines()[-1])
    sdf = str(Path(py).parent / "sdf")
    scanners = {
        "sdf scan": lambda p: [sdf, "scan", str(p)],
        "picklescan 1.0.5": lambda p: [str(env / "bin" / "picklescan"), "--path", str(p)],
        "modelscan 0.8.8": lambda p: [str(env / "bin" / "modelscan"), "-p", str(p)],
        "fickling 0.1.12": lambda p: [str(env / "bin" / "fickling"), "--check-safety", str(p)],
    }
    jobs = [(s, it) for s in scanners for it in manifest]

    def one(job: tuple[str, dict]) -> tuple[str, str, int, float, int]:
        s, it = job
        code, sec, rss = _run(scanners[s](folder / f"{it['name']}{it['suffix']}"))
        return s, it["name"], code, sec, rss

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    by = {(s, n): (c, t, r) for s, n, c, t, r in results}
    (OUT / "scanners" / "results.json").write_text(json.dumps(
        {"runs": runs, "manifest": manifest, "results": results}, indent=1))

    legit = [it["name"] for it in manifest if it["legit"]]
    running = [it["name"] for it in manifest if runs[it["name"]]]
    inert = [it["name"] for it in manifest if not it["legit"] and not runs[it["name"]]]
    print(f"corpus: {len(manifest)} files; {len(running)} run code under torch.load(weights_only=False), "
          f"{len(inert)} hostile but inert on torch 2.13, {len(legit)} legitimate (jobs={args.jobs})\n")
    print("| scanner | code-running flagged | inert hostile flagged | legitimate flagged | median s/file "
          "| max s/file | max RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for s in scanners:
        flagged = {n for (sc, n), (c, _, _) in by.items() if sc == s and c != 0}
        times = [t for (sc, _), (_, t, _) in by.items() if sc == s]
        rss = max(r for (sc, _), (_, _, r) in by.items() if sc == s)
        print(f"| {s} | {len(flagged & set(running))}/{len(running)} | {len(flagged & set(inert))}/{len(inert)} "
              f"| {len(flagged & set(legit))}/{len(legit)} | {statistics.median(times):.2f} | {max(times):.2f} "
              f"| {rss / 1024:.0f} |")
    sdf_flag = {n for (sc, n), (c, _, _) in by.items() if sc == "sdf scan" and c != 0}
    for s in ("picklescan 1.0.5", "modelscan 0.8.8"):
        only = sorted(n for (sc, n), (c, _, _) in by.items() if sc == s and c != 0 and n not in sdf_flag)
        print(f"\nflagged by {s} but not by sdf scan: {only or 'none'}")
    missed = {s: sorted(n for n in running if by[(s, n)][0] == 0) for s in scanners}
    for s, names in missed.items():
        print(f"code-running files {s} passes (exit 0): {len(names)}" + (f": {', '.join(names)}" if names else ""))
    fp = {s: sorted(n for n in legit if by[(s, n)][0] != 0) for s in scanners}
    for s, names in fp.items():
        if names:
            print(f"legitimate files {s} flags: {', '.join(names)}")


if __name__ == "__main__":
    main()
