"""Recipe estimation: which references a checkpoint was mixed from, and how much of each.

Linear sketches keep merges linear, so the target is fitted as an *affine* combination of the
references, ``T = sum_i w_i M_i`` with ``sum_i w_i = 1`` (negative weights allowed: add difference
``A + m (B - C)`` is ``(1, m, -m)``). The fit runs in delta space around a pivot ``P`` (the
family's official base, else the nearest reference): ``T - P = sum_{i != P} w_i (M_i - P)``,
every layer of the model stacked (sketches preserve norms, so each layer weighs like its real
size). Steps: exact/near copy check, stepwise choice of the few ingredients, refit, per-block
and per-component refits, element-wise (TIES/DARE) check on the coordinate samples, low-rank
(LoRA) check on the residual, ambiguity of collinear references, then the kind of merge.

Pure functions: no I/O, no printing, deterministic. Blocks use SuperMerger's ids (time_embed in
IN00). See :func:`estimate_recipe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import chi2

from sdforensics.core.safetext import percent
from sdforensics.recipe.fit import Fit, Grams, build_grams, column_cosines, fit_columns, forward_select
from sdforensics.recipe.methods import (
    DELLA_EPS_MAX,
    DELLA_EPS_MIN,
    DELLA_LR_MIN,
    MODEL_STOCK_BLOWN_MAX,
    PER_TENSOR_MIN,
    PREDICTABLE_R2,
    ROBUST_REFIT_MIN,
    TRAIN_DIFF_FIT_MAX,
    UNKNOWN_METHOD_MIN,
    elementwise_unexplained,
    fit_della,
    fit_train_difference,
    model_stock_unexplained,
    name_linear_method,
    name_per_element,
    name_robust,
    per_element_interpolation,
    per_layer_fit,
    per_tensor_weights,
    residual_predictability,
    robust_sample_fit,
)
from sdforensics.recipe.nonlinear import detect_elementwise, detect_lowrank, numerical_rank
from sdforensics.recipe.results import (
    BLOCK_CONVENTION,
    LEFT_OUT_OF_FIT,
    AmbiguousGroup,
    BlockFit,
    ElementwiseFinding,
    LoraFinding,
    MethodFinding,
    RecipeEstimate,
    SuperMergerWeights,
    Weight,
)
from sdforensics.recipe.text import recipe_text, recipe_to_json, summarize

__all__ = [
    "LayerData",
    "RecipeEstimate",
    "estimate_recipe",
    "recipe_text",
    "recipe_to_json",
    "summarize",
    "supermerger_blocks",
]

#: relative distance ||T - M|| / ||M|| below which T is a re-save of M (bf16 rounding ~1.5e-3)
COPY_REL_DIST = 5e-3
#: delta cosine above which two references' split is reported as ambiguous
COLLINEAR_COS = 0.9
#: a block weight must differ from the global one by this much (and 3 sigma) to be block-weighted
BLOCK_DIFF_MIN = 0.05
_Z95 = 1.959964


@dataclass(frozen=True)
class LayerData:
    key: str  # canonical tensor name, e.g. "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    block: str  # SuperMerger block id: "BASE", "IN00".."IN11", "M00", "OUT00".."OUT11", "VAE"
    component: str  # "unet" | "text_encoder" | "vae"
    target: np.ndarray  # 1-D float64: linear sketch S(x) of the target's tensor
    refs: np.ndarray  # (n_refs, d) float64: the same sketch of each reference's tensor
    sample_target: np.ndarray  # 1-D float64: raw values at m fixed hash-chosen coordinates
    sample_refs: np.ndarray  # (n_refs, m) float64
    sketch2d: tuple[int, int] | None  # k1 x k2 two-sided sketch (row-major) in the LAST k1*k2 entries, or None
    numel: int  # elements of the real tensor
    nonfinite: int = 0  # NaN/Inf values in the target's or a reference's tensor (fingerprints hold 0 there)


def finite_layers(layers: Sequence[LayerData]) -> list[LayerData]:
    """The layers whose tensors held no NaN/Inf: the fingerprint puts 0 in their place, which reads as a
    change of minus the base's value (a merge that blew up, such as model stock on a 1x1 kernel, would
    swamp every fit)."""
    return [
        la for la in layers
        if la.nonfinite == 0 and np.isfinite(la.target).all() and np.isfinite(la.refs).all()
        and np.isfinite(la.sample_target).all() and np.isfinite(la.sample_refs).all()
    ]


def _tail2d(vector: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The k1 x k2 two-sided sketch: the last k1*k2 entries of a layer's vector (the whole vector
    when that is all it holds; fingerprints put an unbiased CountSketch in front of it)."""
    n = shape[0] * shape[1]
    return vector[-n:].reshape(shape)


