"""A recipe in the words users use: notation, a ten-second summary, and the JSON ``recipe``.

Notation follows what merge UIs print: ``0.65 x A + 0.35 x B`` for a weighted sum,
``A + 0.7 x (B - C)`` for add difference, ``TIES(A, B; k=0.3) on base`` for element-wise merges.

>>> from sdforensics.recipe.results import Weight
>>> linear_text([Weight("A", 1.0, (1, 1)), Weight("B", 0.7, (0.7, 0.7)), Weight("C", -0.7, (-0.7, -0.7))])
'A + 0.7 x (B - C)'
>>> linear_text([Weight("A", 0.652, (0.65, 0.654)), Weight("B", 0.348, (0.346, 0.35))])
'0.65 x A + 0.35 x B'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sdforensics.core.safetext import percent
from sdforensics.recipe.results import LEFT_OUT_OF_FIT, RecipeEstimate, Weight

#: unexplained share from which the summary says an unknown ingredient is likely
UNKNOWN_LIKELY = 0.3

_PARTS = {"unet": "UNet", "text_encoder": "text encoder", "vae": "VAE"}


def fmt_weight(w: float, half_width: float = 0.0) -> str:
    """A weight rounded to what its interval supports (2 decimals, 1 when +-0.05 or worse)."""
    digits = 1 if half_width >= 0.05 else 2
    text = f"{w:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _term(w: float, name: str, half: float) -> str:
    text = fmt_weight(w, half)
    return name if text == "1" else f"{text} x {name}"


def linear_text(weights: Sequence[Weight]) -> str:
    """Affine weights as users write them; negative weights pair with positive ones as differences."""
    half = {w.reference: (w.ci95[1] - w.ci95[0]) / 2 for w in weights}
    rem = {w.reference: w.weight for w in weights if abs(w.weight) >= 0.005}
    pos = sorted((r for r, v in rem.items() if v > 0), key=lambda r: -rem[r])
    neg = sorted((r for r, v in rem.items() if v < 0), key=lambda r: rem[r])
    anchor = pos[0] if pos else None
    diffs: list[str] = []
    for c in neg:
        m = -rem[c]
        cands = [r for r in pos if r != anchor and rem[r] > 0.005] or ([anchor] if anchor else [])
        if not cands:
            continue
        b = min(cands, key=lambda r: abs(rem[r] - m))
        take = min(m, rem[b]) if b != anchor else m
        diffs.append(f"{fmt_weight(take, half[c])} x ({b} - {c})")
        rem[b] -= take
        rem[c] += take
    parts = [_term(rem[r], r, half[r]) for r in pos if rem[r] >= 0.005]
    text = " + ".join(parts + diffs) if parts or diffs else "(nothing)"
    for r in neg:
        if rem[r] <= -0.005:
            text += f" - {_term(-rem[r], r, half[r])}"
    for r in pos:
        if rem[r] <= -0.005:
            text += f" - {_term(-rem[r], r, half[r])}"
    return text


def recipe_text(est: RecipeEstimate) -> str:
    """One line: the recipe in the notation users paste into merge tools."""
    ew = est.elementwise
    if est.kind == "copy":
        text = f"{est.copy_of} (a copy)"
    elif est.kind == "component_swap":
        text = " + ".join(f"{_PARTS.get(c.block, c.block)} of {c.copy_of or '?'}" for c in est.components)
    elif est.kind in ("ties", "dare") and ew is not None:
        ings = ", ".join(ew.ingredients)
        if ew.kind == "ties":
            extra = f"k={ew.density:.2f}" + (f", alpha={ew.scale:.2f}" if ew.scale is not None else "")
            extra += ", sign by magnitude" if ew.sign_vote == "magnitude" else ""
            text = f"TIES({ings}; {extra}) on {est.pivot}"
        else:
            label = "DARE" if ew.kind == "dare" else "DARE-TIES"
            text = f"{label}({ings}; p={ew.drop_rate:.2f}) on {est.pivot}"
    elif est.kind == "block_weighted" and est.supermerger is not None:
        sm = est.supermerger
        m = sm.models
        formula = f"(1-alpha) x {m[0]} + alpha x {m[1]}" if len(m) == 2 else f"{m[0]} + alpha x ({m[1]} - {m[2]})"
        text = f"{formula}, alpha per block ({sm.blocks[0]}..{sm.blocks[-1]}, {len(sm.blocks)} blocks) = {sm.text}"
    elif est.kind == "block_weighted":
        text = "block-weighted: " + linear_text(est.weights)
    elif est.kind == "finetune":
        text = f"{est.weights[0].reference} + further training"
    elif est.kind == "unknown_method" and est.method is not None:
        ings = ", ".join(est.method.ingredients)
        text = f"unknown method of {ings} (linear approximation: {linear_text(est.weights)})"
    elif est.method is not None and est.method.name == "train_difference":
        a, b, c = est.method.ingredients
        text = f"{a} + train difference({b} - {c}) x {dict(est.method.parameters)['alpha']:.2f}"
    elif est.kind == "unknown":
        known = [w for w in est.weights if abs(w.weight) > 0.02]
        text = (linear_text(known) + " + unknown changes") if known else "unknown (nothing in the library explains it)"
    else:
        text = linear_text(est.weights)
    for lo in est.loras:
        if lo.reference is not None and lo.strength is not None:
            text += f" + LoRA {lo.reference} x {lo.strength:.2f}"
        elif lo.reference is None:
            text += f" + unknown LoRA (rank {lo.rank}, {len(lo.layers)} layers)"
    return text


def named_with_copies(est: RecipeEstimate, reference: str) -> str:
    """``reference``, followed by the library references that are the same model:
    ``ft1 (also: ft1_copy, ft1_fp16)``."""
    also = dict(est.groups).get(reference, ())
    if not also:
        return reference
    shown = ", ".join(also[:6]) + (f" and {len(also) - 6} more" if len(also) > 6 else "")
    return f"{reference} (also: {shown})"


CONFIDENT_UNEXPLAINED = 0.1
"""Unexplained share (under the recognised method) below which an answer can be called high confidence."""


def confidence(est: RecipeEstimate) -> tuple[str, str]:
    """(level, reason) for the answer as a whole: the weights' intervals, and how much of the model the
    answer explains (a tight weight beside "100% unexplained" is not a sure answer)."""
    halves = [(w.ci95[1] - w.ci95[0]) / 2 for w in est.weights]
    h = max(halves) if halves else 0.0
    level = "high" if h < 0.02 else "medium" if h < 0.06 else "low"
    reason = f"weights +-{max(h, 0.005):.2f} at 95%"
    u = est.unexplained
    if est.kind == "unknown":
        return "low", f"nothing in the library explains {percent(u)} of the change from {est.pivot}"
    if est.kind == "unknown_method":
        return "medium", "ingredients certain, merge method not recognised; the weights are a linear approximation"
    if est.kind == "finetune":
        return level, f"{reason}; the parent is sure, the further training is not in the library"
    if u >= UNKNOWN_LIKELY:
        return "low", f"{reason}, but the library explains only {percent(max(0.0, 1.0 - u))} of the change"
    if est.method is not None and est.method.family == "model_stock" and est.method.unexplained is not None:
        return ("medium" if level == "high" else level), (
            f"{reason}; model stock's ratio changes vector by vector, the weights are its typical value"
        )
    if u >= CONFIDENT_UNEXPLAINED and level == "high":
        return "medium", f"{reason}; {percent(u)} unexplained"
    return level, reason


def _confidence(est: RecipeEstimate) -> str:
    level, reason = confidence(est)
    return f"How sure: {level} confidence ({reason})."


def summarize(est: RecipeEstimate) -> list[str]:
    """A terminal summary a user reads in ten seconds: what, made of what, how sure, what is left."""
    kinds = {
        "copy": "a copy (re-save) of a library model",
        "weighted_sum": "a weighted-sum merge",
        "finetune": "a fine-tune of a library model: one parent plus further training",
        "add_difference": "an add-difference merge",
        "block_weighted": "a block-weighted merge",
        "component_swap": "a component swap (parts taken whole from different models)",
        "ties": "a TIES merge",
        "dare": "a DARE merge",
        "lora": "a model with a LoRA baked in",
        "unknown_method": "ingredients known, merge method not recognised",
        "unknown": "not explained by the library",
    }
    lines = [f"Recipe: {recipe_text(est)}  ({kinds.get(est.kind, est.kind)})"]
    if est.kind == "component_swap":
        parts = ", ".join(f"{_PARTS.get(c.block, c.block)} = {c.copy_of or '?'}" for c in est.components)
        lines.append(f"Made of: {parts} (each part a copy; one set of weights cannot describe a swap)")
    else:
        made = ", ".join(
            f"{named_with_copies(est, w.reference)} {w.weight:.2f} [{w.ci95[0]:.2f}, {w.ci95[1]:.2f}]"
            for w in est.weights
        )
        base = "" if est.base is None else f" (weights sum to 1; family base: {est.base})"
        lines.append(f"Made of: {made}{base}")
    lines.append(_confidence(est))
    if est.kind == "copy" and est.copy_of is not None and dict(est.groups).get(est.copy_of):
        lines.append(f"The same model is in the library as {named_with_copies(est, est.copy_of)}.")
    u = est.unexplained
    line = f"Unexplained: {percent(u)} of the difference from {est.pivot} is not accounted for by the library."
    m = est.method
    if m is not None and m.unexplained is not None and est.kind not in ("finetune", "unknown_method"):
        line = (f"Unexplained: {percent(u)} of the difference from {est.pivot} is not accounted for by the "
                f"recognised method ({m.name.replace('_', ' ')}).")
        if est.linear_unexplained is not None:
            line += f" A linear fit alone leaves {percent(est.linear_unexplained)}."
    elif est.kind == "unknown_method":
        line = (f"Unexplained by a linear fit: {percent(u)} of the difference from {est.pivot}; it follows from the "
                "ingredients' own values, so it is the merge method's doing, not an unknown ingredient.")
    elif est.kind == "finetune":
        line = (f"Further training: {percent(u)} of the difference from {est.pivot} is the fine-tune's own change "
                f"on top of {est.weights[0].reference}, which the library does not hold.")
    elif u >= UNKNOWN_LIKELY:
        line += " An unknown ingredient is likely (a model not in the library, or further training)."
    elif u >= 0.1:
        line += " Some further training or a small unknown ingredient."
    if line:
        lines.append(line)
    if m is not None and m.note:
        lines.append(f"Method: {m.note}.")
    lines += [f"Left out: {n}." for n in est.notes if n.endswith(LEFT_OUT_OF_FIT)]
    for g in est.ambiguous:
        lines.append(
            f"Ambiguous: {' and '.join(g.references)} are nearly collinear (delta cosine {g.cosine:.2f}); "
            f"their split is uncertain, together {g.weight:.2f} [{g.ci95[0]:.2f}, {g.ci95[1]:.2f}]."
        )
    if est.supermerger is not None:
        sm = est.supermerger
        alpha_of = sm.models[-2 if len(sm.models) == 3 else 1]
        lines.append(f"Block weights ({est.block_convention}): alpha of {alpha_of} = {sm.text}")
    ew = est.elementwise
    if ew is not None and ew.kind != "linear":
        lines.append(
            f"Element-wise evidence: {ew.equal_fraction:.0%} of moved coordinates stayed exactly at the base "
            f"({ew.n_samples} samples)."
        )
    for c in est.components:
        if c.copy_of is not None and est.kind != "copy":
            lines.append(f"The {_PARTS.get(c.block, c.block)} is {c.copy_of}'s.")
    for lo in est.loras:
        if lo.reference is None:
            lines.append(f"A LoRA of rank {lo.rank} not in the library seems baked into {len(lo.layers)} layers.")
    return lines


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def recipe_to_json(est: RecipeEstimate) -> dict[str, Any]:
    """The DESIGN.md ``recipe`` object (plus ambiguity, per-block unexplained, SuperMerger weights)."""
    out: dict[str, Any] = {
        "kind": est.kind,
        "components": [
            {"reference": w.reference, "weight": _r(w.weight), "ci95": [_r(w.ci95[0]), _r(w.ci95[1])],
             "also": list(dict(est.groups).get(w.reference, ()))}
            for w in est.weights
        ],
        "groups": [{"reference": r, "also": list(also)} for r, also in est.groups],
        "blocks": {b.block: [{"reference": r, "weight": _r(w)} for r, w, _ in b.weights] for b in est.blocks},
        "unexplained": _r(est.unexplained),
        "text": recipe_text(est),
        "loras": [
            {
                "reference": lo.reference,
                "strength": _r(lo.strength),
                "ci95": None if lo.ci95 is None else [_r(lo.ci95[0]), _r(lo.ci95[1])],
                "rank": lo.rank,
                "layers": list(lo.layers),
            }
            for lo in est.loras
        ],
        "pivot": est.pivot,
        "base": est.base,
        "copy_of": est.copy_of,
        "block_convention": est.block_convention,
        "block_unexplained": {b.block: _r(b.unexplained) for b in est.blocks},
        "ambiguous": [
            {
                "references": list(g.references),
                "weight": _r(g.weight),
                "ci95": [_r(g.ci95[0]), _r(g.ci95[1])],
                "cosine": _r(g.cosine),
            }
            for g in est.ambiguous
        ],
        "parts": {
            c.block: {
                "weights": [{"reference": r, "weight": _r(w)} for r, w, _ in c.weights],
                "unexplained": _r(c.unexplained),
                "copy_of": c.copy_of,
            }
            for c in est.components
        },
        "supermerger_weights": None,
        "elementwise": None,
        "summary": summarize(est),
        "confidence": {"level": confidence(est)[0], "reason": confidence(est)[1]},
        "linear_unexplained": _r(est.linear_unexplained),
        "method": None
        if est.method is None
        else {
            "name": est.method.name,
            "family": est.method.family,
            "parameters": {k: _r(v) for k, v in est.method.parameters},
            "ingredients": list(est.method.ingredients),
            "unexplained": _r(est.method.unexplained),
            "alternatives": list(est.method.alternatives),
            "note": est.method.note,
        },
        "notes": list(est.notes),
    }
    if est.supermerger is not None:
        sm = est.supermerger
        out["supermerger_weights"] = {
            "formula": sm.formula,
            "models": list(sm.models),
            "blocks": list(sm.blocks),
            "alphas": list(sm.alphas),
            "text": sm.text,
            "undetermined": list(sm.undetermined),
        }
    if est.elementwise is not None:
        ew = est.elementwise
        out["elementwise"] = {
            "kind": ew.kind,
            "ingredients": list(ew.ingredients),
            "density": _r(ew.density),
            "drop_rate": _r(ew.drop_rate),
            "scale": _r(ew.scale),
            "equal_fraction": _r(ew.equal_fraction),
            "magnitude_auc": _r(ew.magnitude_auc),
            "n_samples": ew.n_samples,
        }
    return out
