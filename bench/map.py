"""`sdf map` on a generated collection with a known lineage: edges found against the truth.

The collection is made in fingerprint space (:func:`sdforensics.synth.collection.fingerprint_collection`:
merges are exact linear combinations of fingerprints, fine-tunes add independent changes sized like a
real fine-tune's, re-saves round the exact values to their precision), from two real fingerprints of
small-width synthetic files (a base and a fine-tune of it), and stored in a library; then
:func:`sdforensics.collection.mapping.map_collection` maps it. Run (under the shared lock):

    flock /tmp/heavy.lock nice python bench/map.py --size 60 --out /work/scratch/map/bench

Prints a table: precision and recall of the edges (copies and re-saves matched within their group, so
``copy of mix`` equals ``copy of mix's copy``), fine-tune directions right, merge weights within 0.02,
against a baseline measured in the same run: a MoTHer-like tree (each model's parent is its nearest
model with a smaller change from the base; no duplicate, merge or component handling).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from sdforensics.api import fingerprint_model
from sdforensics.collection.lineage import union_groups
from sdforensics.collection.mapping import PER_BLOCK, map_collection
from sdforensics.library.store import Library
from sdforensics.library.vectors import Projector
from sdforensics.model.architecture import block_map_of
from sdforensics.synth.collection import fingerprint_collection, plan_collection, truth_of
from sdforensics.synth.specs import Base, FineTune, write_safetensors

DERIVED = ("finetune", "lora")


def canon(truth: dict) -> dict[str, str]:
    """Each node -> the first name of its copy group (copies and re-saves are the same model)."""
    names = [n["name"] for n in truth["nodes"]]
    at = {n: i for i, n in enumerate(names)}
    pairs = [(at[e["source"]], at[e["target"]]) for e in truth["edges"] if e["kind"] == "copy"]
    out = {}
    for g in union_groups(len(names), pairs):
        for i in g:
            out[names[i]] = names[g[0]]
    return out


def score(edges: list[dict], truth: dict) -> dict[str, float]:
    """Precision / recall of ``edges`` (source, target, kind, weight) against ``truth``."""
    c = canon(truth)
    want: dict[tuple[str, str, str], float] = {}
    copy_pairs = set()
    for e in truth["edges"]:
        s, t = c[e["source"]], c[e["target"]]
        kind = "derived" if e["kind"] in DERIVED else e["kind"]
        if kind == "copy":
            copy_pairs.add(frozenset((e["source"], e["target"])))
            continue
        want[(s, t, kind)] = float(e["weight"])
    groups = Counter(c.values())
    n_truth = len(want) + sum(v - 1 for v in groups.values())
    tp = 0
    directed = reversed_ = 0
    weight_ok = weight_n = 0
    worst = 0.0
    seen = set()
    for e in edges:
        kind = "derived" if e["kind"] in DERIVED else e["kind"]
        s, t = c.get(e["source"], e["source"]), c.get(e["target"], e["target"])
        if kind == "copy":
            if s == t and (s, t, e["target"]) not in seen:  # one edge per copy
                seen.add((s, t, e["target"]))
                tp += 1
            continue
        if (s, t, kind) in want and (s, t, kind) not in seen:
            seen.add((s, t, kind))
            tp += 1
            if kind == "derived":
                directed += 1
            if kind == "merge":
                weight_n += 1
                err = abs(float(e["weight"]) - want[(s, t, kind)])
                worst = max(worst, err)
                weight_ok += err <= 0.02
        elif kind == "derived" and (t, s, kind) in want:
            reversed_ += 1
    return {
        "edges": len(edges), "truth": n_truth, "tp": tp,
        "precision": tp / max(len(edges), 1), "recall": tp / max(n_truth, 1),
        "directions": directed / max(directed + reversed_, 1),
        "weights_ok": weight_ok / max(weight_n, 1), "worst_weight": worst,
        "merges_found": weight_n, "merges_truth": sum(1 for k in want if k[2] == "merge"),
    }


def mother_baseline(lib: Path, base: str) -> list[dict]:
    """Each model's parent: the nearest (in change from the base) with a smaller change; the base's children
    otherwise. No copies, merges or swaps recognised (what a weights-only tree gives)."""
    library = Library(lib)
    entries = [e for e in library.entries if e.kind == "model"]
    proj = Projector(block_map_of(str(entries[0].identity.get("arch") or "sd1")), PER_BLOCK)
    vecs = {e.name: proj.vector(library.load(e.name)).raw.astype(np.float64) for e in entries}
    deltas = {n: v - vecs[base] for n, v in vecs.items()}
    norms = {n: float(np.linalg.norm(d)) for n, d in deltas.items()}
    edges = []
    for n in vecs:
        if n == base:
            continue
        cands = [m for m in vecs if m != n and norms[m] < norms[n]]
        par = min(cands, key=lambda m: float(np.linalg.norm(deltas[n] - deltas[m]))) if cands else base
        edges.append({"source": par, "target": n, "kind": "finetune", "weight": 1.0})
    return edges


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("/work/scratch/map/bench"))
    ap.add_argument("--keep", action="store_true", help="keep the library (default: deleted at the end)")
    args = ap.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    base_spec = Base("sd1", width=args.width, seed=11)
    write_safetensors(base_spec, out / "real-base.safetensors")
    write_safetensors(FineTune(base_spec, seed=12, scale=0.05), out / "real-ft.safetensors")
    _, fb = fingerprint_model(out / "real-base.safetensors", device="cpu")
    _, ff = fingerprint_model(out / "real-ft.safetensors", device="cpu")
    plan = plan_collection(args.size, seed=args.seed)
    truth = truth_of(plan)
    prints = fingerprint_collection(plan, fb, ff, seed=args.seed)
    lib = out / "library"
    library = Library(lib)
    with library.writing() as con:
        for n in plan:
            library.add_in(con, prints[n.name], n.name, official=n.op == "base", replace=False)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    made = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = map_collection(lib, progress=lambda s, d, t: print(f"\r{s}: {d}/{t}   ", end="", file=sys.stderr))
    print("", file=sys.stderr)
    took = time.perf_counter() - t1
    doc = m.to_json()
    (out / "map.json").write_text(json.dumps(doc, indent=1))
    ours = score(doc["edges"], truth)
    base = score(mother_baseline(lib, truth["base"]), truth)
    print(f"collection: {len(plan)} models ({dict(Counter(n.op for n in plan))}), {len(truth['edges'])} truth edges; "
          f"made in {made:.1f} s; mapped in {took:.1f} s")
    print()
    print("| method | edges | precision | recall | fine-tune directions | merge weights within 0.02 "
          "| worst weight error |")
    print("|---|---|---|---|---|---|---|")
    for label, r in (("sdf map", ours), ("baseline: nearest smaller-change parent (MoTHer-like)", base)):
        merges = f"{r['weights_ok']:.2f} ({r['merges_found']}/{r['merges_truth']} merge edges found)"
        print(f"| {label} | {r['edges']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['directions']:.2f} | "
              f"{merges} | {r['worst_weight']:.4f} |")
    wrong = []
    c = canon(truth)
    want = {(c[e["source"]], c[e["target"]]) for e in truth["edges"]}
    for e in doc["edges"]:
        if e["kind"] != "copy" and (c.get(e["source"]), c.get(e["target"])) not in want:
            wrong.append(f"{e['source']} -> {e['target']} ({e['kind']}, {e['weight']:.2f})")
    if wrong:
        print("\nedges not in the truth:", "; ".join(wrong[:20]))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