def supermerger_blocks(block_ids: Sequence[str]) -> tuple[str, ...]:
    """SuperMerger's block order for the family these ids come from (26 for SD1/2, 20 for SDXL)."""
    sd1 = any(b in ("IN09", "IN10", "IN11", "OUT09", "OUT10", "OUT11") for b in block_ids)
    n = 12 if sd1 else 9
    return ("BASE",) + tuple(f"IN{i:02d}" for i in range(n)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(n))


def _ordered_blocks(layers: Sequence[LayerData]) -> list[str]:
    seen = list(dict.fromkeys(layer.block for layer in layers))
    order = list(supermerger_blocks(seen)) + ["VAE"]
    return [b for b in order if b in seen] + [b for b in seen if b not in order]


def _ci(value: float, var: float) -> tuple[float, float]:
    half = _Z95 * float(np.sqrt(max(var, 0.0)))
    return (value - half, value + half)


class _Problem:
    """Delta-space design of one target against the library (plus optional LoRA columns)."""

    def __init__(
        self,
        layers: Sequence[LayerData],
        pivot: int,
        n_refs: int,
        lora_deltas: Mapping[str, Mapping[str, np.ndarray]],
    ) -> None:
        self.model_cols = [i for i in range(n_refs) if i != pivot]
        self.lora_names = list(lora_deltas)
        self.layers = layers
        self.pivot = pivot
        self.lora_deltas = lora_deltas
        self.ys = [layer.target - layer.refs[pivot] for layer in layers]
        self.grams: Grams = build_grams(self.ys, (self.design(li) for li in range(len(layers))))
        self.n_model = len(self.model_cols)

    def design(self, li: int, columns: Sequence[int] | None = None) -> np.ndarray:
        """Columns of layer ``li`` (reference deltas, then LoRA sketches), built on demand."""
        layer = self.layers[li]
        p = layer.refs[self.pivot]
        n_model = len(self.model_cols)
        wanted = range(n_model + len(self.lora_names)) if columns is None else columns
        cols = []
        for c in wanted:
            if c < n_model:
                cols.append(layer.refs[self.model_cols[c]] - p)
            else:
                sk = self.lora_deltas[self.lora_names[c - n_model]].get(layer.key)
                cols.append(np.zeros_like(p) if sk is None else np.asarray(sk, dtype=np.float64).ravel())
        return np.stack(cols, axis=1) if cols else np.zeros((p.shape[0], 0))

    def residual(self, li: int, fit: Fit) -> np.ndarray:
        if not fit.columns:
            return self.ys[li]
        return self.ys[li] - self.design(li, fit.columns) @ fit.coef


def _affine_weights(fit: Fit, n_model: int, model_cols: list[int], pivot: int) -> dict[int, tuple[float, float]]:
    """Reference index -> (weight, variance), the pivot's weight being 1 - sum of the others."""
    out: dict[int, tuple[float, float]] = {}
    model_pos = [k for k, c in enumerate(fit.columns) if c < n_model]
    for k in model_pos:
        out[model_cols[fit.columns[k]]] = (float(fit.coef[k]), float(fit.cov[k, k]))
    idx = np.array(model_pos, dtype=int)
    pv = 1.0 - float(fit.coef[idx].sum()) if idx.size else 1.0
    pvar = float(fit.cov[np.ix_(idx, idx)].sum()) if idx.size else 0.0
    out[pivot] = (pv, pvar)
    return out


def _block_fit(
    prob: _Problem, mask: np.ndarray, columns: Sequence[int], label: str, names: Sequence[str], pivot: int
) -> tuple[BlockFit, Fit]:
    sub = prob.grams.subset(mask)
    total = prob.grams.gram.sum(axis=0)
    rows_share = max(float(sub.rows.sum()), 1.0) / max(float(prob.grams.rows.sum()), 1.0)
    diag_b = sub.gram.sum(axis=0).diagonal()
    present = [c for c in columns if diag_b[c] > 1e-6 * rows_share * total[c, c]]
    fit = fit_columns(sub, present)
    unexplained = fit.unexplained if fit.yy > 0 else 0.0
    entries: list[tuple[str, float | None, tuple[float, float] | None]] = []
    pos = {c: k for k, c in enumerate(fit.columns)}
    model_present = [pos[c] for c in present if c < prob.n_model]
    complete = len(present) == len(columns)
    if complete:
        idx = np.array(model_present, dtype=int)
        pv = 1.0 - float(fit.coef[idx].sum()) if idx.size else 1.0
        pvar = float(fit.cov[np.ix_(idx, idx)].sum()) if idx.size else 0.0
        entries.append((names[pivot], pv, _ci(pv, pvar)))
    else:
        entries.append((names[pivot], None, None))
    for c in columns:
        ref = names[prob.model_cols[c]] if c < prob.n_model else prob.lora_names[c - prob.n_model]
        if c in pos:
            k = pos[c]
            w = float(fit.coef[k])
            entries.append((ref, w, _ci(w, float(fit.cov[k, k]))))
        else:
            entries.append((ref, None, None))
    return BlockFit(label, tuple(entries), unexplained if fit.yy > 0 else None), fit


