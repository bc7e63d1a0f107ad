"""Which merge method made a checkpoint, once its ingredients are known (issue 19).

The linear fit (:mod:`sdforensics.recipe.estimate`) names the ingredients; the element-wise check
(:mod:`sdforensics.recipe.nonlinear`) tells TIES/DARE apart. This module names the *method* and its
parameters where the weights or the exact coordinate samples show them, and measures what is left
unexplained *under the recognised method* (a DARE merge is explained by DARE, not by a weighted sum).
Each step is one function with its thresholds as named constants:

1. :func:`name_linear_method` -- methods that are weighted sums, or reduce to one between close
   models: weighted sum / slerp / cosine A-B / n-average / geometric median ("interpolation"),
   SuperMerger's sum twice and triple sum (3-model weighted sums), add difference / add
   perpendicular, model stock (equal ingredient weights, the rest on the base);
2. :func:`fit_train_difference` -- SuperMerger's train difference (sd-mecha ``train_difference_mask``)
   tested coordinate by coordinate on the exact samples, with its alpha;
3. :func:`per_layer_fit` / :func:`per_tensor_weights` -- methods whose weights change tensor by tensor
   (SuperMerger cosineA/B): the per-layer fit explains what the global and per-block fits do not;
4. :func:`elementwise_unexplained` -- the share of a TIES/DARE/DELLA merge that no per-coordinate
   choice of surviving ingredients explains (near re-save noise for a real DARE merge);
5. :func:`residual_predictability` -- whether what the linear fit leaves is a function of the
   ingredients' own values (an unrecognised method on known ingredients) or independent of them
   (further training, a model not in the library).

Pure functions on arrays: no I/O, deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from sdforensics.recipe.results import MethodFinding, Weight

INTERPOLATION = ("weighted_sum", "slerp", "add_cosine_a", "add_cosine_b", "geometric_sum", "n_average")
"""Methods that give a weighted sum of two models when the models are close (every fine-tune of one
base is): slerp's arc is flat, the cosine merges' per-tensor factor is one constant."""

EQUAL_WEIGHTS_TOL = 0.02
"""Ingredient weights within this of each other count as equal (n-average, model stock)."""

MODEL_STOCK_BASE_MIN = 0.03
"""Base weight above which equal ingredient weights read as model stock (t = 1 - base weight), not
an n-average."""

TRAIN_DIFF_FIT_MAX = 0.1
"""Train difference is recognised when its formula leaves at most this share of the target's change
at the exact samples (and less than half of what the linear fit leaves)."""

PER_TENSOR_GAIN = 0.5
"""Per-tensor weights are recognised when fitting each layer on its own leaves less than this
fraction of what the per-block fit leaves (and the global fit leaves at least PER_TENSOR_MIN)."""

PER_TENSOR_MIN = 0.05
"""Global unexplained share below which nothing is looked for beyond the global weights."""

PREDICTABLE_R2 = 0.3
"""Held-out R^2 of the linear residual, regressed on functions of the ingredients' values at the same
coordinates, from which the residual is the method's doing (unknown method, ingredients certain)."""

UNKNOWN_METHOD_MIN = 0.1
"""Linear unexplained share from which a merge whose residual is predictable reads as unknown_method."""


def _weights_of(weights: Sequence[Weight], base: str | None) -> tuple[list[Weight], float]:
    ings = [w for w in weights if w.reference != base and abs(w.weight) > 0.02]
    bw = next((w.weight for w in weights if w.reference == base), 0.0)
    return ings, float(bw)


