"""Element-wise merges (TIES, DARE, DARE-TIES) and baked-in LoRAs.

TIES and DARE act coordinate by coordinate, so only the exact coordinate samples reveal them
(sd-mecha's definitions, ``sd_mecha/extensions/builtin/merge_methods/ties.py``):

- TIES (``ties_sum``, ``add_difference_ties``): each task delta keeps its top-k share by
  magnitude (``filter_top_k``), every coordinate elects a sign by counting the kept signs (or, with
  ``vote_sgn`` and in the paper, by summing the kept deltas), and the kept deltas that agree are
  averaged (``sum / count``). The target equals the base exactly where every delta was trimmed or
  the vote is tied.
- DARE (``dropout``): each delta drops each coordinate with probability p; survivors are
  averaged and rescaled by ``1 / (1 - p)``. The target equals the base where every delta was
  dropped (about ``p ** n`` of the coordinates), independently of the magnitudes.
- DARE-TIES (``ties_sum_with_dropout``, ``add_ties_with_dare``): DARE's dropout, then TIES.

A linear merge moves every coordinate where one of its ingredients moved, so a target that stays
*exactly* at the base where the linear prediction says it should have moved is the signature.

LoRAs: a baked LoRA adds ``up @ down * scale`` to some layers, a low-rank change. The two-sided
sketch ``G^T W R`` of a rank-r matrix has rank r, so the singular values of a layer's residual
sketch show a gap after r (:func:`detect_lowrank`). A known LoRA's strength is a one-column
least-squares fit (:func:`estimate_lora_strength`).

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> up, down = rng.normal(size=(32, 4)), rng.normal(size=(4, 32))
>>> detect_lowrank({"k": up @ down + 1e-6 * rng.normal(size=(32, 32))}).rank
4
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sdforensics.recipe.results import ElementwiseFinding

#: share of "should have moved" coordinates left exactly at the base above which a merge is
#: element-wise (linear merges: ~0; DARE p >= 0.7 with <= 3 models: >= 0.34; TIES k <= 0.5: >= 0.12)
EQUAL_FRACTION_MIN = 0.05
#: coordinates that should have moved below which nothing can be said
MOVED_MIN = 50
#: balanced accuracy of the TIES trim-and-vote rule above which the merge is TIES, not DARE
TIES_RULE_MIN = 0.85


def _bf16_ulp(x: np.ndarray) -> np.ndarray:
    """Spacing of bfloat16 numbers around |x| (the coarsest dtype checkpoints are saved in)."""
    ax = np.maximum(np.abs(x), 1e-30)
    return np.asarray(np.exp2(np.floor(np.log2(ax)) - 7.0))


def _resaved(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``b`` rounded to float16 and to bfloat16 (round to nearest even), as a re-save would."""
    f16 = b.astype(np.float16).astype(np.float64)
    bits = b.astype(np.float32).view(np.uint32).astype(np.uint64)
    bf = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return f16, bf.astype(np.float64)


def _percentiles(deltas: np.ndarray) -> np.ndarray:
    """Rank of |delta| within its row (one reference, one layer), scaled to (0, 1]."""
    order = np.argsort(np.abs(deltas), axis=1, kind="stable")
    ranks = np.empty_like(order)
    rows = np.arange(deltas.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, deltas.shape[1] + 1)[None, :]
    return np.asarray(ranks / deltas.shape[1])


def _sign_cover(sign_t: np.ndarray, deltas: np.ndarray, max_terms: int = 6) -> list[int]:
    """Fewest references whose delta signs explain the sign of every moved coordinate.

    Under TIES and DARE every contributing delta has the sign of the result, so the true
    ingredients together cover (almost) every coordinate; an unrelated reference covers about
    half of what is left, a missing ingredient nearly all of it.
    """
    agree = (np.sign(deltas) == sign_t[None, :]) & (deltas != 0)
    uncovered = np.ones(sign_t.shape[0], dtype=bool)
    chosen: list[int] = []
    total = max(int(uncovered.sum()), 1)
    while len(chosen) < max_terms:
        left = int(uncovered.sum())
        if left < max(10, 0.003 * total):
            break
        counts = (agree & uncovered[None, :]).sum(axis=1).astype(float)
        counts[chosen] = -1
        best = int(np.argmax(counts))
        share = counts[best] / left
        if share < (0.6 if not chosen else 0.8):
            break
        chosen.append(best)
        uncovered &= ~agree[best]
    return chosen


