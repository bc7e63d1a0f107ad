"""SDXL (and SD2.x) recipe benchmark (issue 19, item 5): a synthetic family at full size.

    flock /work/notes/heavy.lock nice python bench/sdxl.py --out /work/scratch/me/sdxl   # full size
    python bench/sdxl.py --width 16 --out /tmp/sdxl16                                       # minutes
    python bench/sdxl.py --family sd2 --width 8 --out /tmp/sd2                              # SD2.x 768-v

What it does, one file on disk at a time (an SDXL file is 6.9 GB in fp16):

1. a family from :mod:`sdforensics.synth.specs` with the release key/shape table of the chosen
   architecture: ``base`` (official) and ``ft1..ft3`` (fine-tunes, each base + a low-rank-plus-noise
   delta). Each is written, fingerprinted into ``OUT/library`` (``sdforensics.api.add_reference``)
   and deleted;
2. each case is written (fp16 safetensors), analysed by the CLI in a subprocess
   (``sdf analyze --format json``) under ``/usr/bin/time`` (peak RSS), timed against
   ``openssl dgst -sha256`` of the same file (page cache warmed by openssl first), checked against
   its true recipe, and deleted (unless ``--keep``).

Cases: weighted sum ``0.6 ft1 + 0.4 ft2``; add difference ``ft1 + 0.7 (ft2 - base)``; a
block-weighted sum of ft1 and ft2 with one alpha per SuperMerger block (SDXL: ``BASE, IN00..IN08,
M00, OUT00..OUT08`` -- SuperMerger's ``BLOCKIDXLL`` less ``VAE``, which follows ``BASE`` here as in
sd-mecha; SD2: the 26 SD1 ids); TIES (k = 0.3, three fine-tunes) and DARE (p = 0.9, two
fine-tunes) written from their published formulas (``--linear-only`` leaves them out). Merges are
computed by :mod:`sdforensics.synth.specs` (float64, then fp16), not by sd-mecha: SDXL at full
size through sd-mecha needs every input on disk at once (~28 GB).

Pass figures (issue 19): weights within 0.01 (weighted sum, add difference), block weights within
0.02, TIES/DARE kind and ingredient set right, peak RSS under 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdforensics.model.architecture import block_map_of
from sdforensics.synth.specs import Base, FineTune, Mapped, Merge, Spec, write_safetensors

TOL_LINEAR = 0.01
TOL_BLOCK = 0.02
RSS_MAX_GB = 3.0


@dataclass
class Case:
    name: str
    kind: str  # the kind sdforensics should report
    truth: dict[str, float]  # affine weights (ties/dare: the ingredients, weight 1 each)
    spec: Spec
    blocks: dict[str, dict[str, float]] | None = None
    supermerger: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def block_alphas(family: str) -> dict[str, float]:
    """One alpha per SuperMerger block (VAE left out), spread over 0.1..0.9."""
    ids = [b for b in block_map_of(family).ids if b != "VAE"]
    return {b: round(0.1 + 0.8 * ((i * 7) % len(ids)) / (len(ids) - 1), 3) for i, b in enumerate(ids)}


def ties_fn(base: Spec, k: float, alpha: float = 1.0) -> Any:
    """TIES-merging (Yadav et al. 2023): trim each delta to its top-k share by magnitude, elect
    each coordinate's sign by the summed trimmed deltas, average the deltas that agree."""

    def fn(key: str, values: list[torch.Tensor]) -> torch.Tensor:
        b = values[0].double()
        deltas = []
        for v in values[1:]:
            d = v.double() - b
            n = d.numel()
            keep = max(1, int(round(k * n)))
            thresh = d.abs().reshape(-1).kthvalue(n - keep + 1).values if keep < n else torch.tensor(0.0)
            deltas.append(torch.where(d.abs() >= thresh, d, torch.zeros_like(d)))
        stack = torch.stack(deltas)
        sign = torch.sign(stack.sum(0))
        agree = (torch.sign(stack) == sign) & (stack != 0)
        count = agree.sum(0).clamp(min=1)
        merged = (stack * agree).sum(0) / count
        return (b + alpha * merged).float()

    return fn


def dare_fn(p: float, seed: int, weights: tuple[float, ...]) -> Any:
    """DARE (Yu et al. 2023): drop each delta coordinate with probability p, rescale the rest by
    1/(1-p), add the weighted deltas to the base."""

    def fn(key: str, values: list[torch.Tensor]) -> torch.Tensor:
        b = values[0].double()
        out = b.clone()
        for i, (w, v) in enumerate(zip(weights, values[1:], strict=True)):
            g = torch.Generator().manual_seed(hash((seed, i, key)) & 0x7FFFFFFF)
            keep = torch.rand(b.shape, generator=g) >= p
            out += w * torch.where(keep, (v.double() - b) / (1 - p), torch.zeros_like(b))
        return out.float()

    return fn