def name_linear_method(kind: str, weights: Sequence[Weight], base: str | None) -> MethodFinding | None:
    """The method (or family) behind a linear recipe, with the parameters the weights give.

    >>> from sdforensics.recipe.results import Weight
    >>> w = [Weight("A", 0.7, (0.69, 0.71)), Weight("B", 0.3, (0.29, 0.31))]
    >>> f = name_linear_method("weighted_sum", w, "base")
    >>> f.family, dict(f.parameters)["t"]
    ('interpolation', 0.3)
    """
    ings, bw = _weights_of(weights, base)
    names = tuple(w.reference for w in ings)
    if kind == "add_difference":
        return MethodFinding(
            "add_difference", "add_difference", (), names, None, ("add_perpendicular", "smooth_add_difference"),
            "add perpendicular and SuperMerger's smooth add difference give the same result when the two deltas "
            "are (nearly) orthogonal, as independent fine-tunes' are",
        )
    if kind != "weighted_sum" or not ings:
        return None
    pos = sorted((w for w in ings if w.weight > 0), key=lambda w: -w.weight)
    ws = [w.weight for w in pos]
    equal = len(ws) >= 2 and max(ws) - min(ws) <= EQUAL_WEIGHTS_TOL
    if equal and bw > MODEL_STOCK_BASE_MIN and len(pos) == len(ings):
        t = float(sum(ws))
        return MethodFinding(
            "model_stock", "model_stock", (("ratio", round(t, 4)),), names, None, ("n_average with the base",),
            f"equal weights for {len(ws)} models and {bw:.2f} on the base: model stock's ratio t = {t:.2f} "
            "(an n-average that includes the base reads the same)",
        )
    if equal and abs(bw) <= MODEL_STOCK_BASE_MIN and len(ws) >= 3:
        return MethodFinding(
            "n_average", "interpolation", (), names, None, ("geometric_median", "ties_sum k=1 (no trim)"),
            "equal weights: an n-average; a geometric median of close models is nearly the same",
        )
    if len(pos) == 2 and len(ings) == 2:
        t = round(float(pos[1].weight), 4)
        return MethodFinding(
            "weighted_sum", "interpolation", (("alpha", t), ("t", t)), names, None, INTERPOLATION[1:],
            f"a weighted sum at alpha {t:.2f}; slerp (t = {t:.2f}), the cosine merges (SuperMerger cosineA/B, "
            "sd-mecha add_cosine) and geometric sum give the same weights between close models",
        )
    if len(pos) == 3 and len(ings) == 3:
        a, b, c = ws
        beta = c
        alpha_twice = b / (1 - beta) if beta < 1 else 0.0
        return MethodFinding(
            "weighted_sum", "sum_twice/triple_sum",
            (("triple_alpha", round(b, 4)), ("triple_beta", round(c, 4)),
             ("twice_alpha", round(alpha_twice, 4)), ("twice_beta", round(beta, 4))),
            names, None, ("triple_sum", "sum_twice", "n-model weighted sum"),
            f"a 3-model weighted sum: SuperMerger triple sum alpha={b:.2f}, beta={c:.2f}, or sum twice "
            f"alpha={alpha_twice:.2f}, beta={beta:.2f} ({pos[0].reference}, {pos[1].reference}, {pos[2].reference})",
        )
    return MethodFinding("weighted_sum", "interpolation", (), names, None, (), "a weighted sum")


def _at_base(st: np.ndarray, b: np.ndarray) -> np.ndarray:
    f16 = b.astype(np.float16).astype(np.float64)
    return (st == b) | (st == f16)


def fit_train_difference(
    sample_target: Sequence[np.ndarray], sample_refs: Sequence[np.ndarray], candidates: Sequence[int]
) -> tuple[float, float, tuple[int, int, int]] | None:
    """Best (share left, alpha, (A, B, C)) of ``A + alpha * 1.8 * (B - C) * |B - A| / (|B - A| + |B - C|)``
    over the orderings of three candidate references, on the exact samples; None without three."""
    if len(candidates) < 3:
        return None
    best: tuple[float, float, tuple[int, int, int]] | None = None
    for a, b, c in itertools.permutations(candidates[:4], 3):
        num = den = tt = 0.0
        fs, ts = [], []
        for st, sr in zip(sample_target, sample_refs, strict=True):
            if st.size == 0:
                continue
            A, B, C = sr[a], sr[b], sr[c]
            dba, dbc = np.abs(B - A), np.abs(B - C)
            s = dba + dbc
            f = 1.8 * (B - C) * np.divide(dba, s, out=np.zeros_like(s), where=s > 0)
            t = st - A
            fs.append(f)
            ts.append(t)
            num += float(f @ t)
            den += float(f @ f)
            tt += float(t @ t)
        if den <= 0 or tt <= 0:
            continue
        alpha = num / den
        rss = sum(float(((t - alpha * f) ** 2).sum()) for t, f in zip(ts, fs, strict=True))
        share = float(np.sqrt(rss / tt))
        if best is None or share < best[0]:
            best = (share, float(alpha), (a, b, c))
    return best


