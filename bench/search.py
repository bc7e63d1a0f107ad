"""Search at scale (issue 17, item 3, "Must show"): search vectors over 100,000-1,000,000 references,
`sdf analyze` against a 2,000-reference library, and libraries full of copies and re-saves.

    python bench/search.py vectors --width 16 --sizes 100000,1000000   # 1. the search step alone
    python bench/search.py analyze --width 1 --refs 2000               # 2. full-size analyze, 2,000 refs
    python bench/search.py copies --width 16                           # 3. copies and re-saves

Every part uses the family and the merge cases of ``bench/recipes.py`` (its models are reused from
``OUT/models-wN``): an official base, ft1..ft6 (ft6 a child of ft1), xft kept out of the library,
and the 13 recipe cases (merges made by sd-mecha when it is installed).

1. **vectors**: the search vectors of the real fingerprints (base, ft1..ft6, each case's merge) are
   planted at random rows among N synthetic references made in the same vector space: independent
   fine-tunes (a Gaussian change with the per-block size of the real fine-tunes' changes, times a
   log-normal factor), children of the real fine-tunes, merges of them trained further, copies and
   re-saves (the real vector plus rounding noise) and copies of the base. Per case it times
   :func:`sdforensics.library.vectors.select_candidates` (the step ``sdf analyze`` runs) and measures
   its memory (tracemalloc peak, process peak RSS) and the recall of the true ingredients in the 15
   candidates (an ingredient counts when it is chosen or named in a chosen one's group). Baseline in
   the same run: the same selection over the 7 real references alone, and a plain exact top-15 by
   cosine (one matrix-vector product).
2. **analyze**: a 10-reference library (base, ft1..ft6 from the model files, 3 fine-tunes made in
   fingerprint space) and a library of ``--refs`` references (those 10 plus synthetic references made
   in fingerprint space like part 1's: the fingerprint of a merge is the merge of the fingerprints).
   Each case's merge is analyzed with ``sdf analyze`` (a subprocess, as a user runs it) against
   both, alternately: wall time, peak RSS and the recipe (kind, names, weights to 0.001).
3. **copies**: the recipes against base + ft1..ft6, and against a library where each of them also
   appears renamed (twice) and re-saved in fp32, bf16 and fp8 (real files, fingerprinted): the same
   recipe, and every ingredient named with all its copies (``recipe.components[].also``).

Heavy runs (width 1, the 1M run) go under ``flock /tmp/heavy.lock nice``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import recipes as rb  # noqa: E402

from sdforensics.fingerprinting.fingerprint import Fingerprint, TensorPrint  # noqa: E402
from sdforensics.library.search import component_columns  # noqa: E402
from sdforensics.library.store import Library  # noqa: E402
from sdforensics.library.vectors import (  # noqa: E402
    PER_BLOCK,
    Projector,
    SearchVector,
    changes,
    row_norms,
    select_candidates,
)
from sdforensics.model.architecture import block_map_of  # noqa: E402

REAL = rb.LIBRARY  # base, ft1..ft6
FTS = REAL[1:]
LIMIT = 15  # candidates besides the base (api.MAX_CANDIDATES - 1)
SKIP_CASES = ("ws2_ckpt", "ws2_diffusers")  # the same weights as ws2 in another container


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- shared: models, fingerprints, cases


def fingerprints(out: Path, width: int, seed: int) -> tuple[dict[str, Any], dict[str, Path], dict[str, Fingerprint]]:
    """The family's specs and files, and the fingerprints of base and ft1..ft6 (cached as .sdfp)."""
    from sdforensics import fingerprint
    from sdforensics.fingerprinting.fpfile import load_fingerprint, save_fingerprint

    specs, paths = rb.ensure_models(out, width, seed)
    fps = {}
    folder = out / f"prints-w{width}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in REAL:
        f = folder / f"{name}.sdfp"
        if not f.exists():
            t = time.perf_counter()
            save_fingerprint(fingerprint(paths[name], device="cpu"), f)
            log(f"  fingerprinted {name} ({time.perf_counter() - t:.1f} s)")
        fps[name] = load_fingerprint(f)
    return specs, paths, fps