def _nearest_copy(layers: Sequence[LayerData], mask: np.ndarray, n_refs: int) -> tuple[list[int], np.ndarray]:
    """References within COPY_REL_DIST of the target on the masked layers, and all distances."""
    d2 = np.zeros(n_refs)
    n2 = np.zeros(n_refs)
    for layer, m in zip(layers, mask, strict=True):
        if m:
            d2 += ((layer.refs - layer.target[None, :]) ** 2).sum(axis=1)
            n2 += (layer.refs**2).sum(axis=1)
    rel = np.sqrt(d2 / np.maximum(n2, 1e-300))
    return [int(i) for i in np.nonzero(rel <= COPY_REL_DIST)[0]], rel


def _ambiguous(prob: _Problem, fit: Fit, names: Sequence[str]) -> tuple[AmbiguousGroup, ...]:
    cos = column_cosines(prob.grams)
    nm = prob.n_model
    chosen = [c for c in fit.columns if c < nm]
    parent = list(range(nm))

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for c in chosen:
        for j in range(nm):
            if j != c and cos[c, j] >= COLLINEAR_COS:
                parent[find(j)] = find(c)
    groups: dict[int, list[int]] = {}
    for j in range(nm):
        groups.setdefault(find(j), []).append(j)
    out = []
    pos = {c: k for k, c in enumerate(fit.columns)}
    for members in groups.values():
        if len(members) < 2 or not any(m in pos for m in members):
            continue
        idx = np.array([pos[m] for m in members if m in pos])
        w = float(fit.coef[idx].sum())
        var = float(fit.cov[np.ix_(idx, idx)].sum())
        if abs(w) < 0.03:  # a trace of the pair, not an ingredient worth splitting
            continue
        mc = min(cos[a, b] for a in members for b in members if a != b)
        refs = tuple(names[prob.model_cols[m]] for m in members)
        out.append(AmbiguousGroup(refs, w, _ci(w, var), float(mc)))
    return tuple(out)


def _supermerger(
    blocks: Sequence[BlockFit], weights: Sequence[Weight], block_ids: Sequence[str]
) -> SuperMergerWeights | None:
    order = supermerger_blocks(block_ids)
    by_block = {b.block: b for b in blocks}
    gw = {w.reference: w.weight for w in weights}
    refs = [w.reference for w in weights if abs(w.weight) > 0.02 or _any_block_weight(blocks, w.reference)]
    models: tuple[str, ...]
    if len(refs) == 2:
        a, b = sorted(refs, key=lambda r: -gw.get(r, 0.0))
        formula, models, key = "(1-alpha) x A + alpha x B", (a, b), b
    elif len(refs) == 3:
        anchor = max(refs, key=lambda r: gw.get(r, 0.0))
        rest = [r for r in refs if r != anchor]
        pos_ref = max(rest, key=lambda r: gw.get(r, 0.0))
        neg_ref = min(rest, key=lambda r: gw.get(r, 0.0))
        if gw.get(neg_ref, 0.0) >= 0 or abs(gw.get(anchor, 0.0) - 1.0) > 0.05:
            return None
        formula, models, key = "A + alpha x (B - C)", (anchor, pos_ref, neg_ref), pos_ref
    else:
        return None
    alphas, undetermined = [], []
    for blk in order:
        fitb = by_block.get(blk)
        val = None
        if fitb is not None:
            val = dict((r, w) for r, w, _ in fitb.weights).get(key)
        if val is None:
            undetermined.append(blk)
            val = gw.get(key, 0.0)
        alphas.append(round(float(val), 3) + 0.0)  # + 0.0 turns -0.0 into 0 (no "-0" in the list)
    text = ",".join(f"{a:g}" for a in alphas)
    return SuperMergerWeights(formula, models, order, tuple(alphas), text, tuple(undetermined))


def _any_block_weight(blocks: Sequence[BlockFit], ref: str) -> bool:
    return any(r == ref and w is not None and abs(w) > 0.02 for b in blocks for r, w, _ in b.weights)


def _is_block_weighted(blocks: Sequence[BlockFit], weights: Sequence[Weight]) -> bool:
    """Per-block weights differ beyond their intervals: a chi-square test of homogeneity per
    reference (p < 1e-4 over the UNet and text-encoder blocks), and by at least BLOCK_DIFF_MIN."""
    gw = {w.reference: w for w in weights}
    for ref, g in gw.items():
        q, n, biggest = 0.0, 0, 0.0
        g_sd = (g.ci95[1] - g.ci95[0]) / (2 * _Z95)
        for b in blocks:
            if b.block == "VAE":
                continue
            for r, w, ci in b.weights:
                if r != ref or w is None or ci is None:
                    continue
                sd = max(float(np.hypot((ci[1] - ci[0]) / (2 * _Z95), g_sd)), 1e-4)
                q += ((w - g.weight) / sd) ** 2
                n += 1
                biggest = max(biggest, abs(w - g.weight))
        if n >= 2 and biggest > BLOCK_DIFF_MIN and q > float(chi2.ppf(1 - 1e-4, n)):
            return True
    return False