def make_cases(specs: dict[str, Spec], family: str, linear_only: bool) -> list[Case]:
    base, ft1, ft2, ft3 = specs["base"], specs["ft1"], specs["ft2"], specs["ft3"]
    cases = [
        Case("weighted_sum", "weighted_sum", {"ft1": 0.6, "ft2": 0.4, "base": 0.0}, Merge(((0.6, ft1), (0.4, ft2)))),
        Case(
            "add_difference",
            "add_difference",
            {"ft1": 1.0, "ft2": 0.7, "base": -0.7},
            Merge(((1.0, ft1), (0.7, ft2), (-0.7, base))),
        ),
    ]
    alphas = block_alphas(family)
    blocks = {b: (1 - a, a) for b, a in alphas.items()}
    blocks["VAE"] = blocks["BASE"]
    cases.append(
        Case(
            "block_weighted",
            "block_weighted",
            {"ft1": 0.5, "ft2": 0.5, "base": 0.0},
            Merge(((0.5, ft1), (0.5, ft2)), blocks=blocks),
            blocks={b: {"ft1": 1 - a, "ft2": a, "base": 0.0} for b, a in alphas.items()},
            supermerger=",".join(f"{a:g}" for a in alphas.values()),
        )
    )
    if not linear_only:
        cases.append(
            Case(
                "ties_k0.3",
                "ties",
                {"ft1": 1.0, "ft2": 1.0, "ft3": 1.0},
                Mapped((base, ft1, ft2, ft3), ties_fn(base, 0.3)),
            )
        )
        cases.append(
            Case("dare_p0.9", "dare", {"ft1": 1.0, "ft2": 1.0}, Mapped((base, ft1, ft2), dare_fn(0.9, 7, (0.5, 0.5))))
        )
    return cases


def build_library(specs: dict[str, Spec], out: Path, keep: bool) -> Path:
    from sdforensics.api import add_reference

    lib = out / "library"
    lib.mkdir(parents=True, exist_ok=True)
    for name, spec in specs.items():
        if (lib / "fingerprints" / f"{name}.sdfp").exists():
            log(f"library: {name} already there")
            continue
        path = out / f"{name}.safetensors"
        t = time.perf_counter()
        write_safetensors(spec, path)
        w = time.perf_counter() - t
        t = time.perf_counter()
        add_reference(path, lib, name, official=name == "base", device="cpu")
        log(f"library: {name} written in {w:.0f} s, fingerprinted in {time.perf_counter() - t:.0f} s")
        if not keep:
            path.unlink()
    return lib


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def analyze(path: Path, library: Path) -> tuple[dict[str, Any], float, float]:
    """The CLI's JSON, its wall time and its peak RSS (GB) from /usr/bin/time."""
    cmd = [
        sys.executable,
        "-m",
        "sdforensics.cli",
        "analyze",
        str(path),
        "--library",
        str(library),
        "--format",
        "json",
        "--device",
        "cpu",
    ]
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"sdf analyze failed: {proc.stderr[-2000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) / 1024**2 if m else float("nan")
    return json.loads(proc.stdout), wall, rss