def ingredients(case: rb.Case) -> set[str]:
    """The references a correct answer must name (the base is always a candidate)."""
    out = {k for k, v in case.truth.items() if abs(v) > 1e-9 and k != "base"}
    out |= set((case.parts or {}).values())
    if case.blocks:
        out |= {r for per in case.blocks.values() for r, w in per.items() if abs(w) > 1e-9 and r != "base"}
    return out


def cases(specs: dict[str, Any], paths: dict[str, Path], work: Path, only: str) -> list[tuple[rb.Case, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    use_mecha = True
    try:
        import sd_mecha  # noqa: F401
    except ImportError:
        use_mecha = False
    made = rb.make_cases(specs, paths, work, use_mecha)
    picked = [c for c in made if c[0].name not in SKIP_CASES]
    if only:
        keep = set(only.split(","))
        picked = [c for c in picked if c[0].name in keep]
    return picked


def make_case(case: rb.Case, maker: Any) -> Path:
    t = time.perf_counter()
    maker(case)
    case.seconds_merge = time.perf_counter() - t
    assert case.path is not None
    return case.path


# ---------------------------------------------------------------- 1. the search step alone


def block_scale(vecs: dict[str, SearchVector], per_block: int) -> np.ndarray:
    """Per-value size of a fine-tune's change: the RMS per block of the real fine-tunes' changes."""
    base = vecs["base"].raw.astype(np.float64)
    d = np.stack([vecs[n].raw - base for n in FTS if n != "ft6"])
    per = np.sqrt(np.mean(d.reshape(len(d), -1, per_block) ** 2, axis=(0, 2)))
    return np.repeat(per, per_block)


def synthetic_rows(n: int, vecs: dict[str, SearchVector], scale: np.ndarray, rng: np.random.Generator,
                   related: int | None = None, chunk: int = 100_000) -> tuple[np.ndarray, dict[str, int]]:
    """(n, dim) float32 raw vectors of synthetic references (see the module docstring), and how many
    of each kind. ``related``: that many children and merges of the real fine-tunes in all (half
    each); None: 15% and 10% of every size (a stress setting: at 1M, 100,000 merges of 6 models)."""
    base = vecs["base"].raw.astype(np.float32)
    reals = np.stack([vecs[k].raw for k in REAL]).astype(np.float32)
    fts = reals[1:] - base
    dim = len(base)
    out = np.empty((n, dim), np.float32)
    kinds = {"fine-tune": 0, "child of a real ft": 0, "merge of real fts, trained": 0, "copy/re-save of a real ref": 0,
             "copy of the base": 0}
    p = np.array([0.70, 0.15, 0.10, 0.03, 0.02]) if related is None else np.array([0.95, 0.0, 0.0, 0.03, 0.02])
    rel = np.zeros(n, np.int8)
    if related:
        at = rng.choice(n, min(related, n), replace=False)
        rel[at] = 1 + (np.arange(len(at)) % 2)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        kind = rng.choice(5, size=m, p=p)
        kind = np.where(rel[start : start + m] > 0, rel[start : start + m], kind)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * scale.astype(np.float32)
        size = np.exp(rng.normal(0.0, 0.5, m)).astype(np.float32)
        rows = base + noise * size[:, None]
        child = np.flatnonzero(kind == 1)
        rows[child] = base + fts[rng.integers(0, len(fts), len(child))] + noise[child] * rng.uniform(
            0.3, 1.0, len(child)).astype(np.float32)[:, None]
        merge = np.flatnonzero(kind == 2)
        if len(merge):
            w = rng.dirichlet(np.ones(len(fts)) * 0.5, len(merge)).astype(np.float32)
            rows[merge] = base + w @ fts + noise[merge] * rng.uniform(0.3, 1.0, len(merge)).astype(np.float32)[:, None]
        copy = np.flatnonzero(kind == 3)
        src = reals[rng.integers(0, len(reals), len(copy))]
        rounding = rng.choice(np.array([0.0, 2.0**-11, 2.0**-8], np.float32), len(copy))  # copy, fp16, bf16
        rows[copy] = src + np.abs(src) * rounding[:, None] * rng.standard_normal((len(copy), dim), dtype=np.float32)
        bc = np.flatnonzero(kind == 4)
        rows[bc] = base + np.abs(base) * 2.0**-11 * rng.standard_normal((len(bc), dim), dtype=np.float32)
        out[start : start + m] = rows
        for k, name in enumerate(kinds):
            kinds[name] += int((kind == k).sum())
    return out, kinds


def recall(sel: Any, truth: set[int]) -> tuple[int, int]:
    named = set(sel.chosen)
    for j in sel.chosen:
        named |= set(sel.groups.get(j, ()))
    return len(truth & named), len(truth)


def vectors_part(args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    from sdforensics import fingerprint

    out = args.out
    specs, paths, fps = fingerprints(out, args.width, args.seed)
    blocks = block_map_of("sd1")
    proj = Projector(blocks, PER_BLOCK)
    vecs = {n: proj.vector(fp) for n, fp in fps.items()}
    targets: dict[str, tuple[SearchVector, set[str]]] = {}
    work = out / f"merges-w{args.width}"
    cache = out / f"target-vectors-w{args.width}.json"
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    for case, maker in cases(specs, paths, work, args.only):
        if case.name not in stored:
            path = make_case(case, maker)
            v = proj.vector(fingerprint(path, device="cpu"))
            stored[case.name] = {"raw": v.raw.tolist(), "present": v.present.tolist()}
            cache.write_text(json.dumps(stored))
            if case.name != "ws2":
                rb.remove(path)
            log(f"  case {case.name}: target vector made")
        s = stored[case.name]
        targets[case.name] = (SearchVector(np.array(s["raw"], np.float32), np.array(s["present"], bool)),
                              ingredients(case))
    rb.remove(work)
    scale = block_scale(vecs, PER_BLOCK)
    base = vecs["base"]
    base_norm = float(np.linalg.norm(base.raw))
    parts = component_columns(blocks, PER_BLOCK)  # as search_library
    rows: list[dict[str, Any]] = []
    checks: list[tuple[str, bool | None]] = []
    for n in [0, *args.sizes]:
        rng = np.random.default_rng(args.seed + n)
        t = time.perf_counter()
        raw, kinds = synthetic_rows(max(n, len(REAL)), vecs, scale, rng, args.related)  # the real ones replace 7 rows
        at = rng.choice(len(raw), len(REAL), replace=False)
        for i, name in zip(at, REAL, strict=True):
            raw[i] = vecs[name].raw
        index = dict(zip(REAL, (int(i) for i in at), strict=True))
        present = np.ones((len(raw), proj.n_blocks), bool)
        made = time.perf_counter() - t
        log(f"  {n:,} synthetic vectors made in {made:.1f} s {kinds}")
        tracemalloc.start()
        t = time.perf_counter()
        deltas = changes(raw, present, base, PER_BLOCK, np.float32, inplace=True)  # as search_library
        norms = row_norms(deltas)
        prep = time.perf_counter() - t
        _, prep_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        q_times, q_peaks, top_times, found, total, top_found = [], [], [], 0, 0, 0
        for name, (tv, truth) in targets.items():
            tdelta = (tv.raw - base.raw) * np.repeat(tv.present & base.present, PER_BLOCK)
            tracemalloc.reset_peak()
            t = time.perf_counter()
            sel = select_candidates(tdelta, deltas, base_norm, LIMIT, norms, parts=parts)
            q_times.append(time.perf_counter() - t)
            q_peaks.append(tracemalloc.get_traced_memory()[1])
            want = {index[r] for r in truth}
            f, k = recall(sel, want)
            found, total = found + f, total + k
            if f < k:
                missed = sorted(r for r in truth if index[r] not in set(sel.chosen) | {
                    i for j in sel.chosen for i in sel.groups[j]})
                log(f"    {n:,}: case {name}: missed {missed}")
            t = time.perf_counter()
            cos = deltas @ tdelta.astype(np.float32)
            cos /= np.maximum(norms, 1e-30)
            top = np.argpartition(-np.abs(cos), LIMIT)[:LIMIT] if len(cos) > LIMIT else np.arange(len(cos))
            top_times.append(time.perf_counter() - t)
            top_found += len(want & set(int(i) for i in top))
        tracemalloc.stop()
        rows.append(dict(n=n, refs=len(raw), made_s=made, prep_s=prep, prep_peak=prep_peak,
                         q_med=float(np.median(q_times)), q_max=max(q_times), q_peak=max(q_peaks),
                         top_med=float(np.median(top_times)), recall=(found, total), top_recall=(top_found, total),
                         raw_mb=raw.nbytes / 2**20, deltas_mb=deltas.nbytes / 2**20, rss=rss_mb()))
        log(f"  {n:,}: {rows[-1]}")
        del raw, deltas, norms, present
    print(f"\n=== search step alone: {len(targets)} recipe cases planted among N synthetic references; "
          f"related to the real fine-tunes: {'25% (stress)' if args.related is None else args.related} "
          f"(SD1 vectors, {proj.dim} floats; real fingerprints at width 1/{args.width}) ===")
    print("| references | make vectors s | changes+norms s (once per base) | its peak MB | select_candidates median s "
          "| max s | its peak MB | exact top-15 matvec s | recall (selection) | recall (top-15 cosine) "
          "| vectors f32 MB | changes MB (in place) | process peak RSS MB |")
    print("|" + "---|" * 13)
    for r in rows:
        print(f"| {r['refs']:,} | {r['made_s']:.1f} | {r['prep_s']:.2f} | {r['prep_peak'] / 2**20:.0f} | "
              f"{r['q_med']:.3f} | {r['q_max']:.3f} | {r['q_peak'] / 2**20:.0f} | {r['top_med']:.3f} | "
              f"{r['recall'][0]}/{r['recall'][1]} | {r['top_recall'][0]}/{r['top_recall'][1]} | "
              f"{r['raw_mb']:.0f} | {r['deltas_mb']:.0f} | {r['rss']:.0f} |")
    for r in rows[1:]:
        checks.append((f"recall of the true ingredients at {r['refs']:,} references: 100%",
                       r["recall"][0] == r["recall"][1]))
    return checks


# ---------------------------------------------------------------- fingerprint-space references


class Maker:
    """Synthetic references in fingerprint space, one at a time (see the module docstring)."""

    def __init__(self, fps: dict[str, Fingerprint], seed: int) -> None:
        self.fps = fps
        self.base = fps["base"]
        self.rng = np.random.default_rng(seed)
        self.rms: dict[str, list[float]] = {}
        ft = fps["ft1"]
        for key, t in self.base.tensors.items():
            u = ft.tensors.get(key)
            if u is None or t.dtype.startswith(("I", "U")) or t.dtype == "BOOL":
                continue
            self.rms[key] = [_rms(a, b) for a, b in zip(_arrays(t), _arrays(u), strict=True)]

    def _noisy(self, tensors: dict[str, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], size: float,
               name: str) -> Fingerprint:
        out: dict[str, TensorPrint] = {}
        for key, t in self.base.tensors.items():
            if key not in self.rms or key not in tensors:
                out[key] = t
                continue
            arrays = []
            for a, r in zip(tensors[key], self.rms[key], strict=True):
                if a is None:
                    arrays.append(None)
                else:
                    arrays.append((a + size * r * self.rng.standard_normal(a.shape)).astype(np.float32))
            out[key] = replace(t, values=arrays[0], sample=arrays[1], structure=arrays[2], digest=_hex(name, key))
        identity = dict(self.base.identity)
        identity.update(name=name, source_file=f"{name}.safetensors", sha256=_hex("file", name))
        return Fingerprint(self.base.scheme, identity, out)

    def make(self, name: str) -> tuple[str, Fingerprint]:
        rng = self.rng
        kind = rng.choice(4, p=[0.75, 0.12, 0.10, 0.03])
        size = float(np.exp(rng.normal(0.0, 0.5)))
        if kind == 0:  # independent fine-tune of the base
            arrays = {k: _arrays(t) for k, t in self.base.tensors.items() if k in self.rms}
            return "fine-tune", self._noisy(arrays, size, name)
        if kind == 1:  # child of a real fine-tune
            parent = self.fps[str(rng.choice(FTS))]
            arrays = {k: _arrays(t) for k, t in parent.tensors.items() if k in self.rms}
            return "child", self._noisy(arrays, rng.uniform(0.3, 1.0), name)
        if kind == 2:  # merge of real fine-tunes, trained further
            w = rng.dirichlet(np.ones(len(FTS)) * 0.5)
            arrays = {}
            for k in self.rms:
                parts = [_arrays(self.fps[f].tensors[k]) for f in FTS]
                b = _arrays(self.base.tensors[k])
                arrays[k] = tuple(
                    None if b[i] is None else b[i] + sum(wj * (p[i] - b[i]) for wj, p in zip(w, parts, strict=True))
                    for i in range(3))
            return "merge", self._noisy(arrays, rng.uniform(0.3, 1.0), name)
        src = self.fps[str(rng.choice(REAL))]  # a renamed copy
        identity = dict(src.identity)
        identity.update(name=name)
        return "copy", Fingerprint(src.scheme, identity, src.tensors)


def _hex(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _arrays(t: TensorPrint) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    return (np.asarray(t.values, np.float64), None if t.sample is None else np.asarray(t.sample, np.float64),
            None if t.structure is None else np.asarray(t.structure, np.float64))


def _rms(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or not a.size:
        return 0.0
    return float(np.sqrt(np.mean((a - b) ** 2)))


def build_libraries(out: Path, width: int, fps: dict[str, Fingerprint], n_refs: int, seed: int) -> tuple[Path, Path]:
    small, big = out / f"lib10-w{width}", out / f"lib{n_refs}-w{width}"
    maker = Maker(fps, seed)
    extra = {}
    for i in range(3):  # the same three in both libraries, whichever is made first
        maker.rng = np.random.default_rng([seed, i])
        arrays = {k: _arrays(t) for k, t in fps["base"].tensors.items() if k in maker.rms}
        extra[f"other{i}"] = maker._noisy(arrays, 1.0, f"other{i}")
    maker.rng = np.random.default_rng(seed)
    if not (small / "library.sqlite").exists():
        lib = Library(small)
        for name in REAL:
            lib.add(fps[name], name, official=name == "base")
        for name, fp in extra.items():
            lib.add(fp, name)
    done = big / "done.json"
    if done.exists() and json.loads(done.read_text()).get("refs") == n_refs:
        return small, big
    if big.exists():
        shutil.rmtree(big)
    lib = Library(big)
    t = time.perf_counter()
    counts: dict[str, int] = {}
    with lib.writing(sweep=False, reload=False) as con:
        for name in REAL:
            lib.add_in(con, fps[name], name, official=name == "base")
        for name, fp in extra.items():
            lib.add_in(con, fp, name)
    for i in range(n_refs - 10):
        kind, fp = maker.make(f"hub{i:05d}")
        counts[kind] = counts.get(kind, 0) + 1
        with lib.writing(sweep=False, reload=False) as con:
            lib.add_in(con, fp, f"hub{i:05d}")
        if i % 100 == 99:
            log(f"  library: {i + 11} references, {time.perf_counter() - t:.0f} s")
    done.write_text(json.dumps({"refs": n_refs, "kinds": counts, "seconds": time.perf_counter() - t}))
    return small, big


# ---------------------------------------------------------------- 2. sdf analyze against a large library

RUN_SDF = (
    "import resource, sys, time\n"
    "t = time.perf_counter()\n"
    "from sdforensics.cli import main\n"
    "sys.argv = ['sdf', *sys.argv[1:]]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    hwm = next(x for x in open('/proc/self/status') if x.startswith('VmHWM')).split()[1]\n"
    "    print(f'@@ {hwm} {time.perf_counter() - t}', file=sys.stderr)\n"
)


def sdf_analyze(path: Path, library: Path) -> dict[str, Any]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RUN_SDF, "analyze", str(path), "--library", str(library), "-f", "json"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"sdf analyze failed: {res.stderr[-2000:]}")
    line = next(x for x in res.stderr.splitlines() if x.startswith("@@ "))
    doc = json.loads(res.stdout)
    return {"wall": wall, "rss_mb": int(line.split()[1]) / 1024, "doc": doc}


def recipe_key(doc: dict[str, Any]) -> tuple[Any, ...]:
    rec = doc.get("recipe") or {}
    comps = tuple(sorted((c["reference"], round(float(c["weight"]), 3)) for c in rec.get("components", [])))
    parts = tuple(sorted((p, (v or {}).get("copy_of")) for p, v in (rec.get("parts") or {}).items()))
    return rec.get("kind"), rec.get("copy_of"), comps, parts


def analyze_part(args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    out = args.out
    specs, paths, fps = fingerprints(out, args.width, args.seed)
    free = shutil.disk_usage(out).free
    need = args.refs * (out / f"prints-w{args.width}" / "base.sdfp").stat().st_size
    log(f"  library of {args.refs} needs {need / 1e9:.1f} GB; {free / 1e9:.1f} GB free")
    if need > free - 10e9:
        raise SystemExit("not enough disk for the library (keep 10 GB free); lower --refs")
    small, big = build_libraries(out, args.width, fps, args.refs, args.seed)
    log(f"  libraries: {small}, {big} ({json.loads((big / 'done.json').read_text())})")
    work = out / f"merges-w{args.width}"
    rows = []
    for case, maker in cases(specs, paths, work, args.only):
        path = make_case(case, maker)
        runs: dict[str, list[dict[str, Any]]] = {"small": [], "big": []}
        for _ in range(args.repeat):
            runs["small"].append(sdf_analyze(path, small))
            runs["big"].append(sdf_analyze(path, big))
        if case.name != "ws2":
            rb.remove(path)
        s, b = runs["small"], runs["big"]
        ts, tb = float(np.median([r["wall"] for r in s])), float(np.median([r["wall"] for r in b]))
        ks, kb = recipe_key(s[0]["doc"]), recipe_key(b[0]["doc"])
        rb.evaluate(case, s[0]["doc"].get("recipe") or {})
        ok_small = all(case.checks.values())
        row = dict(case=case.name, t_small=ts, t_big=tb, ratio=tb / ts, rss_small=max(r["rss_mb"] for r in s),
                   rss_big=max(r["rss_mb"] for r in b), same=ks == kb, small_ok=ok_small,
                   text_small=(s[0]["doc"].get("recipe") or {}).get("text"),
                   text_big=(b[0]["doc"].get("recipe") or {}).get("text"),
                   searched=b[0]["doc"]["library"]["references"])
        rows.append(row)
        log(f"  {case.name}: {row}")
    rb.remove(work)
    print(f"\n=== sdf analyze (CLI subprocess), width 1/{args.width}: 10-reference library vs {args.refs:,} references "
          f"(median of {args.repeat}, alternated) ===")
    print("| case | recipe vs 10 (bench/recipes.py checks) | 10 refs s | "
          f"{args.refs:,} refs s | ratio | peak RSS 10 MB | peak RSS {args.refs:,} MB | same recipe |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {'PASS' if r['small_ok'] else 'FAIL'}: {r['text_small']} | {r['t_small']:.2f} | "
              f"{r['t_big']:.2f} | {r['ratio']:.2f} | {r['rss_small']:.0f} | {r['rss_big']:.0f} | "
              f"{'yes' if r['same'] else 'NO: ' + str(r['text_big'])} |")
    med = float(np.median([r["ratio"] for r in rows])) if rows else float("nan")
    print(f"median time ratio {med:.2f}; worst {max((r['ratio'] for r in rows), default=float('nan')):.2f}")
    return [
        (f"analyze vs {args.refs:,} refs <= 1.3x vs 10 (median)", med <= 1.3),
        (f"peak RSS vs {args.refs:,} refs < 2 GB", all(r["rss_big"] < 2048 for r in rows)),
        ("same recipe as vs the 10", all(r["same"] for r in rows)),
    ]


# ---------------------------------------------------------------- 3. copies and re-saves


def copies_part(args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    import torch

    from sdforensics import fingerprint
    from sdforensics.synth.specs import write_safetensors

    out = args.out
    specs, paths, fps = fingerprints(out, args.width, args.seed)
    plain, full = out / f"lib-plain-w{args.width}", out / f"lib-copies-w{args.width}"
    for folder in (plain, full):
        if folder.exists():
            shutil.rmtree(folder)
    tmp = out / f"resaves-w{args.width}"
    tmp.mkdir(parents=True, exist_ok=True)
    lp, lf = Library(plain), Library(full)
    copies: dict[str, list[str]] = {}
    t = time.perf_counter()
    for name in REAL:
        lp.add(fps[name], name, official=name == "base")
        lf.add(fps[name], name, official=name == "base")
        copies[name] = []
        for tag in ("renamed_a", "renamed_b"):
            f = tmp / f"{name}_{tag}.safetensors"
            shutil.copyfile(paths[name], f)
            lf.add(fingerprint(f, device="cpu"), f"{name}_{tag}")
            copies[name].append(f"{name}_{tag}")
            f.unlink()
        for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
            f = write_safetensors(specs[name], tmp / f"{name}_{tag}.safetensors", dtype=dtype)
            lf.add(fingerprint(f, device="cpu"), f"{name}_{tag}")
            copies[name].append(f"{name}_{tag}")
            f.unlink()
    log(f"  libraries: {len(REAL)} and {len(REAL) * 6} references ({time.perf_counter() - t:.0f} s)")
    work = out / f"merges-w{args.width}"
    rows = []
    for case, maker in cases(specs, paths, work, args.only):
        path = make_case(case, maker)
        a = sdf_analyze(path, plain)
        b = sdf_analyze(path, full)
        if case.name != "ws2":
            rb.remove(path)
        ra, rbk = a["doc"].get("recipe") or {}, b["doc"].get("recipe") or {}
        rb.evaluate(case, ra)
        named = [c["reference"] for c in rbk.get("components", [])] + ([rbk["copy_of"]] if rbk.get("copy_of") else [])
        also = {c["reference"]: set(c.get("also", [])) for c in rbk.get("components", [])}
        also.update({g["reference"]: set(g["also"]) for g in rbk.get("groups", [])})
        ingr = [n for n in named if n in copies and (n != "base" or case.truth.get("base", 0) != 0 or n in named)]
        grouped = all(also.get(n, set()) >= set(copies[n]) for n in ingr if n != "base" or n in also)
        missing = {n: sorted(set(copies[n]) - also.get(n, set())) for n in ingr if set(copies[n]) - also.get(n, set())}
        rows.append(dict(case=case.name, ok=all(case.checks.values()), plain=ra.get("text"), full=rbk.get("text"),
                         same=recipe_key(a["doc"]) == recipe_key(b["doc"]),
                         same_model=canonical(recipe_key(a["doc"])) == canonical(recipe_key(b["doc"])),
                         grouped=grouped, missing=missing,
                         searched=b["doc"]["library"]["references"], t_plain=a["wall"], t_full=b["wall"]))
        log(f"  {case.name}: {rows[-1]}")
    rb.remove(work)
    rb.remove(tmp)
    print(f"\n=== recipes with copies and re-saves (width 1/{args.width}): library of {len(REAL)} vs "
          f"{len(REAL) * 6} (each model also renamed twice and re-saved fp32, bf16, fp8; originals fp16) ===")
    print("| case | recipe vs 7 (bench/recipes.py checks) | recipe vs 42 | same names | same models | "
          "ingredients named with all copies |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {'PASS' if r['ok'] else 'FAIL'}: {r['plain']} | {r['full']} | "
              f"{'yes' if r['same'] else 'NO'} | {'yes' if r['same_model'] else 'NO'} | "
              f"{'yes' if r['grouped'] else 'NO: missing ' + str(r['missing'])} |")
    return [("same recipes with copies and re-saves (same names)", all(r["same"] for r in rows)),
            ("same recipes with copies and re-saves (a copy may name its group)", all(r["same_model"] for r in rows)),
            ("each ingredient named with its copies", all(r["grouped"] for r in rows))]


def canonical(key: tuple[Any, ...]) -> str:
    """A recipe key with each copy's name replaced by its model's (``ft2_bf16`` -> ``ft2``)."""
    import re

    return re.sub(r"(base|ft\d)_(renamed_a|renamed_b|fp32|bf16|fp8)", r"\1", repr(key))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("vectors", "analyze", "copies"))
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/search")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--sizes", default="100000,1000000", help="vectors: synthetic references")
    ap.add_argument("--related", type=int, default=None,
                    help="vectors: children + merges of the real fine-tunes in all (default: 25%% of each size)")
    ap.add_argument("--refs", type=int, default=2000, help="analyze: references in the large library")
    ap.add_argument("--repeat", type=int, default=1, help="analyze: runs per library and case (median)")
    ap.add_argument("--only", default="", help="comma list of case names")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    checks = {"vectors": vectors_part, "analyze": analyze_part, "copies": copies_part}[args.part](args)
    print()
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {label}")
    print(f"wall {time.perf_counter() - t:.0f} s, process peak RSS {rss_mb():.0f} MB")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