def per_layer_fit(gram: np.ndarray, cross: np.ndarray, yy: np.ndarray, cols: Sequence[int]) -> tuple[np.ndarray, float]:
    """Each layer fitted on its own: (L, s) coefficients and the unexplained share over the model."""
    idx = np.asarray(cols, dtype=int)
    n_layers = gram.shape[0]
    coef = np.zeros((n_layers, idx.size))
    rss = 0.0
    for li in range(n_layers):
        g = gram[li][np.ix_(idx, idx)]
        x = cross[li][idx]
        if idx.size and np.trace(g) > 0:
            w = np.linalg.lstsq(g + 1e-12 * np.trace(g) * np.eye(idx.size), x, rcond=None)[0]
        else:
            w = np.zeros(idx.size)
        coef[li] = w
        rss += max(float(yy[li] - 2 * w @ x + w @ g @ w), 0.0)
    total = float(yy.sum())
    return coef, float(np.sqrt(rss / total)) if total > 0 else 0.0


def per_tensor_weights(
    coef: np.ndarray, energy: np.ndarray, names: Sequence[str], u_layer: float, u_block: float, u_global: float
) -> MethodFinding | None:
    """A method whose weights change tensor by tensor (SuperMerger cosineA/B, sd-mecha's cosine merges
    between distant models): the per-layer fit explains what the block fit does not."""
    if u_global < PER_TENSOR_MIN or u_layer >= PER_TENSOR_GAIN * min(u_block, u_global):
        return None
    w = energy / max(float(energy.sum()), 1e-300)
    mean = (coef * w[:, None]).sum(axis=0)
    spread = np.sqrt((((coef - mean) ** 2) * w[:, None]).sum(axis=0))
    sums = coef.sum(axis=1)
    affine_pair = coef.shape[1] == 2 and float(np.sqrt(((sums - 1.0) ** 2 * w).sum())) < 0.05
    params = tuple((f"mean_weight_{n}", round(float(m), 4)) for n, m in zip(names, mean, strict=True))
    spreads = ", ".join(f"{n} {m:.2f}+-{s:.2f}" for n, m, s in zip(names, mean, spread, strict=True))
    if affine_pair:
        return MethodFinding(
            "cosine", "per_tensor_interpolation", params, tuple(names), u_layer, ("cosineA", "cosineB", "add_cosine_a"),
            f"two models interpolated with a factor that changes tensor by tensor ({spreads}): "
            "a cosine-similarity merge (SuperMerger cosineA/B, sd-mecha add_cosine)",
        )
    return MethodFinding(
        "per_tensor_weights", "per_tensor", params, tuple(names), u_layer, (),
        f"weights that change tensor by tensor ({spreads})",
    )


BETWEEN_MIN = 0.97
"""Share of the exact samples lying between two ingredients' values (within rounding) from which a
two-model merge is an element-by-element interpolation of them."""

ELEMENT_K_SPREAD = 0.1
"""Spread (standard deviation) of the per-element factor above which the interpolation factor varies
element by element (below it the merge is the weighted sum it is close to)."""

SELECTION_SHARE = 0.9
"""Share of factors at 0 or 1 from which elements are taken whole from one model or the other."""


