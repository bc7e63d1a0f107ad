"""Issue 18: the Ray engine's overhead against the local process pool, same small files, this machine.

    python bench/ray_overhead.py --models 16 --width 16

Writes N synthetic SD1.5 models (1/width size) to a temp folder, then indexes them into fresh
libraries with LocalEngine(1), LocalEngine(2) and RayEngine on a local 2-CPU cluster (cluster start
timed apart), and prints seconds and MB/s per run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from sdforensics.collection.engine import LocalEngine
from sdforensics.collection.index import index_paths
from sdforensics.library.registry import Registry
from sdforensics.synth.specs import family_specs, write_safetensors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sdf-ray-bench-"))
    try:
        folder = tmp / "models"
        specs = family_specs("sd1", width=args.width, finetunes=args.models - 1, seed=7)
        for name, spec in specs.items():
            write_safetensors(spec, folder / f"{name}.safetensors")
        total = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{len(specs)} models, {total / 1e6:.1f} MB")

        def run(label: str, engine: object) -> None:
            lib = tmp / f"lib-{label}"
            t = time.perf_counter()
            s = index_paths([folder], lib, engine, registry=Registry([]))  # type: ignore[arg-type]
            dt = time.perf_counter() - t
            assert len(s.fingerprinted) == len(specs), s.skipped
            print(f"| {label} | {dt:.2f} | {total / 1e6 / dt:.1f} | {dt / len(specs) * 1000:.0f} |", flush=True)

        print("| engine | seconds | MB/s | ms per file |\n|---|---|---|---|")
        run("local --jobs 1", LocalEngine(1))
        run("local --jobs 2", LocalEngine(2))
        import ray

        from sdforensics.collection.ray_engine import RayEngine

        t = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"(ray.init of a local 2-CPU cluster: {time.perf_counter() - t:.2f} s)")
        run("ray, 2 CPUs, first run (workers start)", RayEngine())
        run("ray, 2 CPUs, warm workers", RayEngine())
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