def _block_unexplained(prob: _Problem, blocks: Sequence[BlockFit], block_of: np.ndarray) -> float:
    """What the per-block fits leave unexplained, over the whole model (a block-weighted merge is
    explained block by block, not by one set of global weights)."""
    energy = np.array([float(np.dot(y, y)) for y in prob.ys])
    num = den = 0.0
    for bf in blocks:
        e = float(energy[block_of == bf.block].sum())
        num += ((bf.unexplained or 0.0) ** 2) * e
        den += e
    return float(np.sqrt(num / den)) if den > 0 else 0.0


FINETUNE_WEIGHT = 0.05
"""A fine-tune's parent has weight 1 within this, every other reference (the base too) 0 within 0.02."""
FINETUNE_UNEXPLAINED = 0.1
"""Unexplained share from which one parent at weight 1 reads as a fine-tune, not a copy or a merge."""


def _finetune_parent(weights: Sequence[Weight], base: str | None, unexplained: float) -> str | None:
    """The parent when the fit is one library model at weight 1 plus a change the library does not hold."""
    if base is None or unexplained < FINETUNE_UNEXPLAINED:
        return None
    ones = [w for w in weights if w.reference != base and abs(w.weight - 1.0) < FINETUNE_WEIGHT]
    rest = [w for w in weights if w not in ones]
    if len(ones) == 1 and all(abs(w.weight) < 0.02 for w in rest):
        return ones[0].reference
    return None


def _linear_prediction(prob: _Problem, fit: Fit, li: int) -> np.ndarray:
    """The global fit's prediction of ``target - pivot`` at layer ``li``'s exact samples."""
    layer = prob.layers[li]
    pred = np.zeros(layer.sample_target.shape[0])
    for k, c in enumerate(fit.columns):
        if c < prob.n_model:
            pred += fit.coef[k] * (layer.sample_refs[prob.model_cols[c]] - layer.sample_refs[prob.pivot])
    return pred


