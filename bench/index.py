"""`sdf index` of a folder of SD1.5 checkpoints against `openssl dgst -sha256` of the same files.

Run (full size: 8 x ~2.1 GB fp16, under the shared lock; the files are deleted at the end):

    flock /work/notes/heavy.lock nice python bench/index.py --width 1 --out /work/scratch/p17/index-bench

Develop with ``--width 16``. Prints a table:

1. ``openssl dgst -sha256`` of every file, one after another (the floor: reading and hashing once);
2. ``sdf index --jobs J`` into a fresh library;
3. the same command again with nothing changed;
4. a fresh library, ``sdf index`` killed with SIGKILL once the first file is committed, then
   run again: the resumed library must equal the uninterrupted one (names, fingerprint SHA-256s,
   source paths).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from sdforensics.synth.specs import family_specs, write_safetensors


def sdf(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdforensics.cli", *args]


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def snapshot(lib: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each reference's fingerprint file (its bytes: fingerprint files are deterministic) and source paths."""
    con = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, name, file FROM refs").fetchall()
        return {n: (hashlib.sha256((lib / f).read_bytes()).hexdigest(), tuple(sorted(
                    f"{p} {sha}" for p, sha in con.execute("SELECT path, sha256 FROM sources WHERE ref_id=?", (i,)))))
                for i, n, f in rows}  # fmt: skip
    finally:
        con.close()


def committed(lib: Path) -> int:
    try:
        con = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT count(*) FROM refs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def write_models(folder: Path, width: int, count: int, seed: int) -> list[Path]:
    """``count`` fp16 SD1.5 files at 1/``width`` in ``folder`` (a base and ``count - 1`` fine-tunes); the
    time and size on stderr. Also used by bench/scale.py."""
    start = time.monotonic()
    specs = family_specs("sd1", width=width, finetunes=count - 1, seed=seed)
    files = [write_safetensors(spec, folder / f"{name}.safetensors", dtype=torch.float16)
             for name, spec in specs.items()]  # fmt: skip
    gb = sum(f.stat().st_size for f in files) / 1e9
    print(f"built {len(files)} models, {gb:.2f} GB, in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return files


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--models", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/work/scratch/p17/index-bench"))
    ap.add_argument("--keep", action="store_true", help="keep the model files")
    args = ap.parse_args()
    out: Path = args.out
    models = out / "models"
    shutil.rmtree(out, ignore_errors=True)
    models.mkdir(parents=True)
    try:
        files = write_models(models, args.width, args.models, seed=11)
        gb = sum(f.stat().st_size for f in files) / 1e9
        rows = []
        t_ssl = timed(["openssl", "dgst", "-sha256", *map(str, files)])
        rows.append(("openssl dgst -sha256, files one after another", t_ssl))
        lib = out / "lib"
        t_idx = timed(sdf("index", str(models), "--library", str(lib), "--jobs", str(args.jobs), "-q"))
        rows.append((f"sdf index --jobs {args.jobs}, fresh library", t_idx))
        t_again = timed(sdf("index", str(models), "--library", str(lib), "--jobs", str(args.jobs), "-q"))
        rows.append(("sdf index again, nothing changed (process start included)", t_again))
        t_ssl2 = timed(["openssl", "dgst", "-sha256", *map(str, files)])
        rows.append(("openssl dgst -sha256 again (after the index runs)", t_ssl2))
        # killed once the first file is committed, then resumed
        lib2 = out / "lib-killed"
        proc = subprocess.Popen(sdf("index", str(models), "--library", str(lib2), "--jobs", str(args.jobs), "-q"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while committed(lib2) < 1 and proc.poll() is None:
            time.sleep(0.05)
        before = committed(lib2)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its pool workers (its own process group)
        proc.wait()
        t_resume = timed(sdf("index", str(models), "--library", str(lib2), "--jobs", str(args.jobs), "-q"))
        rows.append((f"resume after kill -9 ({before} of {len(files)} committed when killed)", t_resume))
        same = snapshot(lib) == snapshot(lib2)
        verify = subprocess.run(sdf("refs", "verify", "--library", str(lib2), "-q"), capture_output=True, text=True)
        print(f"\n{len(files)} SD1.5 models at width 1/{args.width}, fp16, {gb:.2f} GB; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}\n")
        print("| run | seconds | x openssl |")
        print("|---|---|---|")
        for label, t in rows:
            print(f"| {label} | {t:.2f} | {t / t_ssl:.2f} |")
        print(f"\nresumed library == uninterrupted library: {same}; refs verify on it: "
              f"{'ok' if verify.returncode == 0 else verify.stderr.strip()}")
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
