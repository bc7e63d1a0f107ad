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

from sdforensics import fingerprint
from sdforensics.fingerprinting.fpfile import save_fingerprint
from sdforensics.fingerprinting.similarity import similarity
from sdforensics.model.architecture import architecture, block_maps


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
    ap.add_argument("--target", default="ft6", help="one model, or a comma list (each against all the others)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    paths = {p.stem: p for p in sorted(args.models.glob("*.safetensors")) if p.resolve() != args.base.resolve()}
    t0 = time.perf_counter()
    prints = {name: fingerprint(p, device="cpu") for name, p in paths.items()}
    base_fp = fingerprint(args.base, device="cpu")
    sizes = []
    for name, fp in prints.items():
        path = save_fingerprint(fp, args.models.parent / "fingerprints-sim" / f"{name}.sdfp")
        sizes.append(path.stat().st_size)
    arch = architecture("sd1")
    t1 = time.perf_counter()
    print(f"base {args.base.name}; fingerprints {t1 - t0:.0f} s\n")
    print("| target | reference | overall delta cos (fingerprint) | worst block |fp - exact| | block |")
    print("|---|---|---|---|---|")
    worst_all, diffs_all = 0.0, []
    for target in args.target.split(","):
        refs = [n for n in prints if n != target]
        sim = similarity(
            prints[target], [base_fp] + [prints[n] for n in refs], ["base", *refs], 0, arch, block_maps()["sd1"]
        )
        exact = exact_block_cosines(paths[target], {n: paths[n] for n in refs}, args.base)
        for j, name in enumerate(["base", *refs]):
            if name == "base":
                continue
            diffs = {blk: abs(sim.block_delta[i, j] - exact[name][blk]) for i, blk in enumerate(sim.blocks)}
            diffs_all.extend(diffs.values())
            blk = max(diffs, key=lambda k: diffs[k])
            worst_all = max(worst_all, diffs[blk])
            print(f"| {target} | {name} | {sim.overall_delta[j]:.4f} | {diffs[blk]:.4f} | {blk} |")
    rms = float(np.sqrt(np.mean(np.square(diffs_all))))
    print(
        f"\n{len(diffs_all)} per-block cosines, exact pass {time.perf_counter() - t1:.0f} s; RMS error {rms:.4f}; "
        f"worst {worst_all:.4f} ({'PASS' if worst_all <= 0.01 else 'FAIL'} <= 0.01); "
        f"{sum(d <= 0.01 for d in diffs_all)} of {len(diffs_all)} within 0.01"
    )
    print(
        f"largest fingerprint of these models: {np.max(sizes) / 1e6:.2f} MB "
        f"({'PASS' if max(sizes) <= 10e6 else 'FAIL'} <= 10 MB)"
    )


if __name__ == "__main__":
    main()
