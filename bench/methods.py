"""Merge-method coverage benchmark (issue 19): every sd-mecha merge method, SuperMerger's modes, chains.

    python bench/methods.py --width 16          # development: seconds per case
    flock /work/notes/heavy.lock nice python bench/methods.py --width 1 --out /work/scratch/p19/methods

What it does:

1. builds the SD1.5-layout family and library of ``bench/recipes.py`` (base official, ft1..ft6, ft6 a
   child of ft1; same ``--out``/``--width``/``--seed`` layout, so an existing family is reused);
2. lists sd-mecha's merge methods FROM THE INSTALLED PACKAGE (``sd_mecha.extensions.merge_methods
   .get_all()``): each gets a case written here with typical parameters; a method with no case (new in
   a later sd-mecha) is printed as ``no case written``; converters and utilities that do not merge
   models (cast, stack, pick_component, LoRA extraction...) are listed by name at the end, not hidden;
   a method sd-mecha cannot run on our synthetic keys is a row saying so, with sd-mecha's error;
3. adds SuperMerger's calc modes written from its published formulas (``scripts/mergers/mergers.py``
   of hako-mikan/sd-webui-supermerger: sum twice, triple sum, train difference, smooth add difference,
   cosineA, cosineB; extract from its documented formula ``A + d * lerp(B - A', C - A', alpha) *
   lerp(s, 1 - s, beta)``, ``s = ((cos_row + 1) / 2) ** gamma``), applied tensor by tensor here;
4. adds chains: merges of merges whose inner results are never saved (one sd-mecha recipe graph,
   three levels deep);
5. analyses each file with ``sdforensics.analyze`` against the library and prints one table:
   method, truth, kind, ingredients found, weights, unexplained, confidence, PASS/FAIL, and a summary.

A row passes when the ingredient set (references other than the base) is exact, the method or its
family is named where issue 19 item 2 asks for it, linear weights are within 0.02 of the truth,
reported parameters within 0.05, and a wrong ingredient set is never reported with high confidence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import mecha_merge as mm  # noqa: E402
import recipes  # noqa: E402

TOL_WEIGHT = 0.02
TOL_PARAM = 0.05

# sd-mecha identifiers that are not merges of models: conversions between key layouts, dtype/device
# utilities, component picking, LoRA extraction, permutation tools. Listed, not run.
NOT_MERGES_PREFIX = ("convert_", "extract_", "exchange_ema")
NOT_MERGES = {
    "cast": "dtype/device cast",
    "get_dtype": "utility",
    "get_device": "utility",
    "stack": "utility (stacks tensors for other methods)",
    "fallback": "utility (key fallback)",
    "pick_component": "utility (component selection; covered by bench/recipes.py swaps)",
    "omit_component": "utility (component removal)",
    "omit_non_finite": "utility",
    "scale": "one model times a factor",
    "subtract": "delta of two models (a building block; used by every delta case)",
    "perpendicular_component": "building block of add_perpendicular",
    "get_rank_from_ratio": "utility",
    "randperm": "permutation of one model (not a merge)",
    "randperm_sdxl_sgm": "permutation of one SDXL model (not a merge)",
    "balance_attention": "rescales one model's attention (not a merge)",
    "balance_attention_sdxl_sgm": "rescales one SDXL model's attention (not a merge)",
    "truncate_kronecker": "one delta's Kronecker truncation (LoKr extraction building block)",
}


@dataclass
class MCase:
    name: str
    source: str  # sd-mecha | SuperMerger | chain
    method: str  # what the user ran
    family: tuple[str, ...]  # method names sdforensics may report (item 2), () = any honest answer
    ingredients: tuple[str, ...]  # true ingredients other than the base
    weights: dict[str, float] | None = None  # affine truth for linear methods (base included)
    params: dict[str, float] = field(default_factory=dict)  # parameters sdforensics should report
    build: Callable[[Path], None] | None = None
    status: str = ""  # "" ran | "cannot run: ..." | "no case written"
    result: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def affine(**w: float) -> dict[str, float]:
    return recipes.affine(**w)


# ---------------------------------------------------------------- sd-mecha cases


def mecha_cases(p: dict[str, Path]) -> dict[str, list[MCase]]:
    """Cases per sd-mecha identifier; each build writes one merged file."""
    import sd_mecha as sd

    m = mm._m  # noqa: SLF001 - the bench helpers
    write = mm._write  # noqa: SLF001

    def deltas(*names: str) -> list[Any]:
        return mm._deltas([p[n] for n in names], p["base"])  # noqa: SLF001

    def on_base(delta: Any, alpha: float = 1.0) -> Any:
        return mm._on_base(p["base"], delta, alpha)  # noqa: SLF001

    from sd_mecha.extensions.builtin.merge_methods import (
        cosine,
        limiting,
        linear,
        slicing,
        svd,
        ties,
    )

    cases: dict[str, list[MCase]] = {}

    def add(ident: str, case: MCase) -> None:
        cases.setdefault(ident, []).append(case)

    add(
        "weighted_sum",
        MCase(
            "weighted_sum",
            "sd-mecha",
            "weighted_sum(ft2, ft3, alpha=0.35)",
            ("weighted_sum",),
            ("ft2", "ft3"),
            affine(ft2=0.65, ft3=0.35),
            build=lambda o: write(sd.weighted_sum(m(p["ft2"]), m(p["ft3"]), alpha=0.35), o),
        ),
    )
    add(
        "n_average",
        MCase(
            "n_average",
            "sd-mecha",
            "n_average(ft2, ft3, ft4)",
            ("weighted_sum",),
            ("ft2", "ft3", "ft4"),
            affine(ft2=1 / 3, ft3=1 / 3, ft4=1 / 3),
            build=lambda o: write(sd.n_average(m(p["ft2"]), m(p["ft3"]), m(p["ft4"])), o),
        ),
    )
    add(
        "slerp",
        MCase(
            "slerp",
            "sd-mecha",
            "slerp(ft2, ft4, alpha=0.3)",
            ("slerp", "interpolation"),
            ("ft2", "ft4"),
            None,
            {"t": 0.3},
            build=lambda o: write(sd.slerp(m(p["ft2"]), m(p["ft4"]), alpha=0.3), o),
        ),
    )
    add(
        "add_difference",
        MCase(
            "add_difference",
            "sd-mecha",
            "add_difference(ft2, ft3, base, alpha=0.7)",
            ("add_difference",),
            ("ft2", "ft3"),
            {"ft2": 1.0, "ft3": 0.7, "base": -0.7},
            build=lambda o: write(sd.add_difference(m(p["ft2"]), m(p["ft3"]), m(p["base"]), alpha=0.7), o),
        ),
    )
    add(
        "add_perpendicular",
        MCase(
            "add_perpendicular",
            "sd-mecha",
            "add_perpendicular(ft6, ft3, ft1, alpha=1)",
            # issue 19 item 2: a near-linear method may be reported as the linear one it is close to,
            # saying so. (ft6 - ft1) and (ft3 - ft1) are independent changes, nearly orthogonal, so
            # add perpendicular IS add difference here (the projection removed is ~0): the
            # add_difference finding names add_perpendicular among its equivalents (see _named).
            ("add_perpendicular", "add_difference~add_perpendicular"),
            ("ft1", "ft3", "ft6"),
            None,
            {},
            build=lambda o: write(sd.add_perpendicular(m(p["ft6"]), m(p["ft3"]), m(p["ft1"]), alpha=1.0), o),
        ),
    )
    add(
        "geometric_sum",
        MCase(
            "geometric_sum",
            "sd-mecha",
            "geometric_sum(ft2, ft3, alpha=0.5)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(sd.geometric_sum(m(p["ft2"]), m(p["ft3"]), alpha=0.5), o),
        ),
    )
    add(
        "multiply_quotient",
        MCase(
            "multiply_quotient",
            "sd-mecha",
            "multiply_quotient(ft2, ft3, base, alpha=1)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(sd.multiply_quotient(m(p["ft2"]), m(p["ft3"]), m(p["base"]), alpha=1.0), o),
        ),
    )
    for ident, fn, _label in (
        ("add_cosine_a", cosine.add_cosine_a, "cosine_a"),
        ("add_cosine_b", cosine.add_cosine_b, "cosine_b"),
    ):
        add(
            ident,
            MCase(
                ident,
                "sd-mecha",
                f"{ident}(ft2, ft3, alpha=0.5)",
                ("cosine", "interpolation"),
                ("ft2", "ft3"),
                build=lambda o, fn=fn: write(fn(m(p["ft2"]), m(p["ft3"]), alpha=0.5), o),
            ),
        )
    add(
        "crossover",
        MCase(
            "crossover",
            "sd-mecha",
            "crossover(ft2, ft3, alpha=0.5, tilt=0)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(sd.crossover(m(p["ft2"]), m(p["ft3"]), alpha=0.5, tilt=0.0), o),
        ),
    )
    add(
        "tensor_sum",
        MCase(
            "tensor_sum",
            "sd-mecha",
            "tensor_sum(ft2, ft3, width=0.5)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(slicing.tensor_sum(m(p["ft2"]), m(p["ft3"]), width=0.5), o),
        ),
    )
    add(
        "top_k_tensor_sum",
        MCase(
            "top_k_tensor_sum",
            "sd-mecha",
            "top_k_tensor_sum(ft2, ft3, width=0.5)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(slicing.top_k_tensor_sum(m(p["ft2"]), m(p["ft3"]), width=0.5), o),
        ),
    )
    add(
        "rotate",
        MCase(
            "rotate",
            "sd-mecha",
            "rotate(ft2, ft3, alignment=1, alpha=0.5)",
            (),
            ("ft2", "ft3"),
            build=lambda o: write(svd.rotate(m(p["ft2"]), m(p["ft3"]), alignment=1.0, alpha=0.5), o),
        ),
    )
    add(
        "truncate_rank",
        MCase(
            "truncate_rank",
            "sd-mecha",
            "base + truncate_rank(ft2 - base, rank=8)",
            (),
            ("ft2",),
            build=lambda o: write(on_base(svd.truncate_rank(deltas("ft2")[0], rank=8)), o),
        ),
    )
    add(
        "clamp",
        MCase(
            "clamp",
            "sd-mecha",
            "clamp(weighted_sum(ft2, ft3, 0.5), ft2, ft3)",
            ("weighted_sum",),
            ("ft2", "ft3"),
            affine(ft2=0.5, ft3=0.5),
            build=lambda o: write(
                limiting.clamp(sd.weighted_sum(m(p["ft2"]), m(p["ft3"]), alpha=0.5), m(p["ft2"]), m(p["ft3"])), o
            ),
        ),
    )
    for ident, fn in (
        ("train_difference_mask", linear.train_difference_mask),
        ("add_opposite_mask", linear.add_opposite_mask),
        ("add_strict_opposite_mask", linear.add_strict_opposite_mask),
    ):
        fam = ("train_difference",) if ident == "train_difference_mask" else ()
        params = {"alpha": 1.0} if ident == "train_difference_mask" else {}
        add(
            ident,
            MCase(
                ident,
                "sd-mecha",
                f"add_difference(ft2, ft3, base, alpha={ident}(ft2, ft3, base))",
                fam,
                ("ft2", "ft3"),
                None,
                params,
                build=lambda o, fn=fn: write(
                    sd.add_difference(
                        m(p["ft2"]), m(p["ft3"]), m(p["base"]), alpha=fn(m(p["ft2"]), m(p["ft3"]), m(p["base"]))
                    ),
                    o,
                ),
            ),
        )
    add(
        "ties_sum",
        MCase(
            "ties_sum",
            "sd-mecha",
            "base + ties_sum(ft2, ft3, ft4 deltas; k=0.3)",
            ("ties",),
            ("ft2", "ft3", "ft4"),
            build=lambda o: write(on_base(ties.ties_sum(*deltas("ft2", "ft3", "ft4"), k=0.3)), o),
        ),
    )
    add(
        "ties_sum_extended",
        MCase(
            "ties_sum_extended",
            "sd-mecha",
            "base + ties_sum_extended(ft2, ft3 deltas; k=0.3, apply_stock=True)",
            ("ties",),
            ("ft2", "ft3"),
            build=lambda o: write(on_base(ties.ties_sum_extended(*deltas("ft2", "ft3"), k=0.3, apply_stock=True)), o),
        ),
    )
    add(
        "dropout",
        MCase(
            "dare",
            "sd-mecha",
            "base + dropout(ft2, ft3 deltas; p=0.9, seed=3)",
            ("dare",),
            ("ft2", "ft3"),
            None,
            {"drop": 0.9},
            build=lambda o: write(on_base(ties.dropout(*deltas("ft2", "ft3"), probability=0.9, seed=3)), o),
        ),
    )
    add(
        "ties_sum_with_dropout",
        MCase(
            "dare_ties",
            "sd-mecha",
            "base + ties_sum_with_dropout(ft2, ft3, ft5; p=0.8, k=1, apply_stock=True)",
            ("dare_ties", "dare"),
            ("ft2", "ft3", "ft5"),
            build=lambda o: write(
                on_base(
                    ties.ties_sum_with_dropout(
                        *deltas("ft2", "ft3", "ft5"), probability=0.8, k=1.0, apply_stock=True, seed=5
                    )
                ),
                o,
            ),
        ),
    )
    add(
        "ties_sum_with_dropout",
        MCase(
            "della",
            "sd-mecha",
            "base + ties_sum_with_dropout(ft2, ft4; p=0.7, della_eps=0.3, k=1, apply_stock)",
            ("della",),
            ("ft2", "ft4"),
            None,
            {"drop": 0.7},
            build=lambda o: write(
                on_base(
                    ties.ties_sum_with_dropout(
                        *deltas("ft2", "ft4"), probability=0.7, della_eps=0.3, k=1.0, apply_stock=True, seed=7
                    )
                ),
                o,
            ),
        ),
    )
    stock = MCase(
        "model_stock",
        "sd-mecha",
        "base + model_stock(ft1, ft6 deltas)",
        ("model_stock",),
        ("ft1", "ft6"),
        None,
        {},
    )

    def build_stock(o: Path, case: MCase = stock) -> None:
        write(on_base(ties.model_stock(*deltas("ft1", "ft6"))), o)
        case.params["ratio"] = model_stock_ratio(p["base"], (p["ft1"], p["ft6"]), ties.get_model_stock_t)

    stock.build = build_stock
    add("model_stock", stock)
    add(
        "geometric_median",
        MCase(
            "geometric_median",
            "sd-mecha",
            "geometric_median(ft2, ft3, ft4)",
            ("geometric_median", "weighted_sum"),
            ("ft2", "ft3", "ft4"),
            affine(ft2=1 / 3, ft3=1 / 3, ft4=1 / 3),
            build=lambda o: write(ties.geometric_median(m(p["ft2"]), m(p["ft3"]), m(p["ft4"])), o),
        ),
    )
    add(
        "add_difference",
        MCase(
            "chain3_linear",
            "chain",
            "weighted_sum(add_difference(weighted_sum(ft2, ft3, 0.4), ft4, base, 0.5), ft5, 0.3)",
            ("weighted_sum", "add_difference"),
            ("ft2", "ft3", "ft4", "ft5"),
            affine(ft2=0.42, ft3=0.28, ft4=0.35, ft5=0.3),
            build=lambda o: write(
                sd.weighted_sum(
                    linear.add_difference(
                        sd.weighted_sum(m(p["ft2"]), m(p["ft3"]), alpha=0.4),
                        linear.subtract(m(p["ft4"]), m(p["base"])),
                        alpha=0.5,
                    ),
                    m(p["ft5"]),
                    alpha=0.3,
                ),
                o,
            ),
        ),
    )
    add(
        "slerp",
        MCase(
            "chain3_mixed",
            "chain",
            "weighted_sum(slerp(weighted_sum(ft2, ft3, 0.5), ft4, 0.5), ft5, 0.25)",
            ("weighted_sum", "slerp"),
            ("ft2", "ft3", "ft4", "ft5"),
            affine(ft2=0.1875, ft3=0.1875, ft4=0.375, ft5=0.25),
            build=lambda o: write(
                sd.weighted_sum(
                    sd.slerp(sd.weighted_sum(m(p["ft2"]), m(p["ft3"]), alpha=0.5), m(p["ft4"]), alpha=0.5),
                    m(p["ft5"]),
                    alpha=0.25,
                ),
                o,
            ),
        ),
    )
    add(
        "dropout",
        MCase(
            "chain3_dare",
            "chain",
            "weighted_sum(base + dropout(ft2, ft3; p=0.9), add_difference(ft4, ft5, base, 0.5), 0.5)",
            (),
            ("ft2", "ft3", "ft4", "ft5"),
            build=lambda o: write(
                sd.weighted_sum(
                    on_base(ties.dropout(*deltas("ft2", "ft3"), probability=0.9, seed=11)),
                    sd.add_difference(m(p["ft4"]), m(p["ft5"]), m(p["base"]), alpha=0.5),
                    alpha=0.5,
                ),
                o,
            ),
        ),
    )
    return cases


# ---------------------------------------------------------------- SuperMerger modes (published formulas)


def model_stock_ratio(base: Path, models: tuple[Path, ...], stock_t: Callable[..., torch.Tensor]) -> float:
    """The truth for model stock's ratio: sd-mecha takes t = n cos / (1 + (n-1) cos) vector by vector
    along the last axis, so a merge has one t per row; this is the median over every coordinate of
    the t it was merged with (what most of the file was made at)."""
    from contextlib import ExitStack

    from safetensors import safe_open

    ts, ns = [], []
    with ExitStack() as stack:
        fb = stack.enter_context(safe_open(str(base), "pt"))
        opened = [stack.enter_context(safe_open(str(m), "pt")) for m in models]
        for key in fb.keys():  # noqa: SIM118 - safe_open has no __iter__
            b = fb.get_tensor(key)
            if not b.is_floating_point() or b.ndim == 0:
                continue
            ds = [f.get_tensor(key).float() - b.float() for f in opened]
            t = stock_t(ds, 1e-6).reshape(-1)
            keep = torch.isfinite(t)
            ts.append(t[keep].double())
            ns.append(torch.full((int(keep.sum()),), float(b.shape[-1]), dtype=torch.float64))
    t_all, n_all = torch.cat(ts), torch.cat(ns)
    order = torch.argsort(t_all)
    cum = torch.cumsum(n_all[order], 0)
    return float(t_all[order][int(torch.searchsorted(cum, cum[-1] / 2))])


def _cos_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        return torch.ones(())
    xf, yf = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    return torch.nn.functional.cosine_similarity(xf, yf, dim=1, eps=1e-12).reshape((-1,) + (1,) * (x.dim() - 1))


def _sm_sims(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], mode: str) -> tuple[float, float]:
    """SuperMerger's stage 0: per-key combined similarity over all non-VAE keys, 1%/99% trimmed."""
    import numpy as np

    sims = []
    for key in a:
        if "first_stage_model" in key or not a[key].is_floating_point() or a[key].dim() == 0:
            continue
        x, y = a[key].float(), b[key].float()
        if mode == "cosineA":
            x, y = torch.nn.functional.normalize(x, p=2, dim=0), torch.nn.functional.normalize(y, p=2, dim=0)
        sim = torch.nn.functional.cosine_similarity(x, y, dim=0)
        mag = torch.dot(x.reshape(-1), y.reshape(-1)) / (torch.norm(x) * torch.norm(y))
        sims.append(((sim + mag) / 2.0).reshape(-1).numpy())
    s = np.concatenate(sims)
    s = s[~np.isnan(s)]
    s = s[(s >= np.percentile(s, 1)) & (s <= np.percentile(s, 99))]
    return float(s.min()), float(s.max())


