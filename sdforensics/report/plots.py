"""matplotlib figures of an analysis: recipe, per-block recipe, similarity, unexplained share.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
figure state, no GUI backend, nothing is shown); save it with ``fig.savefig(...)`` or let
Jupyter display it. A stage that did not run gives a small figure that says so.

Names come from files and libraries, so text is never interpreted as mathtext (``$`` is
escaped) and TeX is off.

>>> from sdforensics.report.plots import recipe_figure                 # doctest: +SKIP
>>> recipe_figure(analysis).savefig("recipe.png")               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sdforensics.core.safetext import percent
from sdforensics.report.frames import block_similarity_frame, blocks_frame, recipe_frame

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis

RC = {"text.usetex": False, "svg.fonttype": "path", "svg.hashsalt": "sdforensics", "font.size": 9.0}
COLORS = ("#3b6ea8", "#e08a2c", "#4f9a5b", "#c0504d", "#8064a2", "#4bacc6", "#9b7b4f", "#d36fb0",
          "#7f7f7f", "#b5b33b")


def _rc() -> Any:
    """Our rc settings (TeX off, SVG text as paths) for the duration of a ``with`` block."""
    return matplotlib.rc_context(RC)  # type: ignore[arg-type]


def plain(text: object, limit: int = 40) -> str:
    """``text`` safe for a matplotlib label: control characters shown, cut, ``$`` escaped."""
    from sdforensics.core.safetext import printable

    s = printable(str(text), None)
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return s.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    with _rc():
        fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _note(text: str) -> Figure:
    with _rc():
        fig = _figure(6, 1.2)
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, plain(text, 200), ha="center", va="center", color="#555555")
    return fig


def palette(a: Analysis, names: Sequence[str] = ()) -> dict[str, str]:
    """A colour per reference, the same in every figure and every report: picked by a hash of the
    name (ingredients first, then ``names``); a name whose colour is already taken in this report
    takes the next free one."""
    import hashlib

    order = list(dict.fromkeys([*recipe_frame(a).index, *names]))
    taken: set[int] = set()
    out = {}
    for name in order:
        i = int.from_bytes(hashlib.sha256(str(name).encode("utf-8")).digest()[:4], "big") % len(COLORS)
        for step in range(len(COLORS)):
            if (i + step) % len(COLORS) not in taken:
                i = (i + step) % len(COLORS)
                break
        taken.add(i)
        if len(taken) == len(COLORS):
            taken.clear()
        out[name] = COLORS[i]
    return out


def recipe_figure(a: Analysis) -> Figure:
    """Horizontal bars: each ingredient's affine weight with its 95% interval."""
    frame = recipe_frame(a)
    if frame.empty:
        return _note("no recipe estimated (no references of this family in the library)")
    with _rc():
        fig = _figure(6.4, 0.9 + 0.38 * len(frame))
        ax = fig.add_subplot()
        y = np.arange(len(frame))[::-1]
        w = frame["weight"].to_numpy(float)
        lo = np.nan_to_num(w - frame["ci95_low"].to_numpy(float))
        hi = np.nan_to_num(frame["ci95_high"].to_numpy(float) - w)
        colors = [palette(a)[r] for r in frame.index]
        ax.barh(y, w, color=colors, height=0.6, xerr=np.vstack([np.abs(lo), np.abs(hi)]),
                error_kw={"ecolor": "#222222", "capsize": 4, "elinewidth": 1.2})
        ax.set_yticks(y, labels=[plain(r) for r in frame.index])
        ax.axvline(0, color="#444444", linewidth=0.8)
        for yi, wi in zip(y, w, strict=True):
            ax.annotate(f"{wi:.3f}", (wi, yi), xytext=(4 if wi >= 0 else -4, 7), textcoords="offset points",
                        ha="left" if wi >= 0 else "right", fontsize=8, color="#222222")
        ax.set_xlabel("affine weight (weights sum to 1); error bars: 95% interval")
        ax.set_title("Weight of each ingredient, with its 95% interval", loc="left")  # the recipe is above it
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(min(0.0, float(np.nanmin(w - lo))) - 0.05, max(1.0, float(np.nanmax(w + hi))) + 0.1)
    return fig


