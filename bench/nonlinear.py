"""Element-wise merge benchmark (issue 5, TIES / DARE / DARE-TIES part): sd-mecha merges, sdforensics detection.

    python bench/nonlinear.py                  # full size SD1.5 layout (2.1 GB per model)
    python bench/nonlinear.py --width 4        # 1/4 width
    nohup python bench/nonlinear.py > bench/out/nonlinear.log 2>&1 &
    python bench/nonlinear.py --sets ties --cases ties8,ties9 --resume   # split a long run; the table reads saved cases

Uses the family, kept-out model and library of ``bench/recipes.py`` (same ``--out``, ``--width``
and ``--seed``; built here when missing). Three sets of 10 cases, 2-3 references each from
ft1..ft6, seeds varied, all made with sd-mecha (:mod:`bench.mecha_merge`) on the base:

* TIES: ``ties_sum`` with k (share kept) from 0.2 to 0.5;
* DARE: ``dropout`` with drop probability p from 0.7 to 0.95 (rescaled by 1/(1-p));
* DARE-TIES: ``ties_sum_with_dropout`` with p from 0.7 to 0.95 and k = 1 (dropout, then sign election).

Each merge is analysed against the library; a case passes when ``recipe.kind`` is right (``ties``
for TIES; ``dare`` for DARE and DARE-TIES, whose element-wise kind is ``dare_ties``) and the
ingredient set is exact. The issue-5 figure: >= 9 of 10 per set. Also re-checks, from
``OUT/recipes-wN.json`` written by ``bench/recipes.py``, that no linear merge of the recipe
benchmark was reported as TIES, DARE or a LoRA. (The LoRA part of issue 5 is not here.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import mecha_merge as mm  # noqa: E402
import recipes  # noqa: E402

PASS_MIN = 9  # of 10 per set
#: DARE-TIES with apply_stock=True (t = 1): sd-mecha's default multiplies rows by the model-stock t
STOCK_OFF = False

# (refs, k) for TIES; (refs, p, seed) for DARE and DARE-TIES: 2-3 references, parameters spread
TIES_CASES = [
    (("ft2", "ft3"), 0.20),
    (("ft3", "ft4"), 0.30),
    (("ft2", "ft5"), 0.40),
    (("ft4", "ft5"), 0.50),
    (("ft1", "ft3"), 0.25),
    (("ft2", "ft3", "ft4"), 0.20),
    (("ft3", "ft4", "ft5"), 0.35),
    (("ft1", "ft2", "ft5"), 0.45),
    (("ft2", "ft4", "ft6"), 0.30),
    (("ft2", "ft4"), 0.50),
]
DARE_CASES = [
    (("ft2", "ft3"), 0.70, 1),
    (("ft3", "ft4"), 0.80, 2),
    (("ft2", "ft5"), 0.90, 3),
    (("ft4", "ft5"), 0.95, 4),
    (("ft1", "ft3"), 0.75, 5),
    (("ft2", "ft3", "ft4"), 0.70, 6),
    (("ft3", "ft4", "ft5"), 0.85, 7),
    (("ft1", "ft2", "ft5"), 0.90, 8),
    (("ft2", "ft4", "ft6"), 0.80, 9),
    (("ft2", "ft4"), 0.95, 10),
]
DARE_TIES_CASES = [
    (("ft2", "ft4"), 0.70, 11),
    (("ft3", "ft5"), 0.80, 12),
    (("ft2", "ft3"), 0.90, 13),
    (("ft4", "ft5"), 0.95, 14),
    (("ft1", "ft4"), 0.85, 15),
    (("ft2", "ft3", "ft5"), 0.70, 16),
    (("ft3", "ft4", "ft5"), 0.80, 17),
    (("ft1", "ft2", "ft4"), 0.90, 18),
    (("ft3", "ft5", "ft6"), 0.75, 19),
    (("ft2", "ft5"), 0.95, 20),
]


@dataclass
class NCase:
    name: str
    method: str  # ties | dare | dare_ties
    refs: tuple[str, ...]
    k: float | None = None
    p: float | None = None
    seed: int | None = None
    merger: str = ""
    seconds_merge: float = 0.0
    seconds_analyze: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "ties" if self.method == "ties" else "dare"

    @property
    def ok(self) -> bool:
        r = self.result
        return r.get("kind") == self.kind and set(r.get("ingredients", ())) == set(self.refs)


def make(case: NCase, paths: dict[str, Path], out: Path) -> None:
    models = [paths[r] for r in case.refs]
    if case.method == "ties":
        mm.ties(models, paths["base"], case.k or 1.0, out)
    elif case.method == "dare":
        mm.dare(models, paths["base"], case.p or 0.9, case.seed or 0, out)
    else:
        mm.dare_ties(models, paths["base"], case.p or 0.9, 1.0, case.seed or 0, out, apply_stock=STOCK_OFF)
    case.merger = "sd-mecha"


def analyze_case(case: NCase, path: Path, library: Path) -> None:
    from sdforensics import analyze

    t = time.perf_counter()
    rec = analyze(path, library=library, device="cpu").to_json().get("recipe") or {}
    case.seconds_analyze = time.perf_counter() - t
    ew = rec.get("elementwise") or {}
    weights = {c["reference"]: float(c["weight"]) for c in rec.get("components", [])}
    if ew.get("kind") in ("ties", "dare", "dare_ties"):
        ingredients = list(ew.get("ingredients") or [])
    else:
        ingredients = [k for k, w in weights.items() if k != "base" and abs(w) > 0.03]
    case.result = {
        "kind": rec.get("kind"),
        "elementwise": ew.get("kind"),
        "ingredients": ingredients,
        "density": ew.get("density"),
        "drop_rate": ew.get("drop_rate"),
        "scale": ew.get("scale"),
        "equal_fraction": ew.get("equal_fraction"),
        "weights": weights,
        "unexplained": rec.get("unexplained"),
        "text": rec.get("text"),
    }


def _case_json(c: NCase) -> dict[str, Any]:
    return {
        "name": c.name,
        "method": c.method,
        "refs": c.refs,
        "k": c.k,
        "p": c.p,
        "seed": c.seed,
        "merger": c.merger,
        "ok": c.ok,
        "seconds_merge": c.seconds_merge,
        "seconds_analyze": c.seconds_analyze,
        "result": c.result,
        "notes": c.notes,
    }


def linear_recheck(out: Path, width: int) -> tuple[bool | None, list[str]]:
    """From recipes.py's JSON: no linear merge reported as TIES, DARE or LoRA.

    Checks every ``recipes-w*.json`` there is (full size first, then this width, then others)."""
    found = sorted(
        out.glob("recipes-w*.json"),
        key=lambda p: (p.name != "recipes-w1.json", p.name != f"recipes-w{width}.json", p.name),
    )
    if not found:
        return None, ["no recipes-w*.json: run bench/recipes.py first"]
    ok = True
    lines: list[str] = []
    for src in found:
        data = json.loads(src.read_text())
        lines.append(f"source {src.name} (width 1/{data.get('width')})")
        for c in data["cases"]:
            r = c["result"]
            bad = (
                r.get("kind") in ("ties", "dare", "lora")
                or r.get("elementwise") not in (None, "linear")
                or bool(r.get("loras"))
            )
            ok &= not bad
            lines.append(
                f"  {c['name']:<18} kind {r.get('kind')!s:<16} elementwise {r.get('elementwise')!s:<8} "
                f"loras {r.get('loras', 0)}  {'FAIL' if bad else 'ok'}"
            )
    return ok, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/recipes")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--rebuild-library", action="store_true", help="fingerprint the library again")
    ap.add_argument("--sets", default="ties,dare,dare_ties", help="comma list of sets to run")
    ap.add_argument("--n", type=int, default=10, help="cases per set (development)")
    ap.add_argument("--no-model-stock", action="store_true", help="DARE-TIES with apply_stock=True (t = 1)")
    ap.add_argument("--cases", default="", help="comma list of case names to run (e.g. ties8,dare6); others skipped")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="reuse a case's saved result (WORK/<case>.json, written after each case) instead of merging again",
    )
    args = ap.parse_args(argv)
    global STOCK_OFF
    STOCK_OFF = args.no_model_stock
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    mm.set_threads(args.threads)
    if not mm.available():
        print("sd-mecha is not installed: TIES/DARE merges need it", file=sys.stderr)
        return 2
    recipes.log(f"width 1/{args.width}; out {args.out}")
    _, paths = recipes.ensure_models(args.out, args.width, args.seed)
    library = args.out / f"library-w{args.width}"
    if args.rebuild_library or not recipes.library_ready(library):
        library = recipes.build_library(args.out, args.width, paths)
    work = args.out / f"nonlinear-w{args.width}"
    work.mkdir(parents=True, exist_ok=True)
    sets = [s for s in args.sets.split(",") if s]
    cases: list[NCase] = []
    if "ties" in sets:
        cases += [NCase(f"ties{i + 1}", "ties", r, k=k) for i, (r, k) in enumerate(TIES_CASES[: args.n])]
    if "dare" in sets:
        cases += [NCase(f"dare{i + 1}", "dare", r, p=p, seed=s) for i, (r, p, s) in enumerate(DARE_CASES[: args.n])]
    if "dare_ties" in sets:
        cases += [
            NCase(f"dareties{i + 1}", "dare_ties", r, p=p, k=1.0, seed=s)
            for i, (r, p, s) in enumerate(DARE_TIES_CASES[: args.n])
        ]
    if args.cases:
        wanted = set(args.cases.split(","))
        cases = [c for c in cases if c.name in wanted]
    tag = "-nostock" if STOCK_OFF else ""
    for case in cases:
        path = work / f"{case.name}.safetensors"
        saved = work / f"{case.name}{tag}.json"
        if args.resume and saved.exists():
            done = json.loads(saved.read_text())
            case.result, case.notes, case.merger = done["result"], done["notes"], done["merger"]
            case.seconds_merge, case.seconds_analyze = done["seconds_merge"], done["seconds_analyze"]
            recipes.log(f"{case.name}: saved result from {done['finished']}")
            continue
        t = time.perf_counter()
        try:
            make(case, paths, path)
            case.seconds_merge = time.perf_counter() - t
            analyze_case(case, path, library)
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
            case.notes.append(f"{type(exc).__name__}: {exc}")
        if not args.keep:
            path.unlink(missing_ok=True)
        saved.write_text(
            json.dumps(
                _case_json(case) | {"finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())},
                indent=1,
                default=str,
            )
        )
        r = case.result
        recipes.log(
            f"{case.name}: {'+'.join(case.refs)} k={case.k} p={case.p}: kind {r.get('kind')} "
            f"({r.get('elementwise')}), ingredients {r.get('ingredients')}, "
            f"merge {case.seconds_merge:.0f} s, analyze {case.seconds_analyze:.0f} s"
        )
    wall = time.perf_counter() - t0
    print(
        f"\n=== sdforensics element-wise benchmark (issue 5, TIES/DARE): SD1.5 layout, width 1/{args.width}"
        f"{' (full size)' if args.width == 1 else ' (REDUCED; full size is --width 1)'} ==="
    )
    head = (
        f"{'case':<11} {'merger':<9} {'ingredients (true)':<18} {'param':<12} {'kind exp -> got':<26} "
        f"{'ingredients got':<18} {'density/drop est':<17} {'unexpl':>7}  result"
    )
    print(head)
    print("-" * len(head))
    for c in cases:
        r = c.result
        param = f"k={c.k:.2f}" if c.method == "ties" else f"p={c.p:.2f} s={c.seed}"
        est = r.get("density") if c.method == "ties" else r.get("drop_rate")
        est_s = "-" if est is None else (f"k~{est:.3f}" if c.method == "ties" else f"p~{est:.3f}")
        kind = f"{c.kind} -> {r.get('kind')} ({r.get('elementwise')})"
        u = r.get("unexplained")
        print(
            f"{c.name:<11} {c.merger:<9} {'+'.join(c.refs):<18} {param:<12} {kind:<26} "
            f"{'+'.join(sorted(r.get('ingredients', []))):<18} {est_s:<17} "
            f"{'-' if u is None else f'{u:.3f}':>7}  {'PASS' if c.ok else 'FAIL'}"
        )
        for n in c.notes:
            print(f"    note: {n}")
        if not c.ok and r.get("text"):
            print(f"    text: {r['text']}")
    print()
    summary: list[tuple[str, bool | None]] = []
    for method, label in (
        ("ties", "TIES (k 0.2-0.5)"),
        ("dare", "DARE (p 0.7-0.95)"),
        ("dare_ties", "DARE-TIES (p 0.7-0.95)"),
    ):
        sel = [c for c in cases if c.method == method]
        if not sel:
            continue
        n_ok = sum(c.ok for c in sel)
        need = PASS_MIN if len(sel) == 10 else len(sel) - 1
        summary.append(
            (f"{label}: kind right and ingredient set exact in {n_ok}/{len(sel)} (need >= {need})", n_ok >= need)
        )
    dt = [c for c in cases if c.method == "dare_ties"]
    if dt:
        n_dt = sum(c.result.get("elementwise") == "dare_ties" for c in dt)
        print(f"(info) DARE-TIES cases whose element-wise kind was named dare_ties: {n_dt}/{len(dt)}")
    ok_lin, lines = linear_recheck(args.out, args.width)
    print("linear merges of bench/recipes.py re-checked (no TIES/DARE/LoRA reported):")
    for line in lines:
        print(line)
    summary.append(("no TIES, DARE or LoRA reported for any linear merge of the recipe benchmark", ok_lin))
    for text, ok in summary:
        print(f"{'PASS' if ok else ('FAIL' if ok is False else 'N/A ')}  {text}")
    print(f"wall time {wall / 60:.1f} min")
    dump = {
        "width": args.width,
        "wall_s": wall,
        "cases": [_case_json(c) for c in cases],
        "figures": [{"figure": t, "pass": ok} for t, ok in summary],
    }
    (args.out / f"nonlinear-w{args.width}{tag}-{args.sets.replace(',', '+')}.json").write_text(
        json.dumps(dump, indent=1, default=str)
    )
    return 0 if all(ok is not False for _, ok in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