def _recognise_method(
    prob: _Problem,
    fit: Fit,
    kind: str,
    weights: Sequence[Weight],
    elementwise: ElementwiseFinding | None,
    names: Sequence[str],
    base: int | None,
    u_block: float,
    linear_u: float,
) -> tuple[str, MethodFinding | None, float]:
    """The merge method behind the recipe (:mod:`sdforensics.recipe.methods`), the kind (possibly
    ``unknown_method``) and the unexplained share measured under the recognised method."""
    layers = prob.layers
    has_samples = base is not None and any(la.sample_target.size for la in layers)
    energy = prob.grams.yy
    st = [la.sample_target for la in layers]
    sr = [la.sample_refs for la in layers]
    index = {n: i for i, n in enumerate(names)}
    if kind in ("ties", "dare") and elementwise is not None and has_samples and base is not None:
        ings = [index[n] for n in elementwise.ingredients if n in index]
        u = elementwise_unexplained(st, sr, prob.pivot, ings, energy)
        params: list[tuple[str, float]] = []
        if elementwise.density is not None:
            params.append(("density", round(elementwise.density, 4)))
        if elementwise.drop_rate is not None:
            params.append(("drop", round(elementwise.drop_rate, 4)))
        if elementwise.scale is not None:
            params.append(("alpha", round(elementwise.scale, 4)))
        della = fit_della(st, sr, prob.pivot, ings) if elementwise.kind in ("dare", "dare_ties") else None
        if della is not None and della[1] >= DELLA_EPS_MIN and della[2] >= DELLA_LR_MIN and della[1] < DELLA_EPS_MAX:
            p, eps, lr = della
            method = MethodFinding(
                "della", "dare", (("drop", round(p, 4)), ("eps", round(eps, 4))), elementwise.ingredients, u,
                ("dare with magnitude-ranked drop",),
                f"DELLA: a DARE drop whose keep probability rises with the change's magnitude rank (drop {p:.2f}, "
                f"window {eps:.2f}; likelihood ratio {lr:.0f} against DARE's magnitude-blind drop); unexplained share "
                "measured under the element-wise model",
            )
            return kind, method, u
        method = MethodFinding(
            elementwise.kind, "elementwise", tuple(params), elementwise.ingredients, u,
            ("della",) if elementwise.kind != "ties" else (),
            "unexplained share measured under the element-wise model: each coordinate keeps a subset of the "
            "ingredients' changes, rescaled",
        )
        return kind, method, u
    if kind in ("lora", "unknown") and has_samples and base is not None and linear_u >= ROBUST_REFIT_MIN:
        # a merge that blew up a few vectors (model stock at full size) swamps the least-squares fit, which
        # then finds no ingredient, and the blown-up rows look like a rank-1 LoRA
        stock = _model_stock(prob, names, base, linear_u)
        if stock is not None and stock.unexplained is not None:
            return "weighted_sum", stock, stock.unexplained
    if kind not in ("weighted_sum", "add_difference", "block_weighted", "finetune") or base is None:
        return kind, None, linear_u
    model_cols = [c for c in fit.columns if c < prob.n_model]
    ing_idx = [prob.model_cols[c] for c in model_cols]
    if has_samples and fit.unexplained >= PER_TENSOR_MIN and kind != "finetune":
        td = fit_train_difference(st, sr, ing_idx + [prob.pivot])
        if td is not None and td[0] < TRAIN_DIFF_FIT_MAX and td[0] < 0.5 * fit.unexplained:
            share, alpha, (a, b, c) = td
            method = MethodFinding(
                "train_difference", "add_difference", (("alpha", round(alpha, 4)),),
                (names[a], names[b], names[c]), share, ("train_difference_mask",),
                f"{names[a]} + train difference of ({names[b]} - {names[c]}), alpha {alpha:.2f} (SuperMerger "
                "trainDifference, sd-mecha train_difference_mask); the weights are its linear approximation",
            )
            return "add_difference", method, share
    if model_cols and fit.unexplained >= PER_TENSOR_MIN and kind != "finetune":
        coef, u_layer = per_layer_fit(prob.grams.gram, prob.grams.cross, prob.grams.yy, model_cols)
        pt = per_tensor_weights(coef, energy, [names[i] for i in ing_idx], u_layer, u_block, fit.unexplained)
        if pt is not None:
            return kind, pt, u_layer
    two_models = kind in ("weighted_sum", "block_weighted") and len(ing_idx) == 2
    # linear_u is the per-block fit's share for a block-weighted merge: a factor that changes block by
    # block is the block weights themselves, not an element-by-element interpolation
    if has_samples and two_models and linear_u >= PER_TENSOR_MIN:
        pe = name_per_element(
            per_element_interpolation(st, sr, ing_idx[0], ing_idx[1]), names[ing_idx[0]], names[ing_idx[1]]
        )
        if pe is not None:
            return kind, pe, pe.unexplained if pe.unexplained is not None else linear_u
    named: MethodFinding | None = name_linear_method(kind, weights, names[base])
    if has_samples and kind != "finetune" and model_cols and linear_u >= UNKNOWN_METHOD_MIN:
        resid = [la.sample_target - la.sample_refs[prob.pivot] - _linear_prediction(prob, fit, li)
                 for li, la in enumerate(layers)]
        r2 = residual_predictability(resid, sr, prob.pivot, ing_idx)
        if r2 >= PREDICTABLE_R2:
            ing_names = tuple(names[i] for i in ing_idx)
            unknown = MethodFinding(
                "unknown", "unknown", (("residual_r2", round(r2, 4)),), ing_names, None, (),
                f"the ingredients are certain ({', '.join(ing_names)}), but no method sdforensics knows combines them "
                f"this way: what the linear fit leaves is a function of their own values (held-out R2 {r2:.2f})",
            )
            return "unknown_method", unknown, linear_u
    if has_samples and kind in ("weighted_sum", "block_weighted") and linear_u >= ROBUST_REFIT_MIN:
        stock = _model_stock(prob, names, base, linear_u)
        if stock is not None:
            return kind, stock, stock.unexplained if stock.unexplained is not None else linear_u
    return kind, named, linear_u


def _model_stock(prob: _Problem, names: Sequence[str], base: int, linear_u: float) -> MethodFinding | None:
    """Model stock found by the robust refit of the exact samples (equal weights on two or more
    ingredients, the rest on the base), with the share its own model leaves when no more than
    ``MODEL_STOCK_BLOWN_MAX`` of the coordinates are blown up; None when the refit finds anything else."""
    st = [la.sample_target for la in prob.layers]
    sr = [la.sample_refs for la in prob.layers]
    cands = [i for i in range(len(names)) if i != prob.pivot]
    rob = robust_sample_fit(st, sr, prob.pivot, cands)
    found = name_robust(rob[0], rob[1], [names[i] for i in cands], names[base], linear_u) if rob else None
    if found is None:
        return None
    index = {n: i for i, n in enumerate(names)}
    ratio = dict(found.parameters)["ratio"]
    u, blown = model_stock_unexplained(st, sr, prob.pivot, [index[n] for n in found.ingredients], ratio,
                                       prob.grams.yy)
    if blown > MODEL_STOCK_BLOWN_MAX:
        return found
    note = (f"{found.note}; measured against ratio x the ingredients' mean change, {percent(u)} is left, "
            f"and {percent(blown)} of the sampled coordinates lie far off it (the vectors model stock blew up)")
    return replace(found, unexplained=u, note=note)