def evaluate(case: Case, rec: dict[str, Any]) -> None:
    est = {c["reference"]: float(c["weight"]) for c in rec.get("components") or []}
    case.result.update(kind=rec.get("kind"), weights=est, unexplained=rec.get("unexplained"), text=rec.get("text"))
    case.checks["kind"] = rec.get("kind") == case.kind
    if case.kind in ("weighted_sum", "add_difference"):
        err = max(abs(est.get(r, 0.0) - w) for r, w in case.truth.items())
        extra = max([abs(w) for r, w in est.items() if r not in case.truth] or [0.0])
        case.result.update(max_err=err, max_extra=extra)
        case.checks["weights+-0.01"] = err <= TOL_LINEAR and extra <= TOL_LINEAR
    elif case.kind == "block_weighted":
        blocks = rec.get("blocks") or {}
        sm = rec.get("supermerger_weights") or {}
        worst, where = 0.0, ""
        for b, truth in (case.blocks or {}).items():
            got = {r["reference"]: float(r["weight"]) for r in blocks.get(b, []) if r.get("weight") is not None}
            e = max(abs(got.get(r, 0.0) - w) for r, w in truth.items())
            if e > worst:
                worst, where = e, b
        case.result.update(
            block_max_err=worst,
            block_worst=where,
            supermerger_truth=case.supermerger,
            supermerger_found=sm.get("text"),
        )
        case.checks["blocks+-0.02"] = worst <= TOL_BLOCK
        if case.supermerger:
            # The found string is alpha of models[1] in "(1-alpha) x A + alpha x B"; the truth is ft2's.
            truth_a = [float(x) for x in case.supermerger.split(",")]
            found_a = [float(x) for x in (sm.get("text") or "").split(",") if x]
            if list(sm.get("models") or [])[-1:] == ["ft1"]:
                found_a = [1.0 - x for x in found_a]
            case.checks["supermerger string+-0.02"] = len(found_a) == len(truth_a) and all(
                abs(f - t) <= TOL_BLOCK for f, t in zip(found_a, truth_a, strict=True)
            )
    else:
        ew = rec.get("elementwise") or {}
        found = set(ew.get("ingredients") or [c for c, w in est.items() if abs(w) > 0.02])
        case.result.update(ingredients=sorted(found), elementwise=ew.get("kind"))
        case.checks["ingredients"] = found - {"base"} == set(case.truth)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="sdxl", choices=["sdxl", "sd2", "sd1"])
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--linear-only", action="store_true")
    ap.add_argument("--cases", default="", help="comma list of case names to run (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("SDF_HOME", str(args.out / "sdf-home"))
    t0 = time.perf_counter()
    base = Base(args.family, width=args.width, seed=args.seed)
    specs: dict[str, Spec] = {"base": base}
    for i in (1, 2, 3):
        specs[f"ft{i}"] = FineTune(base, seed=args.seed * 100 + i, scale=0.05)
    args.out.mkdir(parents=True, exist_ok=True)
    lib = build_library(specs, args.out, args.keep)
    cases = make_cases(specs, args.family, args.linear_only)
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in cases if c.name in wanted]
    for case in cases:
        path = args.out / f"{case.name}.safetensors"
        try:
            t = time.perf_counter()
            write_safetensors(case.spec, path)
            made = time.perf_counter() - t
            ossl = ["openssl", "dgst", "-sha256", str(path)]
            timed(ossl)  # warm the page cache
            sha = statistics.median(timed(ossl) for _ in range(2))
            rec_json, wall, rss = analyze(path, lib)
            rec = rec_json.get("recipe") or {}
            case.result.update(bytes=path.stat().st_size, written_s=made, sdf_s=wall, openssl_s=sha, rss_gb=rss)
            case.checks["rss<3GB"] = rss < RSS_MAX_GB
            evaluate(case, rec)
            log(f"{case.name}: {case.result.get('text')} ({wall:.0f} s, openssl {sha:.0f} s, {rss:.2f} GB)")
        finally:
            if not args.keep and path.exists():
                path.unlink()
    print(
        f"\n=== sdforensics SDXL/SD2 recipe benchmark (issue 19): {args.family}, width 1/{args.width}"
        f"{' (full size)' if args.width == 1 else ' (reduced)'} ==="
    )
    print(f"{'case':16} {'kind':16} {'error':>8} {'sdf s':>7} {'sha s':>7} {'x':>5} {'RSS GB':>7}  checks / found")
    for c in cases:
        r = c.result
        err = r.get("max_err", r.get("block_max_err"))
        ratio = r["sdf_s"] / r["openssl_s"] if r.get("openssl_s") else float("nan")
        checks = " ".join(f"{k}:{'PASS' if v else 'FAIL'}" for k, v in c.checks.items())
        print(
            f"{c.name:16} {str(r.get('kind')):16} {err if err is not None else float('nan'):8.4f} "
            f"{r.get('sdf_s', float('nan')):7.1f} {r.get('openssl_s', float('nan')):7.1f} {ratio:5.1f} "
            f"{r.get('rss_gb', float('nan')):7.2f}  {checks}  {r.get('text')}"
        )
        if r.get("supermerger_truth"):
            print(f"{'':16} SuperMerger alphas truth: {r['supermerger_truth']}")
            print(f"{'':16} SuperMerger alphas found: {r.get('supermerger_found')}")
    ok = all(all(c.checks.values()) for c in cases)
    print(
        f"{'PASS' if ok else 'FAIL'}: {sum(all(c.checks.values()) for c in cases)}/{len(cases)} cases; "
        f"wall {time.perf_counter() - t0:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps([{"name": c.name, **c.result, "checks": c.checks} for c in cases], indent=1, default=str)
        )
    if not args.keep:
        shutil.rmtree(args.out / "sdf-home", ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
