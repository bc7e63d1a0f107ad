"""CPU vs CUDA fingerprints of the same model must agree to 1e-5 relative.

    python bench/gpu_check.py [--width 1]     # on a machine with a CUDA device

Writes a synthetic SD1.5 model (full size by default), fingerprints it on the CPU and on CUDA,
and prints the worst relative difference per array kind and the time of each run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import sdforensics
from sdforensics.synth.specs import Base, FineTune, write_safetensors


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=1)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: nothing to compare")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_safetensors(FineTune(Base("sd1", width=args.width, seed=1), seed=2), Path(tmp) / "m.safetensors")
        runs = {}
        for device in ("cpu", "cuda"):
            t = time.perf_counter()
            fp = sdforensics.fingerprint(path, device=device)
            runs[device] = (fp, time.perf_counter() - t)
    cpu, gpu = runs["cpu"][0], runs["cuda"][0]
    worst = {"values": 0.0, "structure": 0.0, "sample": 0.0, "stats": 0.0}
    for name, t in cpu.tensors.items():
        g = gpu.tensors[name]
        worst["values"] = max(worst["values"], rel_diff(t.values, g.values))
        worst["stats"] = max(worst["stats"], rel_diff(t.stats, g.stats))
        if t.structure is not None and g.structure is not None:
            worst["structure"] = max(worst["structure"], rel_diff(t.structure, g.structure))
        if t.sample is not None and g.sample is not None:
            worst["sample"] = max(worst["sample"], rel_diff(t.sample, g.sample))
    print(f"device: {torch.cuda.get_device_name(0)}; width 1/{args.width}")
    print(f"fingerprint time: cpu {runs['cpu'][1]:.2f} s, cuda {runs['cuda'][1]:.2f} s")
    for k, v in worst.items():
        print(f"worst relative difference, {k:9}: {v:.2e} ({'pass' if v <= 1e-5 else 'FAIL'} <= 1e-5)")


if __name__ == "__main__":
    main()