def estimate_recipe(
    layers: Sequence[LayerData],
    names: Sequence[str],
    base: int | None,
    lora_deltas: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    block_convention: str = BLOCK_CONVENTION,
) -> RecipeEstimate:
    """Estimate the merge recipe of one target from its per-layer fingerprints.

    ``names`` are the references in row order of ``LayerData.refs``; ``base`` indexes the
    family's official base (None: the nearest reference is the pivot). ``lora_deltas`` maps a
    library LoRA's name to ``{layer key: sketch of up @ down * alpha / rank}``; such LoRAs become
    extra columns whose coefficient is the strength they were baked in at.

    The stages: the linear fit (forward selection over all references and LoRAs, per block too),
    element-wise merges from the exact samples (a refit on their ingredients), LoRAs, each
    component on its own, then the kind of merge and the method that explains it.

    >>> from sdforensics.synth.estimate_layers import demo_layers
    >>> layers, names = demo_layers({"A": 0.65, "B": 0.35})
    >>> est = estimate_recipe(layers, names, base=0)
    >>> est.kind, round(est.weight_of("A"), 2), round(est.weight_of("B"), 2)
    ('weighted_sum', 0.65, 0.35)
    """
    n_refs = len(names)
    lora_deltas = lora_deltas or {}
    all_layers = len(layers)
    layers = finite_layers(layers)
    if not layers or n_refs == 0:
        raise ValueError("estimate_recipe needs at least one layer with finite values and one reference")
    copies, rel = _nearest_copy(layers, np.ones(len(layers), dtype=bool), n_refs)
    pivot = base if base is not None else int(np.argmin(rel))
    notes: list[str] = [f"blocks: {block_convention}"]
    if len(layers) < all_layers:
        notes.append(
            f"{all_layers - len(layers)} of {all_layers} layers hold NaN/Inf values (see the problems) and are "
            + LEFT_OUT_OF_FIT
        )
    if base is None:
        notes.append(f"no official base in the library: deltas are taken from the nearest reference, {names[pivot]}")
    fitter = _Fitter(_Problem(layers, pivot, n_refs, lora_deltas), layers, names, pivot)
    fit, blocks, raw_blocks = fitter.fits_for(forward_select(fitter.prob.grams, fitter.all_cols))
    elementwise = None
    if base is not None and any(layer.sample_target.size for layer in layers):
        elementwise = _elementwise_stage(fitter.prob, layers, names, fit, raw_blocks)
        if elementwise.kind in ("ties", "dare", "dare_ties"):
            idx = {names[c]: k for k, c in enumerate(fitter.prob.model_cols)}
            fit, blocks, raw_blocks = fitter.fits_for(tuple(idx[n] for n in elementwise.ingredients if n in idx))
    aff = _affine_weights(fit, fitter.prob.n_model, fitter.prob.model_cols, pivot)
    weights = sorted((Weight(names[i], w, _ci(w, v)) for i, (w, v) in aff.items()), key=lambda w: -w.weight)
    if abs(aff[pivot][0]) < PIVOT_DROP and aff[pivot][1] < PIVOT_DROP_VAR and len(weights) > 1:
        weights = [w for w in weights if w.reference != names[pivot]]
    loras, low = _lora_findings(fitter.prob, layers, fit, raw_blocks, lora_deltas, elementwise)
    components, comp_copies = _component_fits(fitter, layers)
    best = int(np.argmin(rel))
    exact = bool(rel[best] < 1e-9)
    near = bool(
        best in copies
        and abs(aff.get(best, (0.0, 0.0))[0] - 1.0) < COPY_WEIGHT_TOL
        and all(abs(w.weight) < WEIGHT_SHOWN or w.reference == names[best] for w in weights)
    )
    model_weights = [w for w in weights if abs(w.weight) > WEIGHT_SHOWN]
    lora_only = bool(loras) and (
        len(model_weights) == 1 and abs(model_weights[0].weight - 1.0) < WEIGHT_SHOWN or not model_weights
    )
    kind, copy_of, weights = _kind(
        fitter, fit, blocks, weights, comp_copies, elementwise, names, base,
        best=best, exact=exact, near=near, lora_only=lora_only, low=low,
    )  # fmt: skip
    supermerger = _supermerger(blocks, weights, fitter.block_ids) if kind == "block_weighted" else None
    u_block = _block_unexplained(fitter.prob, blocks, fitter.block_of)
    linear_u = u_block if kind == "block_weighted" else fit.unexplained
    kind, method, unexplained = _recognise_method(
        fitter.prob, fit, kind, weights, elementwise, names, base, u_block, linear_u
    )
    if method is not None and method.family == "model_stock" and method.unexplained is not None:
        weights = _robust_weights(fitter.prob, layers, names, method.ingredients) or weights
        loras = [lo for lo in loras if lo.reference is not None]  # an unknown "LoRA" was the blown-up rows
    return RecipeEstimate(
        block_convention=block_convention,
        kind=kind,
        pivot=names[pivot],
        base=names[base] if base is not None else None,
        weights=tuple(weights),
        unexplained=unexplained,
        method=method,
        linear_unexplained=linear_u if method is not None and method.unexplained is not None else None,
        blocks=tuple(blocks),
        components=tuple(components),
        ambiguous=_ambiguous(fitter.prob, fit, names) if base is not None else (),
        loras=tuple(loras),
        elementwise=elementwise,
        supermerger=supermerger,
        copy_of=copy_of,
        notes=tuple(notes),
    )


