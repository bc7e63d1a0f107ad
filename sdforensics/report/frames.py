"""pandas DataFrames of an :class:`~sdforensics.analysis.Analysis`, for notebooks.

Every frame is built from the analysis' typed fields, rounded as the ``sdforensics.analysis/1``
JSON prints them, so a frame shows what the JSON and the HTML report show. A stage that did
not run (no library, no recipe) gives an empty frame with the usual columns, never an error.

>>> from sdforensics.report.frames import recipe_frame              # doctest: +SKIP
>>> recipe_frame(analysis)                                    # doctest: +SKIP
           weight  ci95_low  ci95_high
reference
ft1        0.4999    0.4999     0.5000
ft2        0.3000    0.3000     0.3001
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from sdforensics.model.architecture import block_map_of
from sdforensics.report.tensor_table import tensor_rows

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis


def _num(x: float | None, digits: int = 6) -> float:
    """A value as the JSON document prints it (rounded), NaN for None / non-finite."""
    if x is None or not math.isfinite(x):
        return math.nan
    return round(float(x), digits)


def recipe_frame(a: Analysis) -> pd.DataFrame:
    """One row per ingredient: affine ``weight`` and its 95% interval (``ci95_low``, ``ci95_high``)."""
    rows = [
        {"reference": w.reference, "weight": _num(w.weight), "ci95_low": _num(w.ci95[0]), "ci95_high": _num(w.ci95[1])}
        for w in (a.recipe.weights if a.recipe is not None else ())
    ]
    frame = pd.DataFrame(rows, columns=["reference", "weight", "ci95_low", "ci95_high"])
    return frame.set_index("reference")


def block_order(a: Analysis, blocks: list[str]) -> list[str]:
    """``blocks`` in merge-block order (BASE, IN.., M00, OUT.., VAE); unknown ids last."""
    ids = block_map_of(a.architecture.name or a.architecture.family).ids
    rank = {b: i for i, b in enumerate(ids)}
    return sorted(blocks, key=lambda b: (rank.get(b, len(rank)), b))


def blocks_frame(a: Analysis) -> pd.DataFrame:
    """Per merge block: the weight of each ingredient (columns) and the ``unexplained`` share.

    A weight is NaN where the reference does not differ from the pivot in that block, so its
    share there cannot be seen.
    """
    fits = {b.block: b for b in (a.recipe.blocks if a.recipe is not None else ())}
    refs: list[str] = []
    for fit in fits.values():
        for name, _, _ in fit.weights:
            if name not in refs:
                refs.append(name)
    order = block_order(a, list(fits))
    data = {
        b: {**{name: _num(w) for name, w, _ in fits[b].weights}, "unexplained": _num(fits[b].unexplained)}
        for b in order
    }
    frame = pd.DataFrame.from_dict(data, orient="index", columns=[*refs, "unexplained"])
    frame.index.name = "block"
    return frame.astype(float)


def similarity_frame(a: Analysis) -> pd.DataFrame:
    """One row per reference: overall delta cosine (from the family base), raw cosine, and the
    estimated weight (NaN when the reference is not an ingredient); ``is_base`` marks the base.
    Sorted by delta cosine, most similar first.
    """
    sim = a.similarity
    weights = recipe_frame(a)["weight"]
    rows = []
    for j, name in enumerate(sim.references if sim is not None else ()):
        assert sim is not None
        rows.append({"reference": name, "delta_cosine": _num(sim.overall_delta[j], 4),
                     "raw_cosine": _num(sim.overall_raw[j], 4), "is_base": name == sim.base,
                     "weight": float(weights[name]) if name in weights.index else math.nan})
    frame = pd.DataFrame(rows, columns=["reference", "delta_cosine", "raw_cosine", "is_base", "weight"])
    frame = frame.sort_values("delta_cosine", ascending=False, na_position="last", kind="stable")
    return frame.set_index("reference")


def block_similarity_frame(a: Analysis) -> pd.DataFrame:
    """Per merge block (rows) and reference (columns): delta cosine from the family base."""
    sim = a.similarity
    if sim is None:
        return pd.DataFrame({}, index=pd.Index([], name="block"), dtype=float)
    order = block_order(a, list(sim.blocks))
    row = {b: i for i, b in enumerate(sim.blocks)}
    data = {name: [_num(sim.block_delta[row[b], j], 4) for b in order] for j, name in enumerate(sim.references)}
    return pd.DataFrame(data, index=pd.Index(order, name="block"), dtype=float)


def layers_frame(a: Analysis) -> pd.DataFrame:
    """One row per tensor (file order, canonical names): shape, dtype, size, component, block."""
    rows = [
        {"tensor": r.name, "shape": r.shape_text, "dtype": r.dtype, "numel": r.numel, "bytes": r.nbytes,
         "component": r.component, "block": r.block}
        for r in tensor_rows(a)
    ]
    frame = pd.DataFrame(rows, columns=["tensor", "shape", "dtype", "numel", "bytes", "component", "block"])
    return frame.set_index("tensor")