def blocks_figure(a: Analysis) -> Figure:
    """Stacked bars per merge block: each ingredient's weight there (negative weights below 0)."""
    frame = blocks_frame(a).drop(columns="unexplained")
    frame = frame.loc[:, (frame.abs() >= 0.01).any(axis=0)]  # a pivot at ~0 everywhere adds nothing
    if frame.empty or frame.shape[1] == 0:
        return _note("no per-block recipe (no recipe estimated)")
    with _rc():
        fig = _figure(max(6.4, 0.3 * len(frame) + 2.2), 3.4)
        ax = fig.add_subplot()
        x = np.arange(len(frame))
        pos = np.zeros(len(frame))
        neg = np.zeros(len(frame))
        colors = palette(a, list(frame.columns))
        for ref in frame.columns:
            w = np.nan_to_num(frame[ref].to_numpy(float))
            bottom = np.where(w >= 0, pos, neg)
            ax.bar(x, w, bottom=bottom, width=0.8, color=colors[ref], label=plain(ref),
                   edgecolor="white", linewidth=0.4)
            pos += np.where(w >= 0, w, 0)
            neg += np.where(w < 0, w, 0)
        ax.axhline(0, color="#444444", linewidth=0.8)
        ax.axhline(1, color="#999999", linewidth=0.6, linestyle=":")
        ax.set_xticks(x, labels=[plain(b, 12) for b in frame.index], rotation=90, fontsize=8)
        ax.set_xlim(-0.6, len(frame) - 0.4)
        ax.set_ylabel("weight in block")
        ax.set_title("Recipe per merge block", loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    return fig


def similarity_figure(a: Analysis, max_references: int = 15) -> Figure:
    """Heatmap: delta cosine (from the family base) of each reference, per merge block."""
    frame = block_similarity_frame(a)
    frame = frame.loc[:, frame.notna().any(axis=0)] if not frame.empty else frame
    if frame.empty or frame.shape[1] == 0:
        return _note("no similarity computed (no references of this family, or no family base)")
    order = frame.mean(axis=0, skipna=True).sort_values(ascending=False).index[:max_references]
    frame = frame[order]
    data = frame.to_numpy(float).T  # references x blocks
    with _rc():
        fig = _figure(max(6.4, 0.42 * frame.shape[0] + 2.6), 1.2 + 0.42 * frame.shape[1])
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-1, vmax=1, aspect="auto",
                       interpolation="nearest")
        ax.set_xticks(np.arange(frame.shape[0]), labels=[plain(b, 12) for b in frame.index], rotation=90,
                      fontsize=8)
        ax.set_yticks(np.arange(frame.shape[1]), labels=[plain(r) for r in frame.columns])
        if data.size <= 600:
            for (i, j), v in np.ndenumerate(data):
                if np.isfinite(v):
                    label = f"{v:.2f}".replace("0.", ".").replace("-.00", ".00")  # no "-0"
                    ax.text(j, i, label, ha="center", va="center", fontsize=8,
                            color="white" if abs(v) > 0.6 else "#222222")
        fig.colorbar(im, ax=ax, label="delta cosine", shrink=0.9)
        ax.set_title("Similarity to each reference per block (cosine of deltas from the base)", loc="left")
    return fig


def unexplained_figure(a: Analysis) -> Figure:
    """Bars per merge block: the share of the change from the base no reference accounts for."""
    frame = blocks_frame(a)
    series = frame["unexplained"].dropna() if "unexplained" in frame else frame.iloc[:, :0]
    if len(series) == 0:
        return _note("no unexplained share (no recipe estimated)")
    overall = a.recipe.unexplained if a.recipe is not None else None
    values = series.to_numpy(float)
    with _rc():
        fig = _figure(max(6.4, 0.3 * len(series) + 1.6), 2.8)
        ax = fig.add_subplot()
        x = np.arange(len(series))
        colors = ["#c0504d" if v >= 0.5 else "#e08a2c" if v >= 0.2 else "#3b6ea8" for v in values]
        ax.bar(x, values * 100, color=colors, width=0.8)
        if isinstance(overall, int | float):
            ax.axhline(float(overall) * 100, color="#222222", linestyle="--", linewidth=0.9,
                       label=f"whole model {percent(float(overall))}")
            ax.legend(loc="upper right", fontsize=8, frameon=False)
        ax.set_xticks(x, labels=[plain(b, 12) for b in series.index], rotation=90, fontsize=8)
        ax.set_xlim(-0.6, len(series) - 0.4)
        peak = max(float(np.nanmax(values)), float(overall) if isinstance(overall, int | float) else 0.0)
        ax.set_ylim(0, max(peak * 100 * 1.25, 0.05))  # scaled to the data: bars of 0.1% stay visible
        ax.set_ylabel("unexplained (%)")
        ax.set_title("Unexplained share per block (further training or an unknown ingredient)", loc="left")
        ax.grid(axis="y", alpha=0.3)
    return fig


def matrix_figure(matrix: Any, labels: Sequence[str], cluster: bool = True,
                  title: str = "Delta cosine between models", vmin: float = -1.0) -> Figure:
    """Heatmap of a square similarity ``matrix`` (e.g. pairwise delta cosines), optionally
    reordered by average-linkage hierarchical clustering with its dendrogram on top.
    """
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    m = np.asarray(matrix, dtype=float)
    n = len(labels)
    if m.shape != (n, n):
        raise ValueError(f"matrix is {m.shape}, labels give {n} models")
    order = np.arange(n)
    with _rc():
        size = max(4.0, 0.45 * n + 2.4)
        fig = _figure(size + 1.0, size + (1.2 if cluster and n > 2 else 0.2))
        if cluster and n > 2:
            grid = fig.add_gridspec(2, 1, height_ratios=[1, 4])
            dax = fig.add_subplot(grid[0])
            ax = fig.add_subplot(grid[1])
            dist = np.clip(1.0 - np.nan_to_num((m + m.T) / 2, nan=0.0), 0.0, None)
            np.fill_diagonal(dist, 0.0)
            link = hierarchy.linkage(squareform(dist, checks=False), method="average")
            tree = hierarchy.dendrogram(link, ax=dax, no_labels=True, color_threshold=0,
                                        above_threshold_color="#555555")
            order = np.asarray(tree["leaves"])
            dax.axis("off")
        else:
            ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
        sub = m[np.ix_(order, order)]
        im = ax.imshow(np.ma.masked_invalid(sub), cmap=cmap, vmin=vmin, vmax=1, interpolation="nearest")
        names = [plain(labels[int(i)], 30) for i in order]
        ax.set_xticks(np.arange(n), labels=names, rotation=90)
        ax.set_yticks(np.arange(n), labels=names)
        if n <= 20:
            for (i, j), v in np.ndenumerate(sub):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 else "#222222")
        fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(plain(title, 100))
    return fig