def _robust_weights(
    prob: _Problem, layers: Sequence[LayerData], names: Sequence[str], ingredients: Sequence[str]
) -> list[Weight] | None:
    """Weights of ``ingredients`` and the pivot from the robust refit of the exact samples (a merge that
    blew up a few coordinates, as model stock does, swamps the least-squares weights)."""
    index = {n: i for i, n in enumerate(names)}
    cols = [index[n] for n in ingredients]
    rob = robust_sample_fit(
        [la.sample_target for la in layers], [la.sample_refs for la in layers], prob.pivot, cols
    )
    if rob is None:
        return None
    coef, _, cov = rob
    out = [
        Weight(names[c], float(w), _ci(float(w), float(cov[k, k])))
        for k, (c, w) in enumerate(zip(cols, coef, strict=True))
    ]
    rest = 1.0 - float(coef.sum())
    out.append(Weight(names[prob.pivot], rest, _ci(rest, float(cov.sum()))))
    return sorted(out, key=lambda w: -w.weight)


PIVOT_DROP = 0.005
"""The pivot's own weight (and ``PIVOT_DROP_VAR``, its variance) below which it is left out of the answer."""
PIVOT_DROP_VAR = 1e-4
WEIGHT_SHOWN = 0.02
"""A reference weight below this is not an ingredient (for copies, LoRA-only models, the kinds)."""
COPY_WEIGHT_TOL = 0.015
"""A near-copy: the nearest reference's weight within this of 1 (and every other weight below ``WEIGHT_SHOWN``)."""
LOWRANK_MIN_UNEXPLAINED = 0.05
"""Look for an unknown LoRA's low-rank residual only when the fit leaves more than this."""
LORA_MIN_LAYERS = 3
"""A LoRA touches many layers: one or two low-rank leftovers are more likely a fine-tune's own
low-rank part (measured: a false rank-8 "LoRA" on 1 layer in 3 full-size non-LoRA merges)."""
UNKNOWN_SHARE = 0.3
"""No reference selected and more than this unexplained: nothing in the library explains the model."""
ADD_DIFF_NEGATIVE = 0.03
"""A weight below minus this, with its interval below 0: an add-difference merge."""


class _Fitter:
    """The linear fits of one problem: over all layers, and per merge block, on chosen columns."""

    def __init__(self, prob: _Problem, layers: Sequence[LayerData], names: Sequence[str], pivot: int) -> None:
        self.prob, self.names, self.pivot = prob, names, pivot
        self.all_cols = list(range(prob.n_model + len(prob.lora_names)))
        self.block_ids = _ordered_blocks(layers)
        self.block_of = np.array([layer.block for layer in layers])

    def fits_for(self, cols: Sequence[int]) -> tuple[Fit, list[BlockFit], dict[str, Fit]]:
        f = fit_columns(self.prob.grams, cols)
        bfs, raw = [], {}
        for blk in self.block_ids:
            bf, rf = _block_fit(self.prob, self.block_of == blk, cols, blk, self.names, self.pivot)
            bfs.append(bf)
            raw[blk] = rf
        return f, bfs, raw


def _elementwise_stage(
    prob: _Problem, layers: Sequence[LayerData], names: Sequence[str], fit: Fit, raw_blocks: dict[str, Fit]
) -> ElementwiseFinding:
    """Element-wise merges (TIES, DARE) are only visible in the exact coordinate samples, around the
    real base: each layer's samples against what the (block's) linear fit predicts there."""
    preds = []
    for layer in layers:
        use = _layer_fit(raw_blocks, layer.block, fit)
        pred = np.zeros(layer.sample_target.shape[0])
        for k, c in enumerate(use.columns):
            if c < prob.n_model:
                pred += use.coef[k] * (layer.sample_refs[prob.model_cols[c]] - layer.sample_refs[prob.pivot])
        preds.append(pred)
    return detect_elementwise(
        [la.sample_target for la in layers], [la.sample_refs for la in layers], prob.pivot, preds, names
    )


def _layer_fit(raw_blocks: Mapping[str, Fit], block: str, fit: Fit) -> Fit:
    """The fit of the layer's merge block, or the global fit where the block has none."""
    rf = raw_blocks.get(block)
    return rf if rf is not None and rf.columns else fit