def per_element_interpolation(
    sample_target: Sequence[np.ndarray], sample_refs: Sequence[np.ndarray], a: int, b: int
) -> tuple[float, float, float, float, float] | None:
    """How a two-model merge sits between its ingredients at the exact samples: (share of samples
    between A and B, standard deviation of the factor k in ``t = B + k (A - B)``, share of k at 0 or 1,
    mean k, energy share of the change from B lying outside the segment [A, B]). None without
    enough samples where A and B differ.

    SuperMerger's cosineA/B take ``k`` per column from a cosine similarity, clamped to [0, 1]: every
    value lies between the two models, with a factor that changes element by element.

    >>> rng = np.random.default_rng(0)
    >>> A = rng.normal(size=5000); B = A + 0.05 * rng.normal(size=5000)
    >>> k = np.clip(rng.normal(0.5, 0.4, size=5000), 0, 1)
    >>> between, spread, ends, mean_k, outside = per_element_interpolation([B + k * (A - B)], [np.stack([A, B])], 0, 1)
    >>> between > 0.99, spread > 0.2, outside < 1e-6
    (True, True, True)
    """
    ks, ins, outs, tot = [], [], 0.0, 0.0
    for st, sr in zip(sample_target, sample_refs, strict=True):
        if st.size == 0:
            continue
        va, vb = sr[a], sr[b]
        diff = va - vb
        tol = 2.0 * np.exp2(np.floor(np.log2(np.maximum(np.abs(st), 1e-30))) - 10.0)  # fp16 rounding
        lo, hi = np.minimum(va, vb) - tol, np.maximum(va, vb) + tol
        inside = (st >= lo) & (st <= hi)
        dist = np.maximum(np.maximum(lo - st, st - hi), 0.0)
        outs += float(dist @ dist)
        tot += float((st - vb) @ (st - vb))
        clear = np.abs(diff) > 8.0 * tol
        ins.append(inside[clear])
        ks.append((st[clear] - vb[clear]) / diff[clear])
    if not ks:
        return None
    k = np.concatenate(ks)
    inside_all = np.concatenate(ins)
    if k.size < 200 or tot <= 0:
        return None
    kc = np.clip(k, 0.0, 1.0)
    ends = float(np.mean((np.abs(kc) < 0.02) | (np.abs(kc - 1.0) < 0.02)))
    return float(inside_all.mean()), float(kc.std()), ends, float(kc.mean()), float(np.sqrt(outs / tot))


def name_per_element(
    found: tuple[float, float, float, float, float] | None, a: str, b: str
) -> MethodFinding | None:
    """The method behind a two-model merge that interpolates element by element (see
    :func:`per_element_interpolation`): a cosine merge (continuous factor) or a selection of whole
    elements/slices from either model (sd-mecha tensor_sum, top_k_tensor_sum)."""
    if found is None:
        return None
    between, spread, ends, mean_k, outside = found
    if between < BETWEEN_MIN or spread < ELEMENT_K_SPREAD:
        return None
    params = (("mean_k", round(mean_k, 4)), ("k_spread", round(spread, 4)))
    if ends >= SELECTION_SHARE:
        return MethodFinding(
            "per_element_selection",
            "per_element",
            params,
            (a, b),
            outside,
            ("tensor_sum", "top_k_tensor_sum"),
            f"each element is taken whole from {a} or {b} ({mean_k:.0%} from {a}): a slice/selection merge",
        )
    return MethodFinding(
        "cosine",
        "per_element_interpolation",
        params,
        (a, b),
        outside,
        ("cosineA", "cosineB", "add_cosine_a", "add_cosine_b"),
        f"{between:.0%} of the exact samples lie between {a} and {b}, with a factor that changes element by element "
        f"(mean {mean_k:.2f} toward {a}, spread {spread:.2f}): a cosine-similarity merge (SuperMerger cosineA/B, "
        "sd-mecha add_cosine between distant models); the weights are its average",
    )


ROBUST_REFIT_MIN = 0.5
"""Linear unexplained share from which the exact samples are refitted robustly (a few coordinates the
merge blew up, as sd-mecha's model stock does on 3x3 kernels, can swamp a least-squares fit)."""

ROBUST_BULK_MAX = 0.35
"""Median absolute residual of the robust refit, relative to the median absolute change, below which
the refit explains the bulk of the coordinates."""


