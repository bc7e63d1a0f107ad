"""pandas DataFrames of an :class:`~sdforensics.analysis.Analysis`, for notebooks.

Every frame is built from the analysis' JSON-ready fields (the ``sdforensics.analysis/1``
document), so a frame shows exactly what the JSON and the HTML report show. A stage that did
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
from typing import TYPE_CHECKING, Any

import pandas as pd

from sdforensics.model.architecture import block_maps

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis


def _num(x: Any) -> float:
    """JSON number or null -> float (NaN for null / non-numbers)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return math.nan
    return float(x)


def _recipe(a: Analysis) -> dict[str, Any]:
    r = a.extras.get("recipe")
    return r if isinstance(r, dict) else {}


def _similarity(a: Analysis) -> dict[str, Any]:
    s = a.extras.get("similarity")
    return s if isinstance(s, dict) else {}


def recipe_frame(a: Analysis) -> pd.DataFrame:
    """One row per ingredient: affine ``weight`` and its 95% interval (``ci95_low``, ``ci95_high``)."""
    rows = []
    for c in _recipe(a).get("components") or []:
        ci = c.get("ci95") or [None, None]
        rows.append({"reference": str(c.get("reference")), "weight": _num(c.get("weight")),
                     "ci95_low": _num(ci[0]), "ci95_high": _num(ci[1])})
    frame = pd.DataFrame(rows, columns=["reference", "weight", "ci95_low", "ci95_high"])
    return frame.set_index("reference")


def block_order(a: Analysis, blocks: list[str]) -> list[str]:
    """``blocks`` in merge-block order (BASE, IN.., M00, OUT.., VAE); unknown ids last."""
    family = a.architecture.family
    ids = block_maps()["sdxl" if family == "sdxl" else "sd1"].ids
    rank = {b: i for i, b in enumerate(ids)}
    return sorted(blocks, key=lambda b: (rank.get(b, len(rank)), b))


def blocks_frame(a: Analysis) -> pd.DataFrame:
    """Per merge block: the weight of each ingredient (columns) and the ``unexplained`` share.

    A weight is NaN where the reference does not differ from the pivot in that block, so its
    share there cannot be seen.
    """
    r = _recipe(a)
    blocks: dict[str, list[dict[str, Any]]] = r.get("blocks") or {}
    unexplained: dict[str, Any] = r.get("block_unexplained") or {}
    refs: list[str] = []
    for entries in blocks.values():
        for e in entries:
            name = str(e.get("reference"))
            if name not in refs:
                refs.append(name)
    order = block_order(a, list(dict.fromkeys([*blocks, *unexplained])))
    data = {
        b: {**{str(e.get("reference")): _num(e.get("weight")) for e in blocks.get(b, [])},
            "unexplained": _num(unexplained.get(b))}
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
    sim = _similarity(a)
    weights = recipe_frame(a)["weight"]
    rows = []
    for ref in sim.get("references") or []:
        name = str(ref.get("reference"))
        rows.append({"reference": name, "delta_cosine": _num(ref.get("delta_cosine")),
                     "raw_cosine": _num(ref.get("raw_cosine")), "is_base": name == sim.get("base"),
                     "weight": float(weights[name]) if name in weights.index else math.nan})
    frame = pd.DataFrame(rows, columns=["reference", "delta_cosine", "raw_cosine", "is_base", "weight"])
    frame = frame.sort_values("delta_cosine", ascending=False, na_position="last", kind="stable")
    return frame.set_index("reference")


def block_similarity_frame(a: Analysis) -> pd.DataFrame:
    """Per merge block (rows) and reference (columns): delta cosine from the family base."""
    refs = _similarity(a).get("references") or []
    blocks: list[str] = []
    for ref in refs:
        blocks.extend(b for b in (ref.get("blocks") or {}) if b not in blocks)
    order = block_order(a, blocks)
    data = {
        str(ref.get("reference")): [_num((ref.get("blocks") or {}).get(b)) for b in order] for ref in refs
    }
    return pd.DataFrame(data, index=pd.Index(order, name="block"), dtype=float)


def layers_frame(a: Analysis) -> pd.DataFrame:
    """One row per tensor (file order, canonical names): shape, dtype, size, component, block."""
    family = a.architecture.family
    bmap = block_maps()["sdxl" if family == "sdxl" else "sd1"]
    arch = None
    if a.architecture.name:
        from sdforensics.model.architecture import architecture

        try:
            arch = architecture(a.architecture.name)
        except KeyError:
            arch = None
    rows = []
    for info in a.layout.infos:
        rows.append({
            "tensor": info.name,
            "shape": "x".join(str(d) for d in info.shape) or "scalar",
            "dtype": info.dtype,
            "numel": info.numel,
            "bytes": info.nbytes,
            "component": arch.component_of(info.name) if arch else None,
            "block": bmap.block_of(info.name) if family else None,
        })
    frame = pd.DataFrame(rows, columns=["tensor", "shape", "dtype", "numel", "bytes", "component", "block"])
    return frame.set_index("tensor")