def _lora_findings(
    prob: _Problem,
    layers: Sequence[LayerData],
    fit: Fit,
    raw_blocks: Mapping[str, Fit],
    lora_deltas: Mapping[str, Mapping[str, np.ndarray]],
    elementwise: ElementwiseFinding | None,
) -> tuple[list[LoraFinding], bool]:
    """Library LoRAs the fit chose (their strength and rank), then an unknown LoRA: a low-rank
    residual; and whether any low-rank residual was found (it skews the blocks it touches)."""
    loras: list[LoraFinding] = []
    for k, c in enumerate(fit.columns):
        if c >= prob.n_model:
            lname = prob.lora_names[c - prob.n_model]
            sketches = lora_deltas[lname]
            ranks = [
                numerical_rank(_tail2d(np.asarray(sketches[la.key]), la.sketch2d))
                for la in layers
                if la.sketch2d is not None and la.key in sketches
            ]
            known = [r for r in ranks if r is not None]
            rank = max(set(known), key=known.count) if known else None
            s = float(fit.coef[k])
            loras.append(LoraFinding(lname, s, _ci(s, float(fit.cov[k, k])), rank, tuple(sketches)))
    if fit.unexplained <= LOWRANK_MIN_UNEXPLAINED:
        return loras, False
    # What each layer's own block fit leaves: a block-weighted merge of fine-tunes that carry
    # low-rank parts leaves a low-rank residual under the global weights, (w_block - w) x delta,
    # which is no LoRA (measured: full-size SDXL, 20 block weights, read as a weighted sum).
    residuals = {
        la.key: _tail2d(prob.residual(li, _layer_fit(raw_blocks, la.block, fit)), la.sketch2d)
        for li, la in enumerate(layers)
        if la.sketch2d is not None
    }
    scales = {la.key: float(np.linalg.norm(prob.ys[li])) for li, la in enumerate(layers)}
    low = detect_lowrank(residuals, scales, min_share=0.05)
    if low is not None and len(low.layers) >= LORA_MIN_LAYERS and (elementwise is None or elementwise.kind == "linear"):
        loras.append(LoraFinding(None, None, None, low.rank, low.layers))
    return loras, low is not None


def _component_fits(fitter: _Fitter, layers: Sequence[LayerData]) -> tuple[list[BlockFit], dict[str, list[int]]]:
    """Each component (UNet, text encoder, VAE) refitted on its own, and the references it is a copy of."""
    prob = fitter.prob
    components: list[BlockFit] = []
    comp_copies: dict[str, list[int]] = {}
    comp_of = np.array([layer.component for layer in layers])
    for comp in dict.fromkeys(comp_of.tolist()):
        mask = comp_of == comp
        ccopies, crel = _nearest_copy(layers, mask, len(fitter.names))
        comp_copies[comp] = ccopies
        ccols = forward_select(prob.grams.subset(mask), fitter.all_cols)
        bf, _ = _block_fit(prob, mask, ccols, comp, fitter.names, fitter.pivot)
        copy_name = fitter.names[int(np.argmin(crel))] if len(ccopies) == 1 else None
        components.append(BlockFit(comp, bf.weights, bf.unexplained, copy_name))
    return components, comp_copies


def _kind(
    fitter: _Fitter,
    fit: Fit,
    blocks: list[BlockFit],
    weights: list[Weight],
    comp_copies: dict[str, list[int]],
    elementwise: ElementwiseFinding | None,
    names: Sequence[str],
    base: int | None,
    *,
    best: int,
    exact: bool,
    near: bool,
    lora_only: bool,
    low: bool,
) -> tuple[str, str | None, list[Weight]]:
    """(kind, the reference it is a copy of, the weights shown), first match wins. ``low``: a
    low-rank residual was found."""
    if lora_only and not exact:  # a LoRA baked into one model: near-copy of it plus the LoRA
        return "lora", names[best] if near else None, weights
    if exact or near:
        copy_of = names[best]
        if exact:
            return "copy", copy_of, [Weight(copy_of, 1.0, (1.0, 1.0))]
        return "copy", copy_of, [w for w in weights if w.reference == copy_of] or [Weight(copy_of, 1.0, (1.0, 1.0))]
    if (
        len(comp_copies) >= 2
        and all(comp_copies.values())
        and not set.intersection(*(set(v) for v in comp_copies.values()))
    ):
        return "component_swap", None, weights
    if elementwise is not None and elementwise.kind in ("ties", "dare", "dare_ties"):
        return ("ties" if elementwise.kind == "ties" else "dare"), None, weights
    if lora_only:
        return "lora", None, weights
    if not any(c < fitter.prob.n_model for c in fit.columns) and fit.unexplained > UNKNOWN_SHARE:
        return "unknown", None, weights
    if not low and _is_block_weighted(blocks, weights):  # a LoRA skews the blocks it touches
        return "block_weighted", None, weights
    if any(w.weight < -ADD_DIFF_NEGATIVE and w.ci95[1] < 0 for w in weights):
        return "add_difference", None, weights
    if parent := _finetune_parent(weights, names[base] if base is not None else None, fit.unexplained):
        return "finetune", None, [w for w in weights if w.reference == parent]
    return "weighted_sum", None, weights