def robust_sample_fit(
    sample_target: Sequence[np.ndarray], sample_refs: Sequence[np.ndarray], pivot: int, candidates: Sequence[int]
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Weights of ``candidates`` (as changes from ``pivot``) fitted to the target's change at the exact
    samples by iteratively reweighted least squares (Huber), each layer scaled to unit change; the
    median absolute residual relative to the median absolute change (the bulk's misfit); and the
    weights' covariance (the reweighted fit's, with the residuals' robust scale). None without
    samples.

    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(size=(1, 4000)); d = 0.05 * rng.normal(size=(2, 4000))
    >>> t = b[0] + 0.4 * d[0] + 0.4 * d[1]
    >>> t[:40] *= 50.0  # a few coordinates blown up
    >>> w, bulk, cov = robust_sample_fit([t], [np.vstack([b, b + d])], 0, [1, 2])
    >>> np.round(w, 2).tolist(), bulk < 0.05, bool(np.all(np.sqrt(np.diag(cov)) < 0.01))
    ([0.4, 0.4], True, True)
    """
    cands = list(candidates)
    xs, ys = [], []
    for st, sr in zip(sample_target, sample_refs, strict=True):
        if st.size == 0:
            continue
        x = (sr[cands] - sr[pivot][None, :]).T
        y = st - sr[pivot]
        scale = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
        if scale <= 0:
            continue
        xs.append(x / scale)
        ys.append(y / scale)
    if not xs:
        return None
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if y.size < 200 or not np.any(y):
        return None
    w = np.ones(y.size)
    coef = np.zeros(len(cands))
    for _ in range(30):
        sw = np.sqrt(w)
        coef = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)[0]
        r = y - x @ coef
        c = 1.345 * max(float(np.median(np.abs(r))) / 0.6745, 1e-12)
        w = np.minimum(1.0, c / np.maximum(np.abs(r), 1e-300))
    r = y - x @ coef
    bulk = float(np.median(np.abs(r)) / max(float(np.median(np.abs(y))), 1e-300))
    sigma = float(np.median(np.abs(r))) / 0.6745
    cov = sigma**2 * np.linalg.pinv((x * w[:, None]).T @ x)
    return coef, bulk, cov


def model_stock_unexplained(
    sample_target: Sequence[np.ndarray],
    sample_refs: Sequence[np.ndarray],
    pivot: int,
    ingredients: Sequence[int],
    ratio: float,
    energy: np.ndarray,
) -> tuple[float, float]:
    """(share left, share of coordinates blown up) of a model-stock merge under its own model.

    Model stock moves each vector along the last axis to ``t`` times the ingredients' mean change, with
    ``t = n cos / (1 + (n-1) cos)`` taken on that vector: near the typical ``ratio`` where the
    ingredients agree, and unbounded (non-finite at -1) where a short vector's changes point apart, as
    on 3x3 kernels. So the bulk is measured against ``ratio`` x the mean change, and the coordinates
    far outside the bulk (residual beyond ``MODEL_STOCK_OUTLIER`` robust standard deviations, or
    non-finite) are counted as the blown-up vectors, not as unexplained; their share of the
    coordinates is returned beside. Layers are weighted by their share of the change, as in
    :func:`elementwise_unexplained`.

    >>> rng = np.random.default_rng(1)
    >>> b = rng.normal(size=(1, 3000)); d = 0.05 * rng.normal(size=(2, 3000))
    >>> t = 0.9 + 0.01 * rng.normal(size=3000); t[:30] = -40.0  # most vectors near 0.9, a few blown up
    >>> y = b[0] + t * d.mean(axis=0)
    >>> u, blown = model_stock_unexplained([y], [np.vstack([b, b + d])], 0, [1, 2], 0.9, np.ones(1))
    >>> round(u, 2), round(blown, 2)
    (0.01, 0.01)
    >>> other = b[0] + 0.05 * rng.normal(size=3000)  # a change model stock cannot make
    >>> model_stock_unexplained([other], [np.vstack([b, b + d])], 0, [1, 2], 0.9, np.ones(1))[0] > 0.5
    True
    """
    ings = list(ingredients)
    shares, weights = [], []
    n_out = n_all = 0
    for li, (st, sr) in enumerate(zip(sample_target, sample_refs, strict=True)):
        if st.size == 0:
            continue
        y = st - sr[pivot]
        v = (sr[ings] - sr[pivot][None, :]).mean(axis=0)
        finite = np.isfinite(y) & np.isfinite(v)
        r = np.where(finite, y - ratio * v, 0.0)
        sigma = 1.4826 * float(np.median(np.abs(r[finite]))) if finite.any() else 0.0
        inlier = finite & (np.abs(r) <= MODEL_STOCK_OUTLIER * sigma)
        n_out += int(y.size - inlier.sum())
        n_all += int(y.size)
        den = float(y[inlier] @ y[inlier])
        if den <= 0:
            continue
        shares.append(float(r[inlier] @ r[inlier]) / den)
        weights.append(float(energy[li]) if li < energy.size and np.isfinite(energy[li]) else 0.0)
    if not shares:
        return 1.0, 0.0
    return _pooled_share(shares, weights), n_out / max(n_all, 1)


MODEL_STOCK_OUTLIER = 8.0
"""Robust standard deviations beyond which a model-stock coordinate counts as a blown-up vector."""

MODEL_STOCK_BLOWN_MAX = 0.1
"""Share of the coordinates that may be blown up for the merge still to read as model stock."""


def name_robust(
    coef: np.ndarray, bulk: float, names: Sequence[str], base: str, linear_u: float
) -> MethodFinding | None:
    """Model stock (equal weights on two or more ingredients, the rest on the base) found by the robust
    refit where the least-squares fit failed; None when the refit does not explain the bulk, or finds
    anything else (the least-squares answer stands)."""
    if bulk > ROBUST_BULK_MAX:
        return None
    ings = [(n, float(c)) for n, c in zip(names, coef, strict=True) if abs(c) > 0.05]
    if not ings:
        return None
    ws = [c for _, c in ings]
    t = float(sum(ws))
    listed = ", ".join(f"{n} {c:.2f}" for n, c in ings)
    note = (
        f"a least-squares fit leaves {linear_u:.0%} unexplained, but a few coordinates carry it: a robust fit of the "
        f"exact samples gives {listed} (base {1 - t:.2f}), and misses the bulk of the coordinates by "
        f"{bulk:.0%} of a typical change"
    )
    if len(ws) >= 2 and all(c > 0 for c in ws) and max(ws) - min(ws) <= 0.1 * max(ws) + EQUAL_WEIGHTS_TOL:
        return MethodFinding(
            "model_stock",
            "model_stock",
            (("ratio", round(t, 4)),),
            tuple(n for n, _ in ings),
            None,
            ("n_average with the base",),
            note + f"; equal weights with the rest on {base}: model stock, ratio t = {t:.2f} (sd-mecha's model "
            "stock takes t vector by vector, which blows up on 3x3 kernels)",
        )
    return None


def _subset_values(d: np.ndarray) -> np.ndarray:
    """Mean and sum of every non-empty subset of the rows of ``d`` (candidates for one coordinate)."""
    n = d.shape[0]
    out = []
    for r in range(1, n + 1):
        for s in itertools.combinations(range(n), r):
            tot = d[list(s)].sum(axis=0)
            out.append(tot / r)
            if r > 1:
                out.append(tot)
    return np.stack(out)


def _mode_ratio(t: np.ndarray, v: np.ndarray) -> float:
    """The common factor c in ``t = c * v_S``: the mode of t / v over candidates (log histogram)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (t[None, :] / v).ravel()
    r = r[np.isfinite(r) & (r > 1e-3) & (r < 1e3)]
    if r.size < 10:
        return 1.0
    lr = np.log(r)
    hist, edges = np.histogram(lr, bins=max(50, int((lr.max() - lr.min()) / 0.005) + 1))
    k = int(np.argmax(hist))
    peak = 0.5 * (edges[k] + edges[k + 1])
    near = np.abs(lr - peak) < 0.01
    return float(np.exp(np.median(lr[near]))) if near.any() else float(np.exp(peak))


def elementwise_unexplained(
    sample_target: Sequence[np.ndarray],
    sample_refs: Sequence[np.ndarray],
    base: int,
    ingredients: Sequence[int],
    energy: np.ndarray,
) -> float:
    """Share of an element-wise (TIES/DARE/DELLA) merge's change that no per-coordinate choice of
    surviving ingredients explains: per layer, each coordinate keeps the best of ``c * mean`` or
    ``c * sum`` of a subset of the ingredient deltas (or stays at the base), ``c`` being the layer's
    common rescale (1/(1-p) for DARE, alpha for TIES); layers weighted by their share of the change."""
    ings = list(ingredients)[:5]
    if not ings:
        return 1.0
    shares, weights = [], []
    for li, (st, sr) in enumerate(zip(sample_target, sample_refs, strict=True)):
        if st.size == 0:
            continue
        b = sr[base]
        t = np.where(_at_base(st, b), 0.0, st - b)
        den = float(t @ t)
        if den <= 0:
            continue
        v = _subset_values(sr[ings] - b[None, :])
        moved = t != 0
        c = _mode_ratio(t[moved], v[:, moved])
        resid = np.min(np.abs(t[None, :] - c * v), axis=0)
        resid = np.minimum(resid, np.abs(t))
        shares.append(float(resid @ resid) / den)
        weights.append(float(energy[li]) if li < energy.size else 0.0)
    return _pooled_share(shares, weights)


def _pooled_share(shares: Sequence[float], weights: Sequence[float]) -> float:
    """One share of the change left (a norm ratio) from each layer's share of its squared change,
    the layers weighted by their share of the change (equally when none has any); 1 without layers."""
    if not shares:
        return 1.0
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(shares, dtype=np.float64)
    if w.sum() <= 0:
        w = np.ones_like(s)
    return float(np.sqrt((s * w).sum() / w.sum()))


DELLA_EPS_MIN = 0.05
"""Smallest DELLA window (spread of keep probabilities by magnitude rank) that is reported as DELLA."""

DELLA_EPS_MAX = 0.55
"""A fitted window at the grid's edge is a hard magnitude cut (TIES's top-k trim), not DELLA's soft one."""

DELLA_SAMPLES_MAX = 8000
"""Coordinates the DELLA likelihood is evaluated on (ranks are taken on all of them first)."""

DELLA_LR_MIN = 30.0
"""Likelihood-ratio statistic (2 x log-likelihood gain over DARE's magnitude-blind drop) from which the
drop is magnitude-dependent (chi-square with 1 degree of freedom: 30 is p ~ 4e-8)."""


def _zero_patterns(signs: np.ndarray, vote: bool) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Per subset S of the ingredients (those whose change survived the drop), where the merge leaves the
    base: S empty, or, under a TIES sign vote by count (sd-mecha ``ties_sum_deltas``), a tied vote."""
    n = signs.shape[0]
    out = []
    for r in range(n + 1):
        for sub in itertools.combinations(range(n), r):
            if r == 0:
                out.append((sub, np.ones(signs.shape[1], dtype=bool)))
            elif vote:
                out.append((sub, signs[list(sub)].sum(axis=0) == 0))
    return out


def fit_della(
    sample_target: Sequence[np.ndarray], sample_refs: Sequence[np.ndarray], base: int, ingredients: Sequence[int]
) -> tuple[float, float, float] | None:
    """DELLA's (drop p, window eps, likelihood-ratio statistic) from the exact samples, or None.

    DARE drops each delta's coordinates with one probability p; DELLA (sd-mecha
    ``ties_sum_with_dropout(della_eps=eps)``) keeps a coordinate with probability
    ``k = 1 - p + eps * (rank - 1/2)``, ``rank`` its magnitude's rank in the tensor (0..1). Where every
    ingredient moved, the target stays at the base when all were dropped, or (after a TIES sign vote)
    when the survivors' signs tie: ``P = sum over survivor sets S that leave the base of
    prod_{i in S} k_i prod_{i not in S} (1 - k_i)``. Ranks are taken within each layer's sample (an
    unbiased estimate of the tensor's); p and eps are fitted by maximum likelihood on a grid, with and
    without the vote, against eps = 0 (DARE).

    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(size=20000); d = 0.05 * rng.normal(size=20000)
    >>> rank = np.argsort(np.argsort(np.abs(d))) / d.size
    >>> keep = rng.random(d.size) < 0.3 + 0.3 * (rank - 0.5)
    >>> p, eps, lr = fit_della([b + np.where(keep, d / 0.3, 0.0)], [np.stack([b, b + d])], 0, [1])
    >>> round(p, 1), round(eps, 1), lr > DELLA_LR_MIN
    (0.7, 0.3, True)
    """
    ings = list(ingredients)[:4]
    if not ings:
        return None
    eqs, ranks, signs = [], [], []
    for st, sr in zip(sample_target, sample_refs, strict=True):
        if st.size < 20:
            continue
        b = sr[base]
        d = sr[ings] - b[None, :]
        moved = (d != 0).all(axis=0)
        if moved.sum() < 20:
            continue
        eq = _at_base(st, b)[moved]
        if eq.all():  # a layer left alone (or zeroed row by row afterwards) says nothing of the drop
            continue
        a = np.abs(d[:, moved])
        r = (np.argsort(np.argsort(a, axis=1, kind="stable"), axis=1) + 0.5) / a.shape[1]
        eqs.append(eq)
        ranks.append(r)
        signs.append(np.sign(d[:, moved]))
    if not eqs:
        return None
    eq = np.concatenate(eqs).astype(np.float64)
    rk = np.concatenate(ranks, axis=1) - 0.5
    sg = np.concatenate(signs, axis=1)
    if eq.size < 500:
        return None
    if eq.size > DELLA_SAMPLES_MAX:  # an even stride: SDXL holds ~0.6 M samples, the grid ~600 fits
        pick = np.linspace(0, eq.size - 1, DELLA_SAMPLES_MAX).astype(int)
        eq, rk, sg = eq[pick], rk[:, pick], sg[:, pick]
    n = len(ings)
    patterns = {vote: _zero_patterns(sg, vote) for vote in (False, True)}

    def loglik(p: float, eps: float, vote: bool) -> float:
        keep = np.clip(1.0 - p + eps * rk, 0.0, 1.0)
        pr = np.zeros(eq.size)
        for sub, where in patterns[vote]:
            inside = np.zeros(n, dtype=bool)
            inside[list(sub)] = True
            term = np.prod(np.where(inside[:, None], keep, 1.0 - keep), axis=0)
            pr += np.where(where, term, 0.0)
        pr = np.clip(pr, 1e-9, 1 - 1e-9)
        return float(eq @ np.log(pr) + (1 - eq) @ np.log1p(-pr))

    p0 = float(eq.mean()) ** (1.0 / n)
    ps = np.clip(np.linspace(p0 - 0.3, p0 + 0.05, 36), 0.01, 0.99)
    best_dare = max((loglik(p, 0.0, v), p) for v in (False, True) for p in ps)
    _, pb, eb, vb = max(
        (loglik(p, e, v), p, e, v) for v in (False, True) for e in np.linspace(0.0, 0.6, 7) for p in ps[::3]
    )
    best = max(  # refine around the grid optimum
        (loglik(p, e, vb), p, e)
        for e in np.clip(eb + np.linspace(-0.08, 0.08, 9), 0.0, 1.0)
        for p in np.clip(pb + np.linspace(-0.04, 0.04, 9), 0.01, 0.99)
    )
    lr = 2.0 * (best[0] - best_dare[0])
    return float(best[1]), float(best[2]), float(lr)


def _features(d: np.ndarray) -> np.ndarray:
    """Functions of the ingredient deltas at one coordinate that common merge rules are made of."""
    n = d.shape[0]
    cols = [d, np.abs(d), d * np.abs(d)]
    for i, j in itertools.combinations(range(n), 2):
        a, b = d[i], d[j]
        s = np.abs(a) + np.abs(b)
        ratio = np.divide(np.abs(a - b), s, out=np.zeros_like(s), where=s > 0)
        cols += [
            (a * b)[None, :], np.minimum(a, b)[None, :], np.maximum(a, b)[None, :],
            (a * ratio)[None, :], (b * ratio)[None, :], (np.sign(a) == np.sign(b))[None, :] * (a + b),
            (np.sign(a) != np.sign(b))[None, :] * a, (np.sign(a) != np.sign(b))[None, :] * b,
        ]
        big = np.maximum(np.abs(a), np.abs(b))
        opp = np.divide(np.maximum(-a * b, 0.0), big**2, out=np.zeros_like(big), where=big > 0)
        cols += [(opp * a)[None, :], (opp * b)[None, :]]
    return np.concatenate(cols, axis=0).T


def residual_predictability(
    residual: Sequence[np.ndarray], sample_refs: Sequence[np.ndarray], base: int, ingredients: Sequence[int]
) -> float:
    """Held-out R^2 of the linear fit's residual at the samples, regressed on functions of the
    ingredients' deltas at the same coordinates (each layer scaled to unit delta size). Near 0 when
    the residual is further training or a model the library lacks; high when it is the merge rule."""
    ings = list(ingredients)[:4]
    if not ings:
        return 0.0
    xs, ys = [], []
    for r, sr in zip(residual, sample_refs, strict=True):
        if r.size == 0:
            continue
        d = sr[ings] - sr[base][None, :]
        scale = float(np.sqrt(np.mean(d**2))) or 1.0
        xs.append(_features(d / scale))
        ys.append(r / scale)
    if not xs:
        return 0.0
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    if y.size < 200 or float(y @ y) <= 0:
        return 0.0
    x = np.column_stack([x, np.ones(y.size)])
    half = np.arange(y.size) % 2 == 0
    coef = np.linalg.lstsq(x[half], y[half], rcond=None)[0]
    res = y[~half] - x[~half] @ coef
    tot = y[~half] - y[~half].mean()
    return float(1.0 - (res @ res) / max(float(tot @ tot), 1e-300))
