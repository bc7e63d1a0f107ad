"""Per-block delta cosine from fingerprints vs the exact value from the full weights (issue 3).

    python bench/similarity.py --models DIR --base FILE [--target NAME]

DIR holds full-size fine-tunes of one base (``bench/recipes.py`` writes ft1..ft6 under
``bench/out/recipes/models-w1``; ft6 is a child of ft1). Each model is fingerprinted with
sdforensics; then, for the target against every other model, the cosine of (model - base) with
(reference - base) is computed per SuperMerger block twice: from the fingerprints, and exactly
from the full weights (float64, every tensor read with safetensors). Prints the worst absolute
difference per reference and over all blocks, against the 0.01 target, plus the fingerprint sizes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from sdforensics.api import fingerprint_model
from sdforensics.compare import similarity
from sdforensics.fpfile import save_fingerprint
from sdforensics.tables import architecture, block_maps


def exact_block_cosines(target: Path, refs: dict[str, Path], base: Path) -> dict[str, dict[str, float]]:
    bmap = block_maps()["sd1"]
    handles = {n: safe_open(str(p), "pt") for n, p in refs.items()}
    with safe_open(str(target), "pt") as t, safe_open(str(base), "pt") as b:
        acc: dict[str, dict[str, list[float]]] = {n: {} for n in refs}
        for key in t.keys():  # noqa: SIM118 - safe_open is not iterable
            block = bmap.block_of(key)
            tt = t.get_tensor(key)
            if block is None or not tt.is_floating_point():
                continue
            bb = b.get_tensor(key).double().reshape(-1)
            dt = tt.double().reshape(-1) - bb
            for name, h in handles.items():
                dr = h.get_tensor(key).double().reshape(-1) - bb
                s = acc[name].setdefault(block, [0.0, 0.0, 0.0])
                s[0] += float(dt @ dr)
                s[1] += float(dt @ dt)
                s[2] += float(dr @ dr)
    return {n: {blk: v[0] / (v[1] ** 0.5 * v[2] ** 0.5) for blk, v in d.items()} for n, d in acc.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--target", default="ft6")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    paths = {p.stem: p for p in sorted(args.models.glob("*.safetensors"))}
    t0 = time.perf_counter()
    prints = {name: fingerprint_model(p, device="cpu")[1] for name, p in paths.items()}
    base_fp = fingerprint_model(args.base, device="cpu")[1]
    sizes = []
    for name, fp in prints.items():
        path = save_fingerprint(fp, args.models.parent / "fingerprints-sim" / f"{name}.sdfp")
        sizes.append(path.stat().st_size)
    refs = [n for n in prints if n != args.target]
    arch = architecture("sd1")
    sim = similarity(
        prints[args.target], [base_fp] + [prints[n] for n in refs], ["base", *refs], 0, arch, block_maps()["sd1"]
    )
    t1 = time.perf_counter()
    exact = exact_block_cosines(paths[args.target], {n: paths[n] for n in refs}, args.base)
    t2 = time.perf_counter()
    print(
        f"target {args.target}; base {args.base.name}; {len(sim.blocks)} blocks; fingerprints {t1 - t0:.0f} s, "
        f"exact pass {t2 - t1:.0f} s\n"
    )
    print("| reference | overall delta cos (fingerprint) | worst block |fp - exact| | block |")
    print("|---|---|---|---|")
    worst_all = 0.0
    for j, name in enumerate(["base", *refs]):
        if name == "base":
            continue
        diffs = {blk: abs(sim.block_delta[i, j] - exact[name][blk]) for i, blk in enumerate(sim.blocks)}
        blk = max(diffs, key=lambda k: diffs[k])
        worst_all = max(worst_all, diffs[blk])
        print(f"| {name} | {sim.overall_delta[j]:.4f} | {diffs[blk]:.4f} | {blk} |")
    print(
        f"\nworst per-block difference over all references: {worst_all:.4f} "
        f"({'PASS' if worst_all <= 0.01 else 'FAIL'} <= 0.01)"
    )
    print(
        f"fingerprint size of a full-size SD1.5 model: {np.max(sizes) / 1e6:.2f} MB "
        f"({'PASS' if max(sizes) <= 10e6 else 'FAIL'} <= 10 MB)"
    )


if __name__ == "__main__":
    main()
