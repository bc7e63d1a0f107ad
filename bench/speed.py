"""Speed and memory of sdf on full-size checkpoints, against baselines measured in the same run.

    python bench/speed.py                 # SD1.5 fp16 (2.1 GB); writes bench/out/
    python bench/speed.py --sdxl          # also the 6.9 GB SDXL file (identity + memory)

Prints one table. Baselines, same file, same run, warm page cache, median of --repeat runs:

* ``openssl dgst -sha256`` -- the time to read and hash the file once;
* the exact approach a user has today (SuperMerger's Analysis tab, ASimilarityCalculatior):
  load the target and each reference in full and compute per-layer cosines, for 1 and 10
  references (the same cached reference file loaded 10 times: a lower bound for 10 files).

sdf is run as a user runs it (a subprocess, ``python -m sdforensics.cli``), so interpreter and
torch start-up are included. Peak RSS comes from ``getrusage(RUSAGE_CHILDREN)`` per command.
The 50-reference library is the base's real fingerprint plus 49 fingerprints made by adding an
independent random delta in sketch space (comparison cost does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SDF = [sys.executable, "-m", "sdforensics.cli"]


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one command in a fresh child process."""
    code = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps([p.returncode, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env, check=True)
    rc, dt, rss = json.loads(out.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"command failed ({rc}): {' '.join(cmd)}")
    return dt, rss // 1024


def median_of(cmd: list[str], repeat: int) -> tuple[float, int]:
    runs = [run_timed(cmd) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def interleaved(cmds: list[list[str]], baseline: list[str], repeat: int) -> list[tuple[float, int, float, list[float]]]:
    """Median wall time, peak RSS and every wall time of each of ``cmds``, and the median of
    ``baseline`` run just before each of its runs. Each repeat runs every command once, in turn,
    so drift in the machine's speed (10-30% between minutes here) reaches every row alike."""
    runs: list[list[tuple[float, int]]] = [[] for _ in cmds]
    base: list[list[float]] = [[] for _ in cmds]
    for _ in range(repeat):
        for i, cmd in enumerate(cmds):
            base[i].append(run_timed(baseline)[0])
            runs[i].append(run_timed(cmd))
    return [
        (statistics.median(r[0] for r in rs), max(r[1] for r in rs), statistics.median(b), [r[0] for r in rs])
        for rs, b in zip(runs, base, strict=True)
    ]


def paired(cmd: list[str], baseline: list[str], repeat: int) -> tuple[float, int, float]:
    """Median wall time and peak RSS of ``cmd``, and the median of ``baseline`` run alternately with it."""
    t, rss, base_t, _ = interleaved([cmd], baseline, repeat)[0]
    return t, rss, base_t


def ensure_models(out: Path, family: str) -> dict[str, Path]:
    from sdforensics.synth.specs import Base, FineTune, write_safetensors

    out.mkdir(parents=True, exist_ok=True)
    base = Base(family, width=1, seed=11)
    specs = {"base": base, "ft1": FineTune(base, seed=12)}
    paths = {}
    for name, spec in specs.items():
        path = out / f"{family}-{name}.safetensors"
        if not path.exists():
            t = time.perf_counter()
            write_safetensors(spec, path)
            print(f"  wrote {path} ({path.stat().st_size / 1e9:.2f} GB, {time.perf_counter() - t:.0f} s)", file=sys.stderr)
        paths[name] = path
    return paths


def make_libraries(out: Path, base: Path, n_extra: int) -> tuple[Path, Path]:
    from sdforensics import Fingerprint, Library, fingerprint

    one, many = out / "lib1", out / "lib50"
    for p in (one, many):
        shutil.rmtree(p, ignore_errors=True)
    fp = fingerprint(base, device="cpu")
    Library(one).add(fp, "base", official=True)
    lib = Library(many)
    lib.add(fp, "base", official=True)
    rng = np.random.default_rng(0)
    from dataclasses import replace

    for i in range(n_extra):
        prints = {}
        for name, t in fp.tensors.items():
            scale = 0.05 * (np.abs(t.values).mean() + 1e-12)
            prints[name] = replace(
                t,
                values=t.values + scale * rng.standard_normal(t.values.shape),
                sample=None if t.sample is None else t.sample + scale * rng.standard_normal(t.sample.shape),
                structure=None if t.structure is None else t.structure + scale * rng.standard_normal(t.structure.shape),
                digest="",
            )
        lib.add(Fingerprint(fp.scheme, dict(fp.identity), prints), f"ref{i:02d}")
    return one, many


EXACT = r"""
import sys, time, torch
from safetensors.torch import load_file
target, ref, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
T = load_file(target)
for _ in range(n):
    R = load_file(ref)
    cos = {k: torch.nn.functional.cosine_similarity(T[k].float().reshape(1, -1), R[k].float().reshape(1, -1)).item()
           for k in T if T[k].is_floating_point()}
    del R
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sdxl", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated: identity,add,analyze1,analyze50,exact")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    models = ensure_models(args.out, "sd1")
    target, base = models["ft1"], models["base"]
    lib1, lib50 = make_libraries(args.out, base, 49)
    for p in (target, base):  # warm the page cache
        subprocess.run(["cat", str(p)], stdout=subprocess.DEVNULL, check=True)
    rows = []
    openssl = ["openssl", "dgst", "-sha256", str(target)]
    ssl, ssl_rss = median_of(openssl, args.repeat)
    rows.append(("openssl dgst -sha256 (baseline)", ssl, ssl_rss, None, ssl))
    home = str(args.out / "home")

    def sdf(*a: str) -> list[str]:
        return [*SDF, *a]

    os.environ["SDF_HOME"] = home
    cases = [
        ("identity", "sdf analyze --identity", sdf("analyze", str(target), "--identity", "-q", "-f", "json"), 1.5),
        ("add", "sdf refs add", sdf("refs", "add", str(target), "--name", "t", "--library", str(args.out / "libadd"),
                             "-q", "--device", "cpu"), 2.0),
        ("analyze1", "sdf analyze, 1 reference", sdf("analyze", str(target), "--library", str(lib1), "-q", "--device", "cpu",
                                         "-f", "json"), 2.0),
        ("analyze50", "sdf analyze, 50 references", sdf("analyze", str(target), "--library", str(lib50), "-q", "--device", "cpu",
                                           "-f", "json"), 2.0),
    ]
    chosen = [c for c in cases if not only or c[0] in only]
    walls: dict[str, list[float]] = {}
    for (key, label, _, limit), (t, rss, base_t, each) in zip(
        chosen, interleaved([c[2] for c in chosen], openssl, args.repeat), strict=True
    ):
        rows.append((label, t, rss, limit, base_t))
        walls[key] = each
    if not only or "exact" in only:
        for n in (1, 10):
            cmd = [sys.executable, "-c", EXACT, str(target), str(base), str(n)]
            t, rss = median_of(cmd, max(1, args.repeat // 2))
            rows.append((f"exact per-layer cosines, {n} reference(s) (today's approach)", t, rss, None, ssl))
    if args.sdxl:
        xl = ensure_models(args.out, "sdxl")["base"]
        subprocess.run(["cat", str(xl)], stdout=subprocess.DEVNULL, check=True)
        xl_ssl = ["openssl", "dgst", "-sha256", str(xl)]
        t, rss, t0 = paired(sdf("analyze", str(xl), "--identity", "-q", "-f", "json"), xl_ssl, 3)
        rows.append(("SDXL 6.9 GB: openssl dgst -sha256", t0, 13, None, t0))
        rows.append(("SDXL 6.9 GB: sdf analyze --identity", t, rss, 1.5, t0))
    print(f"\nfile: {target} ({target.stat().st_size / 1e9:.2f} GB), median of {args.repeat}, warm cache;")
    print("each repeat runs every sdf row in turn, each right after an openssl run on the same file;")
    print("'x openssl' is against those runs\n")
    print(f"| {'command':58} | {'wall s':>7} | {'paired openssl s':>16} | {'x openssl':>9} | {'peak RSS MB':>11} | target |")
    print(f"|{'-' * 60}|{'-' * 9}|{'-' * 18}|{'-' * 11}|{'-' * 13}|--------|")
    for label, t, rss, limit, ref in rows:
        ratio = t / ref
        verdict = "" if limit is None else ("pass" if ratio <= limit else "FAIL") + f" <={limit}x"
        print(f"| {label:58} | {t:7.2f} | {ref:16.2f} | {ratio:9.2f} | {rss:11d} | {verdict} |")
    times = {r[0]: r[1] for r in rows}
    if "sdf analyze, 1 reference" in times and "sdf analyze, 50 references" in times:
        a1, a50 = times["sdf analyze, 1 reference"], times["sdf analyze, 50 references"]
        per_repeat = statistics.median(b / a for a, b in zip(walls["analyze1"], walls["analyze50"], strict=True))
        print(
            f"\n50 references / 1 reference: {a50 / a1:.2f}x (target <= 1.2x); median of the per-repeat "
            f"ratios (the two runs minutes apart at most): {per_repeat:.2f}x"
        )
    fp_size = sum(p.stat().st_size for p in (lib1 / "fingerprints").glob("*.sdfp"))
    print(f"fingerprint of the full-size SD1.5 model: {fp_size / 1e6:.2f} MB (target <= 10 MB)")


if __name__ == "__main__":
    main()