def supermerger(
    mode: str,
    a: Path,
    b: Path,
    c: Path | None,
    alpha: float,
    beta: float,
    out: Path,
    gamma: float = 1.0,
    delta: float = 1.0,
    base: Path | None = None,
) -> None:
    """One SuperMerger calc mode, key by key, fp16 out (the formulas of ``mergers.py``)."""
    import numpy as np
    import scipy.ndimage
    from safetensors.torch import load_file, save_file

    ta, tb = load_file(str(a)), load_file(str(b))
    tc = load_file(str(c)) if c is not None else None
    tbase = load_file(str(base)) if base is not None else None
    lo = hi = 0.0
    if mode in ("cosineA", "cosineB"):
        lo, hi = _sm_sims(ta, tb, mode)
    res: dict[str, torch.Tensor] = {}
    for key, x in ta.items():
        if not x.is_floating_point():
            res[key] = x
            continue
        A, B = x.double(), tb[key].double()
        C = tc[key].double() if tc is not None else None
        if mode == "sum_twice":
            r = (1 - beta) * ((1 - alpha) * A + alpha * B) + beta * C
        elif mode == "triple_sum":
            r = (1 - alpha - beta) * A + alpha * B + beta * C
        elif mode == "train_difference":
            dist0, dist1 = (B - C).abs(), (B - A).abs()
            s = dist0 + dist1
            scale = torch.where(s != 0, dist1 / s, torch.zeros_like(s))
            r = A + torch.sign(B - C) * scale * (B - C).abs() * alpha * 1.8
        elif mode == "smooth_add_difference":
            d = (B - C).float().numpy()
            d = scipy.ndimage.gaussian_filter(scipy.ndimage.median_filter(d, size=3), sigma=1)
            r = A + alpha * torch.from_numpy(np.asarray(d)).double()
        elif mode in ("cosineA", "cosineB"):
            if "first_stage_model" in key or A.dim() == 0:
                r = A
            else:
                af, bf = A.float(), B.float()
                if mode == "cosineA":
                    af = torch.nn.functional.normalize(af, p=2, dim=0)
                    bf = torch.nn.functional.normalize(bf, p=2, dim=0)
                sim = torch.nn.functional.cosine_similarity(af, bf, dim=0)
                mag = torch.dot(af.reshape(-1), bf.reshape(-1)) / (torch.norm(af) * torch.norm(bf))
                k = ((sim + mag) / 2.0 - lo) / (hi - lo)
                k = (k - abs(alpha)).clamp(0, 1).double()
                r = B * (1 - k) + A * k
        elif mode == "extract":
            origin = tbase[key].double() if tbase is not None else torch.zeros_like(A)
            db, dc = B - origin, C - origin
            sim = ((_cos_rows(db, dc).double() + 1) / 2) ** gamma
            r = A + delta * torch.lerp(db, dc, alpha) * torch.lerp(sim, 1 - sim, beta)
        else:
            raise ValueError(mode)
        res[key] = r.to(torch.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(res, str(out))


def supermerger_cases(p: dict[str, Path]) -> list[MCase]:
    def sm(mode: str, a: str, b: str, c: str | None, alpha: float, beta: float = 0.0, **kw: Any) -> Callable:
        return lambda o: supermerger(
            mode,
            p[a],
            p[b],
            p[c] if c else None,
            alpha,
            beta,
            o,
            **{k: (p[v] if k == "base" else v) for k, v in kw.items()},
        )

    return [
        MCase(
            "sm_sum_twice",
            "SuperMerger",
            "Sum Twice: (ft2 x 0.6 + ft3 x 0.4) x 0.7 + ft4 x 0.3",
            ("sum_twice", "weighted_sum"),
            ("ft2", "ft3", "ft4"),
            affine(ft2=0.42, ft3=0.28, ft4=0.3),
            build=sm("sum_twice", "ft2", "ft3", "ft4", 0.4, 0.3),
        ),
        MCase(
            "sm_triple_sum",
            "SuperMerger",
            "Triple Sum: ft2 x 0.5 + ft3 x 0.3 + ft5 x 0.2",
            ("triple_sum", "weighted_sum"),
            ("ft2", "ft3", "ft5"),
            affine(ft2=0.5, ft3=0.3, ft5=0.2),
            build=sm("triple_sum", "ft2", "ft3", "ft5", 0.3, 0.2),
        ),
        MCase(
            "sm_train_difference",
            "SuperMerger",
            "trainDifference: ft2 + (ft3 - base) x 0.5",
            ("train_difference",),
            ("ft2", "ft3"),
            None,
            {"alpha": 0.5},
            build=sm("train_difference", "ft2", "ft3", "base", 0.5),
        ),
        MCase(
            "sm_smooth_add",
            "SuperMerger",
            "smoothAdd: ft2 + (ft3 - base) x 0.8",
            ("add_difference",),
            ("ft2", "ft3"),
            None,
            build=sm("smooth_add_difference", "ft2", "ft3", "base", 0.8),
        ),
        MCase(
            "sm_cosineA",
            "SuperMerger",
            "cosineA: ft2, ft3, alpha 0.3",
            ("cosine",),
            ("ft2", "ft3"),
            build=sm("cosineA", "ft2", "ft3", None, 0.3),
        ),
        MCase(
            "sm_cosineB",
            "SuperMerger",
            "cosineB: ft2, ft3, alpha 0.3",
            ("cosine",),
            ("ft2", "ft3"),
            build=sm("cosineB", "ft2", "ft3", None, 0.3),
        ),
        MCase(
            "sm_extract",
            "SuperMerger",
            "extract: ft2 + lerp(ft3-base, ft4-base, 0.5) x sim (beta 0, gamma 1)",
            (),
            ("ft2", "ft3", "ft4"),
            build=sm("extract", "ft2", "ft3", "ft4", 0.5, 0.0, base="base"),
        ),
    ]


# ---------------------------------------------------------------- analysis and checks


def analyze_case(case: MCase, path: Path, library: Path) -> None:
    from sdforensics import analyze

    t = time.perf_counter()
    rec = analyze(path, library=library, device="cpu").to_json().get("recipe") or {}
    case.seconds = time.perf_counter() - t
    weights = {c["reference"]: float(c["weight"]) for c in rec.get("components", [])}
    ew = rec.get("elementwise") or {}
    method = rec.get("method") or {}
    if rec.get("kind") in ("ties", "dare") and ew.get("ingredients"):
        ingredients = sorted(ew["ingredients"])
    elif method.get("ingredients"):
        ingredients = sorted(i for i in method["ingredients"] if i != "base")
    else:
        ingredients = sorted(k for k, w in weights.items() if k != "base" and abs(w) > 0.03)
    conf = rec.get("confidence") or {}
    case.result = {
        "kind": rec.get("kind"),
        "method": method.get("name"),
        "family": method.get("family"),
        "params": method.get("parameters") or {},
        "alternatives": list(method.get("alternatives") or []),
        "elementwise": ew.get("kind"),
        "ingredients": ingredients,
        "weights": weights,
        "unexplained": rec.get("unexplained"),
        "confidence": conf.get("level") if isinstance(conf, dict) else None,
        "text": rec.get("text"),
    }


def _named(case: MCase) -> bool:
    """The method or family named; ``X~Y`` in a case's family accepts method X when the finding lists
    Y among the methods that give the same result on these models (and says so)."""
    r = case.result
    names = {r.get("kind"), r.get("method"), r.get("family"), r.get("elementwise")}
    for f in case.family:
        if "~" in f:
            meth, alt = f.split("~", 1)
            if r.get("method") == meth and alt in (r.get("alternatives") or []):
                return True
        elif f in names:
            return True
    return False


def check(case: MCase) -> None:
    r = case.result
    right_set = set(r.get("ingredients", [])) == set(case.ingredients)
    case.checks["ingredients"] = right_set
    if case.family:
        case.checks["method named"] = _named(case)
    else:  # not an item-2 method: an honest answer is enough (never a confident wrong recipe)
        case.checks["honest"] = right_set or r.get("confidence") != "high"
    if (
        case.weights is not None
        and r.get("kind") in ("weighted_sum", "add_difference", "block_weighted", "unknown_method")
        and right_set
    ):
        case.checks["weights"] = all(
            abs(r["weights"].get(k, 0.0) - v) <= TOL_WEIGHT for k, v in case.weights.items() if k != "base"
        )
    for k, v in case.params.items():
        got = r.get("params", {}).get(k)
        case.checks[f"param {k}"] = got is not None and abs(float(got) - v) <= TOL_PARAM
    case.checks["no confident wrong set"] = right_set or r.get("confidence") != "high"


def fmt_weights(w: dict[str, float]) -> str:
    return " ".join(f"{k}:{v:.2f}" for k, v in sorted(w.items(), key=lambda kv: -abs(kv[1])) if abs(v) > 0.005)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=1, help="1 = full size; 16 or 8 for development")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/recipes")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--only", default="", help="comma list of case names")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if not mm.available():
        print("sd-mecha is not installed (pip install sd-mecha)", file=sys.stderr)
        return 2
    from sd_mecha.extensions import merge_methods as mmx

    paths, library = recipes.family_and_library(args.out, args.width, args.seed)
    work = args.out / f"methods-w{args.width}"
    work.mkdir(parents=True, exist_ok=True)

    by_ident = mecha_cases(paths)
    idents = sorted({m.identifier for m in mmx.get_all()})
    cases: list[MCase] = []
    skipped: list[tuple[str, str]] = []
    covered: set[str] = set()
    for ident in idents:
        if ident.startswith(NOT_MERGES_PREFIX) or ident in NOT_MERGES:
            skipped.append((ident, NOT_MERGES.get(ident, "key-layout conversion / extraction, not a merge")))
            continue
        if ident in ("rebasin", "rebasin_sdxl_sgm"):
            cases.append(
                MCase(
                    ident,
                    "sd-mecha",
                    f"{ident}(ft2, ref=ft3)",
                    (),
                    ("ft2",),
                    build=lambda o, i=ident: mm._write(  # noqa: SLF001
                        __import__("sd_mecha").rebasin(
                            mm._m(paths["ft2"]),  # noqa: SLF001
                            mm._m(paths["ft3"]),
                        ),
                        o,
                    ),
                )
            )  # noqa: SLF001
            covered.add(ident)
            continue
        if ident in by_ident:
            cases += by_ident[ident]
            covered.add(ident)
        else:
            cases.append(MCase(ident, "sd-mecha", ident, (), (), status="no case written (new method?)"))
    cases += [c for k, v in by_ident.items() if k not in idents for c in v]  # wrappers (add_perpendicular)
    cases += supermerger_cases(paths)
    seen: set[str] = set()
    cases = [c for c in cases if not (c.name in seen or seen.add(c.name))]
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.name in wanted]

    for case in cases:
        if case.build is None:
            continue
        path = work / f"{case.name}.safetensors"
        try:
            case.build(path)
        except Exception as exc:  # noqa: BLE001 - report, do not hide
            case.status = f"sd-mecha cannot run it on these keys: {type(exc).__name__}: {str(exc)[:90]}"
            log(f"{case.name}: {case.status}")
            continue
        try:
            analyze_case(case, path, library)
            check(case)
        except Exception as exc:  # noqa: BLE001
            case.status = f"analysis failed: {type(exc).__name__}: {exc}"
        if not args.keep:
            path.unlink(missing_ok=True)
        r = case.result
        log(
            f"{case.name}: kind {r.get('kind')} method {r.get('method')} ingredients {r.get('ingredients')} "
            f"unexpl {r.get('unexplained')} -> {'PASS' if case.ok else 'FAIL'} {case.checks}"
        )

    wall = time.perf_counter() - t0
    size = "full size" if args.width == 1 else f"REDUCED width 1/{args.width}"
    print(
        f"\n=== sdforensics merge-method coverage (issue 19): SD1.5 layout, {size}, "
        f"sd-mecha {__import__('sd_mecha').__version__ if hasattr(__import__('sd_mecha'), '__version__') else ''} ==="
    )
    head = (
        f"{'case':<22} {'source':<11} {'truth (ingredients)':<20} {'kind':<15} {'method (params)':<30} "
        f"{'ingredients found':<20} {'weights':<34} {'unexpl':>6} {'conf':<6} result"
    )
    print(head)
    print("-" * len(head))
    ran = [c for c in cases if not c.status]
    for c in cases:
        r = c.result
        if c.status:
            print(f"{c.name:<22} {c.source:<11} {'+'.join(c.ingredients):<20} {c.status}")
            continue
        params = ",".join(f"{k}={v:.2f}" for k, v in (r.get("params") or {}).items() if isinstance(v, (int, float)))
        meth = f"{r.get('method') or '-'}" + (f" ({params})" if params else "")
        u = r.get("unexplained")
        print(
            f"{c.name:<22} {c.source:<11} {'+'.join(c.ingredients):<20} {str(r.get('kind')):<15} {meth:<30.30} "
            f"{'+'.join(r.get('ingredients', [])):<20} {fmt_weights(r.get('weights', {})):<34.34} "
            f"{'-' if u is None else f'{u:.3f}':>6} {str(r.get('confidence')):<6} "
            f"{'PASS' if c.ok else 'FAIL ' + ','.join(k for k, v in c.checks.items() if not v)}"
        )
        truth_params = ", ".join(f"{k} {v:.3f}" for k, v in c.params.items())
        print(f"{'':<22}   did: {c.method}" + (f"; true parameters: {truth_params}" if truth_params else ""))
    print()
    print(
        "sd-mecha identifiers that are not merges of models (listed, not run): " + ", ".join(f"{i}" for i, _ in skipped)
    )
    n = len(ran)
    n_set = sum(c.checks.get("ingredients", False) for c in ran)
    item2 = [c for c in ran if c.family]
    n_named = sum(c.checks.get("method named", False) for c in item2)
    lin = [c for c in ran if "weights" in c.checks]
    par = [(c, k) for c in ran for k in c.checks if k.startswith("param ")]
    wrong_conf = [c.name for c in ran if not c.checks.get("no confident wrong set", True)]
    figures = [
        (f"ingredient set exact: {n_set}/{n} ({100 * n_set / max(n, 1):.0f}%, need >= 90%)", n_set >= 0.9 * n),
        (f"method/family named (item-2 methods): {n_named}/{len(item2)}", n_named == len(item2)),
        (
            f"linear weights within {TOL_WEIGHT}: {sum(c.checks['weights'] for c in lin)}/{len(lin)}",
            all(c.checks["weights"] for c in lin),
        ),
        (
            f"parameters within {TOL_PARAM}: {sum(c.checks[k] for c, k in par)}/{len(par)}",
            all(c.checks[k] for c, k in par),
        ),
        (f"confident wrong ingredient sets: {len(wrong_conf)} {wrong_conf}", not wrong_conf),
    ]
    not_run = [c.name for c in cases if c.status]
    print(f"cases run {n}, not run {len(not_run)} {not_run}; PASS {sum(c.ok for c in ran)}/{n}")
    for text, ok in figures:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    print(f"wall time {wall / 60:.1f} min")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "width": args.width,
                    "wall_s": wall,
                    "cases": [
                        {
                            "name": c.name,
                            "source": c.source,
                            "did": c.method,
                            "truth": list(c.ingredients),
                            "truth_params": c.params,
                            "status": c.status,
                            "result": c.result,
                            "checks": c.checks,
                            "ok": c.ok,
                        }
                        for c in cases
                    ],
                    "not_merges": skipped,
                    "figures": [{"figure": t, "pass": ok} for t, ok in figures],
                },
                indent=1,
                default=str,
            )
        )
    return 0 if all(ok for _, ok in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