def _regress_select(t: np.ndarray, d: np.ndarray, f_min: float = 25.0, max_terms: int = 6) -> list[int]:
    """Forward selection of the deltas that linearly predict ``t`` (F-test, positive weights).

    DARE is unbiased: ``E[t | deltas] = sum_i w_i delta_i``, so a regression over the samples
    names its ingredients even when each coordinate keeps only one of them.
    """
    chosen: list[int] = []
    rss = float(t @ t)
    n = t.shape[0]
    while len(chosen) < max_terms:
        best, best_rss = -1, rss
        for j in range(d.shape[0]):
            if j in chosen:
                continue
            x = d[chosen + [j]].T
            coef, *_ = np.linalg.lstsq(x, t, rcond=None)
            if coef[-1] <= 0:
                continue
            r = t - x @ coef
            if float(r @ r) < best_rss:
                best, best_rss = j, float(r @ r)
        if best < 0 or best_rss <= 0:
            break
        f = (rss - best_rss) / (best_rss / max(n - len(chosen) - 1, 1))
        if f < f_min:
            break
        chosen.append(best)
        rss = best_rss
    return chosen


def _balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = truth.sum(), (~truth).sum()
    if pos == 0 or neg == 0:
        return 0.5
    return float(0.5 * ((pred & truth).sum() / pos + (~pred & ~truth).sum() / neg))


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return 0.5
    order = np.argsort(score, kind="stable")
    ranks = np.empty(score.shape[0])
    ranks[order] = np.arange(1, score.shape[0] + 1)
    # average ranks over ties
    s_sorted = score[order]
    _, start, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    for st, ct in zip(start, counts, strict=True):
        if ct > 1:
            ranks[order[st : st + ct]] = st + (ct + 1) / 2.0
    return float((ranks[label].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _dropped_share(equal: np.ndarray, informative: np.ndarray, layer: np.ndarray, min_count: int = 100) -> float:
    """Share of informative coordinates left at the base, from the layers that show DARE's own rate.

    DARE leaves ``p ** n`` of the coordinates where all n ingredients moved at the base, in every
    layer alike. Some mergers also shrink whole rows afterwards (sd-mecha's DARE-TIES multiplies
    each row by a model-stock factor, zero for most conv kernels), which only adds equal
    coordinates: ``q_layer = p ** n + (1 - p ** n) * s_layer`` with ``s_layer >= 0``. So the
    layers with the lowest share carry the drop rate; pool those within sampling noise of the
    lower quartile (all of them when the layers agree, as for plain DARE).
    """
    ids, counts = np.unique(layer[informative], return_counts=True)
    eq_counts = np.bincount(layer[informative & equal], minlength=int(layer.max()) + 1)[ids]
    keep = counts >= min_count
    if keep.sum() < 3:
        return float(equal[informative].mean())
    ids, counts, eq_counts = ids[keep], counts[keep], eq_counts[keep]
    share = eq_counts / counts
    low = float(np.percentile(share, 25))
    near = share <= low + 3.0 * np.sqrt(max(low * (1 - low), 1e-4) / counts)
    return float(eq_counts[near].sum() / counts[near].sum())


def _ties_rule(dd: np.ndarray, pp: np.ndarray, any_moved: np.ndarray, equal: np.ndarray) -> tuple[float, float, str]:
    """How well TIES's trim-and-vote rule tells which coordinates stayed at the base: the best
    balanced accuracy over the density k and the two sign elections, with that k and election.

    Every delta keeps its top-k share by magnitude; the sign is elected by counting the kept
    signs (sd-mecha's default) or by their summed magnitudes (the paper's, sd-mecha's
    ``vote_sgn``), which leaves the base only where every delta was trimmed.
    """
    best_ba, best_k, best_vote = 0.0, 0.5, "count"
    for k in np.linspace(0.02, 0.98, 49):
        kept = pp > 1.0 - k
        for vote, votes in (("count", (np.sign(dd) * kept).sum(axis=0)), ("magnitude", (dd * kept).sum(axis=0))):
            ba = _balanced_accuracy(votes[any_moved] == 0, equal[any_moved])
            if ba > best_ba:
                best_ba, best_k, best_vote = ba, float(k), vote
    return best_ba, best_k, best_vote


def detect_elementwise(
    sample_target: Sequence[np.ndarray],
    sample_refs: Sequence[np.ndarray],
    base: int,
    predicted: Sequence[np.ndarray] | None = None,
    names: Sequence[str] | None = None,
) -> ElementwiseFinding:
    """Classify a merge as linear, TIES, DARE or DARE-TIES from exact coordinate samples.

    ``sample_target[l]`` (m,) and ``sample_refs[l]`` (n_refs, m) are raw values at the same
    coordinates of layer ``l``; ``base`` indexes the base the task deltas were taken from.
    ``predicted[l]``, when given, is the linear fit's prediction of ``target - base`` there; it
    says which coordinates a linear merge would have moved (use per-block weights).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(size=4000); a = b + 0.05 * rng.normal(size=4000)
    >>> keep = rng.random(4000) > 0.9
    >>> t = b + np.where(keep, (a - b) / 0.1, 0.0)
    >>> f = detect_elementwise([t], [np.stack([b, a])], base=0, names=["base", "A"])
    >>> f.kind, f.ingredients, round(f.drop_rate, 1)
    ('dare', ('A',), 0.9)
    """
    n_refs = sample_refs[0].shape[0] if sample_refs else 0
    labels = list(names) if names is not None else [str(i) for i in range(n_refs)]
    others = [i for i in range(n_refs) if i != base]
    t_parts, d_parts, pct_parts, moved_parts, any_parts, norm_parts, layer_parts = [], [], [], [], [], [], []
    for li, (st, sr) in enumerate(zip(sample_target, sample_refs, strict=True)):
        if st.size == 0:
            continue
        b = sr[base]
        f16, bf16 = _resaved(b)
        at_base = (st == b) | (st == f16) | (st == bf16)
        t = np.where(at_base, 0.0, st - b)
        d = sr[others] - b[None, :]
        thr = 2.0 * _bf16_ulp(b)
        moved_any = (np.abs(d) > thr[None, :]).any(axis=0)
        moved = np.abs(predicted[li]) > thr if predicted is not None else moved_any
        t_parts.append(t)
        d_parts.append(d)
        pct_parts.append(_percentiles(d) if d.shape[0] else d)
        moved_parts.append(moved)
        any_parts.append(moved_any)
        layer_parts.append(np.full(t.shape, li))
        norm_parts.append(np.full(t.shape, 1.0 / max(float(np.sqrt(np.mean(d**2))) if d.size else 0.0, 1e-30)))
    if not t_parts or not others:
        return ElementwiseFinding("linear", (), None, None, None, 0.0, 0.5, 0)
    t = np.concatenate(t_parts)
    d = np.concatenate(d_parts, axis=1)
    pct = np.concatenate(pct_parts, axis=1)
    moved = np.concatenate(moved_parts)
    equal = t == 0
    n_moved = int(moved.sum())
    fallback = False
    if n_moved < MOVED_MIN:
        # The linear fit predicts (almost) no change: it found no ingredient, as when a merge
        # shrinks its deltas row by row (sd-mecha's DARE-TIES multiplies each row by a model-stock
        # factor). Then every coordinate some reference moved should have moved.
        # Layers the target left entirely at the base say nothing of how it was merged (a baked
        # LoRA or a partial merge leaves whole layers alone), so they are left out.
        layer = np.concatenate(layer_parts)
        changed = np.bincount(layer[~equal], minlength=int(layer.max()) + 1) > 0
        moved = np.concatenate(any_parts) & changed[layer]
        n_moved = int(moved.sum())
        fallback = True
    eq_frac = float(equal[moved].mean()) if n_moved else 0.0
    if n_moved < MOVED_MIN or eq_frac < EQUAL_FRACTION_MIN:
        return ElementwiseFinding("linear", (), None, None, None, eq_frac, 0.5, int(t.size))

    nonequal = moved & ~equal
    cover = _sign_cover(np.sign(t[nonequal]), d[:, nonequal])
    if not cover:
        # without a linear fit to go by, signs no reference explains mean nothing element-wise
        kind = "linear" if fallback else "unknown"
        return ElementwiseFinding(kind, (), None, None, None, eq_frac, 0.5, int(t.size))
    # Candidate ingredient sets: the sign cover, and the deltas that linearly predict the target
    # (DARE is unbiased; with three or more independent TIES deltas the greedy cover can stop
    # after the first, as each later one explains only part of what is left).
    unit = np.concatenate(norm_parts)
    picked = _regress_select(t * unit, d * unit[None, :])
    candidates = [cover] + ([picked] if picked and sorted(picked) != sorted(cover) else [])
    best = None
    for cand in candidates:
        dd, pp = d[cand], pct[cand]
        any_moved = (dd != 0).any(axis=0)
        ba, k, vote = _ties_rule(dd, pp, any_moved, equal)
        if best is None or ba > best[0] + 1e-9:
            best = (ba, k, vote, cand)
    assert best is not None
    best_ba, best_k, best_vote, ties_cover = best
    if best_ba >= TIES_RULE_MIN:
        dd, pp = d[ties_cover], pct[ties_cover]
        any_moved = (dd != 0).any(axis=0)
        score = np.where(dd != 0, pp, 0.0).max(axis=0)
        auc = _auc(score[any_moved], ~equal[any_moved])
        kept = pp > 1.0 - best_k
        single = (kept.sum(axis=0) == 1) & ~equal & any_moved
        scale = None
        if single.sum() >= 10:
            who = np.argmax(kept[:, single], axis=0)
            ratio = t[single] / dd[who, np.nonzero(single)[0]]
            scale = float(np.median(ratio))
        ingredients = tuple(labels[others[i]] for i in ties_cover)
        return ElementwiseFinding("ties", ingredients, best_k, None, scale, eq_frac, auc, int(t.size), best_vote)
    if picked:
        cover = picked
    dd, pp = d[cover], pct[cover]
    any_moved = (dd != 0).any(axis=0)
    score = np.where(dd != 0, pp, 0.0).max(axis=0)
    auc = _auc(score[any_moved], ~equal[any_moved])
    ingredients = tuple(labels[others[i]] for i in cover)
    all_moved = (dd != 0).all(axis=0)
    q = _dropped_share(equal, all_moved, np.concatenate(layer_parts)) if all_moved.any() else eq_frac
    p = float(q ** (1.0 / len(cover))) if q > 0 else 0.0
    kind = "dare" if auc < 0.7 else "dare_ties"
    return ElementwiseFinding(kind, ingredients, None, p, None, eq_frac, auc, int(t.size))


# ---------------------------------------------------------------- LoRA


@dataclass(frozen=True)
class LowRankFinding:
    """Layers whose residual sketch is numerically low rank (an unknown baked LoRA)."""

    rank: int
    layers: tuple[str, ...]
    layer_ranks: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class LoraStrength:
    """Strength of a known LoRA in a target delta, with a 95% interval."""

    strength: float
    ci95: tuple[float, float]
    unexplained: float
    n_layers: int


def numerical_rank(m: np.ndarray, gap: float = 8.0, max_share: float = 0.5) -> int | None:
    """Rank r when singular values drop by ``gap`` x after the r-th, else None (full rank)."""
    s = np.linalg.svd(m, compute_uv=False)
    if s.size < 2 or s[0] <= 0:
        return None
    limit = max(1, int(max_share * s.size))
    ratios = s[:limit] / np.maximum(s[1 : limit + 1], s[0] * 1e-15)
    r = int(np.argmax(ratios))
    return r + 1 if ratios[r] >= gap else None


def top_energy_share_of_noise(shape: tuple[int, ...], rank: int, trials: int = 64) -> float:
    """Mean share of a Gaussian ``shape`` matrix's energy in its top ``rank`` singular values
    (deterministic: a fixed seed). A full-rank residual (fine-tune, rounding noise) sits near it;
    a LoRA's sits near 1. (32 x 32: rank 1 0.11, rank 4 0.38, rank 8 0.63.)"""
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(trials):
        sv = np.linalg.svd(rng.normal(size=shape), compute_uv=False)
        shares.append(float(np.sum(sv[:rank] ** 2) / np.sum(sv**2)))
    return float(np.mean(shares))


def detect_lowrank(
    residual_sketch_matrices: Mapping[str, np.ndarray],
    scales: Mapping[str, float] | None = None,
    gap: float = 8.0,
    min_share: float = 1e-3,
) -> LowRankFinding | None:
    """Find layers whose fit residual (a k1 x k2 sketch matrix) is numerically low rank.

    ``scales[key]`` (e.g. the norm of the target's delta sketch in that layer) sets how large a
    residual must be to count; without it, residuals below ``min_share`` of the largest one are
    ignored. Returns the most common rank and the touched layers, or None.
    """
    norms = {k: float(np.linalg.norm(m)) for k, m in residual_sketch_matrices.items()}
    if not norms:
        return None
    top = max(norms.values())
    if top <= 0:
        return None
    found: list[tuple[str, int]] = []
    for key, m in residual_sketch_matrices.items():
        ref = scales.get(key, top) if scales is not None else top
        if m.ndim != 2 or min(m.shape) < 4 or norms[key] <= min_share * max(ref, 1e-300):
            continue
        r = numerical_rank(m, gap=gap)
        if r is not None:
            found.append((key, r))
    if not found:
        return None
    rank = Counter(r for _, r in found).most_common(1)[0][0]
    # With the rank known from the clear layers, weaker layers count when their spectrum drops
    # after that same rank by a smaller (but still clear) factor, or when their top ``rank``
    # directions hold most of the energy: a weak LoRA saved in fp16 keeps its low-rank part under
    # dense rounding noise, which blurs the gap but not the share (measured on a real rank-4 LoRA
    # baked at 0.3: median gap 2.2, median top-4 share 0.91).
    seen = {k for k, _ in found}
    floors: dict[tuple[int, ...], float] = {}
    for key, m in residual_sketch_matrices.items():
        ref = scales.get(key, top) if scales is not None else top
        if key in seen or m.ndim != 2 or min(m.shape) <= rank or norms[key] <= min_share * max(ref, 1e-300):
            continue
        sv = np.linalg.svd(m, compute_uv=False)
        if sv[rank - 1] <= 0:
            continue
        if m.shape not in floors:
            floors[m.shape] = top_energy_share_of_noise(m.shape, rank)
        share = float(np.sum(sv[:rank] ** 2) / np.sum(sv**2))
        clear_gap = sv[rank - 1] >= (gap / 2.5) * max(sv[rank], sv[0] * 1e-15)
        # the share must cover 60% of the way from noise to 1 (32 x 32, rank 4: 0.75; a synthetic
        # fine-tune's residual, rank 8 plus dense, measured 0.55 on average, 0.61 at 99%)
        if clear_gap or share >= 1.0 - (1.0 - floors[m.shape]) / 2.5:
            found.append((key, rank))
    return LowRankFinding(rank, tuple(k for k, _ in found), tuple(found))


def estimate_lora_strength(
    target_delta_sketches: Mapping[str, np.ndarray],
    lora_delta_sketches: Mapping[str, np.ndarray],
) -> LoraStrength:
    """Least-squares strength s in ``target_delta ~ s * lora_delta`` over the LoRA's layers.

    ``lora_delta_sketches[key]`` is the sketch of ``up @ down * alpha / rank``; the target's
    delta is its sketch minus the base's (or the residual of a recipe fit). The interval is the
    larger of the OLS and the leave-one-layer-out jackknife interval.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> lo = {str(i): rng.normal(size=64) for i in range(5)}
    >>> round(estimate_lora_strength({k: 0.8 * v for k, v in lo.items()}, lo).strength, 3)
    0.8
    """
    keys = [k for k in lora_delta_sketches if k in target_delta_sketches]
    if not keys:
        return LoraStrength(0.0, (0.0, 0.0), 1.0, 0)
    xx = np.array([float(np.sum(lora_delta_sketches[k] ** 2)) for k in keys])
    xy = np.array([float(np.sum(lora_delta_sketches[k] * target_delta_sketches[k])) for k in keys])
    yy = np.array([float(np.sum(target_delta_sketches[k] ** 2)) for k in keys])
    rows = sum(int(np.size(lora_delta_sketches[k])) for k in keys)
    if xx.sum() <= 0:
        return LoraStrength(0.0, (0.0, 0.0), 1.0, len(keys))
    s = float(xy.sum() / xx.sum())
    rss = max(float(yy.sum() - 2 * s * xy.sum() + s * s * xx.sum()), 0.0)
    var = rss / max(rows - 1, 1) / xx.sum()
    if len(keys) >= 3:
        loo = (xy.sum() - xy) / np.maximum(xx.sum() - xx, 1e-300)
        var = max(var, float((len(keys) - 1) / len(keys) * np.sum((loo - loo.mean()) ** 2)))
    half = 1.96 * float(np.sqrt(var))
    unexplained = float(np.sqrt(rss / yy.sum())) if yy.sum() > 0 else 0.0
    return LoraStrength(s, (s - half, s + half), unexplained, len(keys))
