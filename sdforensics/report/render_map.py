"""``sdf map`` output: JSON, Graphviz DOT, text, and one self-contained HTML page.

The HTML page holds an inline SVG graph laid out here (layered by generation: roots on top, each
model one layer below its deepest parent; wide layers wrap), the clustered heatmap of the changes'
similarity with its dendrogram (a PNG data URI: its size is bounded by pixels, not by the number of
pairs), and the table of models with their recipes (folded past :data:`TABLE_ROWS`). No script, no
network; a Content-Security-Policy forbids both. Every name goes through :func:`_e` (names are
hostile: control characters shown, then HTML-escaped); DOT strings through :func:`dot_string`.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from sdforensics.core import json_out
from sdforensics.core.safetext import percent, printable
from sdforensics.report.render_html import CSS

if TYPE_CHECKING:
    from sdforensics.collection.lineage import CollectionMap, MapEdge

TABLE_ROWS = 200
"""Models listed before the rest of the table is folded."""
PER_ROW = 10
"""Nodes per row of a graph layer (wider layers wrap)."""
NODE_W, NODE_H, GAP_X, GAP_Y = 170, 34, 26, 64
EDGE_LABELS = 150
DENSE = 150
"""From this many edges they are drawn thin and light (hover one for its weight and confidence)."""
"""Merge weights are written on the edges up to this many edges."""
COLORS = {"finetune": "#3b6ea8", "lora": "#8064a2", "merge": "#e08a2c", "copy": "#7f7f7f", "component": "#4f9a5b"}
FILL = {"base": "#1d2330", "root": "#dbe7f6", "finetune": "#eef3fa", "lora": "#efe9f6", "merge": "#fdf0e1",
        "copy": "#eeeeee", "swap": "#e6f2e8"}


def _e(value: object, limit: int | None = 300) -> str:
    return html.escape(printable(str(value), limit), quote=True)


def _short(name: str, n: int = 22) -> str:
    s = printable(name, None)
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def map_to_json(m: CollectionMap) -> str:
    return json_out.dumps(m.to_json(), indent=1)


# --------------------------------------------------------------------------- DOT


def dot_string(*lines: object) -> str:
    """A DOT double-quoted string of ``lines``: control characters shown, backslashes and quotes
    escaped, lines joined by DOT's ``\\n``."""
    esc = [printable(str(v), 300).replace("\\", "\\\\").replace('"', '\\"') for v in lines]
    return '"' + "\\n".join(esc) + '"'


def map_to_dot(m: CollectionMap) -> str:
    lines = ["digraph sdf_map {", '  rankdir="TB";', '  node [shape=box, style="rounded,filled", fontsize=10];']
    for n in m.nodes:
        what = n.kind if n.unexplained is None else f"{n.kind}, unexplained {percent(n.unexplained)}"
        label = dot_string(n.name, what)
        lines.append(f"  {dot_string(n.name)} [label={label}, "
                     f'fillcolor="{FILL.get(n.kind, "#ffffff") if n.kind != "base" else "#cfd6e2"}", '
                     f'kind="{n.kind}"];')
    for e in m.edges:
        label = f"{e.weight:.2f}" if e.kind == "merge" else e.kind
        style = "dashed" if e.kind in ("copy", "component") else "solid"
        lines.append(f"  {dot_string(e.source)} -> {dot_string(e.target)} [label={dot_string(label)}, "
                     f'color="{COLORS.get(e.kind, "#555555")}", style={style}, kind="{e.kind}", '
                     f'weight_value="{e.weight:.4f}", confidence="{e.confidence:.3f}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- text


def map_to_text(m: CollectionMap) -> str:
    kinds = Counter(n.kind for n in m.nodes)
    lines = [f"{len(m.nodes)} models in {printable(m.library, 300)}; base {printable(str(m.base), 100)}: "
             + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))]
    for d in m.duplicates:
        lines.append(f"same model ({d.how}): " + ", ".join(printable(x, 100) for x in d.names))
    for n in m.nodes:
        u = "" if n.unexplained is None else f"  [unexplained {percent(n.unexplained)}]"
        lines.append(f"{printable(n.name, 100)}: {printable(n.recipe, 400)}{u}")
    lines += [f"note: {printable(x, 500)}" for x in m.notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- layout


def layout(m: CollectionMap) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Node centres (x, y) by layer (generation), ordered within a layer by their parents' mean x
    (one barycentre pass), wrapping at :data:`PER_ROW`; and the drawing's width and height."""
    layers: dict[int, list[str]] = defaultdict(list)
    for n in m.nodes:
        layers[n.generation].append(n.name)
    parents: dict[str, list[str]] = defaultdict(list)
    for e in m.edges:
        parents[e.target].append(e.source)
    pos: dict[str, tuple[float, float]] = {}
    y = 20.0 + NODE_H / 2
    width = 0.0
    for g in sorted(layers):
        names = layers[g]

        def key(name: str) -> tuple[float, str]:
            xs = [pos[p][0] for p in parents[name] if p in pos]
            return (sum(xs) / len(xs) if xs else -1.0, name)

        names.sort(key=key)
        for start in range(0, len(names), PER_ROW):
            row = names[start : start + PER_ROW]
            for k, name in enumerate(row):
                x = 20 + NODE_W / 2 + k * (NODE_W + GAP_X)
                pos[name] = (x, y)
                width = max(width, x + NODE_W / 2 + 20)
            y += NODE_H + (GAP_Y if start + PER_ROW >= len(names) else 22)
    return pos, max(width, 400.0), y


def graph_svg(m: CollectionMap) -> str:
    pos, width, height = layout(m)
    kind_of = {n.name: n for n in m.nodes}
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
           f"viewBox='0 0 {width:.0f} {height:.0f}' font-family='system-ui,sans-serif' font-size='11' role='img'>",
           "<defs>" + "".join(
               f"<marker id='arrow-{k}' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7' "
               f"orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='{c}'/></marker>"
               for k, c in COLORS.items()) + "</defs>"]
    labels = len(m.edges) <= EDGE_LABELS
    dense = len(m.edges) > DENSE
    for e in m.edges:
        if e.source not in pos or e.target not in pos:
            continue
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        y1 += NODE_H / 2 if y2 > y1 else -NODE_H / 2
        y2 += -NODE_H / 2 if y2 > y1 else NODE_H / 2
        color = COLORS.get(e.kind, "#555555")
        dash = " stroke-dasharray='4 3'" if e.kind in ("copy", "component") else ""
        conf = max(0.0, min(1.0, e.confidence))
        if dense:  # hundreds of edges: thin and light, so that the layers stay readable
            opacity, wdt = 0.12 + 0.3 * conf, 0.6 + (0.8 * min(1.0, abs(e.weight)) if e.kind == "merge" else 0.2)
        else:
            opacity, wdt = 0.35 + 0.65 * conf, 1.0 + (2.0 * min(1.0, abs(e.weight)) if e.kind == "merge" else 0.6)
        my = (y1 + y2) / 2
        out.append(f"<path d='M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} {x2:.1f},{y2:.1f}' "
                   f"fill='none' stroke='{color}' stroke-width='{wdt:.1f}' stroke-opacity='{opacity:.2f}'{dash} "
                   f"marker-end='url(#arrow-{e.kind if e.kind in COLORS else 'copy'})'>"
                   f"<title>{_e(e.source, 120)} \u2192 {_e(e.target, 120)}: {_e(_edge_words(e), 200)}</title></path>")
        if labels and e.kind == "merge":
            lx, ly = 0.3 * x1 + 0.7 * x2, 0.3 * y1 + 0.7 * y2
            out.append(f"<text x='{lx:.1f}' y='{ly:.1f}' fill='{color}' font-size='10' text-anchor='middle' "
                       f"paint-order='stroke' stroke='#ffffff' stroke-width='3'>{e.weight:+.2f}</text>")
    for name, (x, y) in pos.items():
        n = kind_of[name]
        fill = FILL.get(n.kind, "#ffffff")
        fg = "#ffffff" if n.kind == "base" else "#1d2330"
        u = "" if n.unexplained is None else f" \u00b7 {percent(n.unexplained)} unexpl."
        out.append(f"<g><title>{_e(name, 300)}: {_e(n.recipe, 400)}</title>"
                   f"<rect x='{x - NODE_W / 2:.1f}' y='{y - NODE_H / 2:.1f}' width='{NODE_W}' height='{NODE_H}' "
                   f"rx='6' fill='{fill}' stroke='#8a94a6'/>"
                   f"<text x='{x:.1f}' y='{y - 3:.1f}' text-anchor='middle' fill='{fg}' font-weight='600'>"
                   f"{_e(_short(name), 60)}</text>"
                   f"<text x='{x:.1f}' y='{y + 11:.1f}' text-anchor='middle' fill='{fg}' font-size='9.5'>"
                   f"{_e(n.kind + u, 60)}</text></g>")
    out.append("</svg>")
    return "".join(out)


def _edge_words(e: MapEdge) -> str:
    if e.kind == "merge":
        return f"merge weight {e.weight:.3f}, confidence {e.confidence:.2f}"
    return f"{e.kind}{' (' + e.note + ')' if e.note else ''}, confidence {e.confidence:.2f}"


# --------------------------------------------------------------------------- heatmap


def heatmap_png(m: CollectionMap) -> str | None:
    """The clustered heatmap with its dendrogram, as a PNG data URI (None: fewer than 2 models)."""
    n = len(m.names)
    if n < 2:
        return None
    import matplotlib
    from matplotlib.figure import Figure

    from sdforensics.report.plots import RC, plain

    order = list(m.order) if m.order else list(range(n))
    sub = np.asarray(m.cosine)[np.ix_(order, order)]
    side = float(np.clip(0.22 * n + 3.0, 6.0, 13.0))
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]
        fig = Figure(figsize=(side + 1.2, side + 1.6), layout="constrained")
        grid = fig.add_gridspec(2, 2, height_ratios=[1, 5], width_ratios=[30, 1])
        ax = fig.add_subplot(grid[1, 0])
        cax = fig.add_subplot(grid[1, 1])
        if m.linkage is not None:  # same column as the heatmap: the leaves sit above their columns
            from scipy.cluster import hierarchy

            dax = fig.add_subplot(grid[0, 0])
            with matplotlib.rc_context({"lines.linewidth": 1.0 if n <= 80 else 0.4}):
                hierarchy.dendrogram(m.linkage, ax=dax, no_labels=True, color_threshold=0,
                                     above_threshold_color="#555555")
            dax.set_xlim(0, 10 * n)
            dax.axis("off")
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#dddddd")
        im = ax.imshow(np.ma.masked_invalid(sub), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest",
                       aspect="auto")
        if n <= 80:
            labels = [plain(m.names[i], 28) for i in order]
            fs = 8 if n <= 40 else 5
            ax.set_xticks(np.arange(n), labels=labels, rotation=90, fontsize=fs)
            ax.set_yticks(np.arange(n), labels=labels, fontsize=fs)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"{n} models in dendrogram order (listed below)")
        fig.colorbar(im, cax=cax, label="cosine of changes from the base")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90 if n > 80 else 100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- page


def _table(m: CollectionMap) -> str:
    parents: dict[str, list[MapEdge]] = defaultdict(list)
    for e in m.edges:
        parents[e.target].append(e)
    head = ("<tr><th>model</th><th>kind</th><th>recipe</th><th class='num'>unexplained</th>"
            "<th class='num'>confidence</th><th>same model as</th><th>dtype</th></tr>")

    def row(n: Any) -> str:
        conf = min((e.confidence for e in parents[n.name]), default=None)
        u = "&ndash;" if n.unexplained is None else _e(percent(n.unexplained))
        c = "&ndash;" if conf is None else f"{conf:.2f}"
        same = "" if n.group == n.name else _e(n.group, 120)
        return (f"<tr><td><code>{_e(n.name, 200)}</code></td><td>{_e(n.kind)}</td><td>{_e(n.recipe, 400)}</td>"
                f"<td class='num'>{u}</td><td class='num'>{c}</td><td>{same}</td><td>{_e(n.dtype, 20)}</td></tr>")

    nodes = sorted(m.nodes, key=lambda n: (n.generation, n.name))
    first = "".join(row(n) for n in nodes[:TABLE_ROWS])
    out = f"<table>{head}{first}</table>"
    if len(nodes) > TABLE_ROWS:
        rest = "".join(row(n) for n in nodes[TABLE_ROWS:])
        out += (f"<details><summary>{len(nodes) - TABLE_ROWS} more models</summary>"
                f"<table>{head}{rest}</table></details>")
    return out


def _groups(m: CollectionMap) -> str:
    if not m.duplicates and not m.shared_components:
        return "<p class='muted'>No two models are the same file or the same weights.</p>"
    items = []
    for d in m.duplicates:
        what = "byte-identical files" if d.how == "bytes" else "the same weights (another precision or container)"
        items.append(f"<li><b>{_e(what)}</b>: " + ", ".join(f"<code>{_e(x, 150)}</code>" for x in d.names) + "</li>")
    shared = list(m.shared_components)
    for d in shared[:100]:
        comp = d.how.split(":", 1)[-1]
        items.append(f"<li>same <b>{_e(comp)}</b>: " + ", ".join(f"<code>{_e(x, 150)}</code>" for x in d.names[:30])
                     + (f" and {len(d.names) - 30} more" if len(d.names) > 30 else "") + "</li>")
    more = f"<p class='muted'>{len(shared) - 100} more shared components in the JSON.</p>" if len(shared) > 100 else ""
    return f"<ul class='box'>{''.join(items)}</ul>{more}"


def _legend() -> str:
    parts = [f"<span style='color:{c}'>&#9632; {k}</span>" for k, c in COLORS.items()]
    return "<p class='sub'>edges: " + " &nbsp; ".join(parts) + " (dashed: same model or component; opacity: " \
        "confidence; merge edges carry the ingredient's weight). Hover a model or an edge for its recipe, " \
        "weight and confidence; the table below lists every recipe.</p>"


def map_to_html(m: CollectionMap) -> str:
    kinds = Counter(n.kind for n in m.nodes)
    summary = (f"<p class='sub'>{len(m.nodes)} models in <code>{_e(m.library, 300)}</code>, family base "
               f"<code>{_e(m.base, 150)}</code>: " + ", ".join(f"{v} {_e(k)}" for k, v in sorted(kinds.items()))
               + f"; {len(m.edges)} edges.</p>")
    notes = "".join(f"<li>{_e(x, 600)}</li>" for x in m.notes)
    png = heatmap_png(m)
    heat = (f"<img class='fig' alt='clustered heatmap of the changes from the base' src='{png}'>" if png
            else "<p class='muted'>Fewer than two models besides the base: nothing to compare.</p>")
    order = ""
    if png and len(m.names) > 80:
        order = ("<details><summary>heatmap order</summary><p class='mono'>"
                 + " &middot; ".join(_e(m.names[i], 80) for i in m.order) + "</p></details>")
    inner = (f"<div class='sdf'><style>{CSS}.sdf{{max-width:none}} .graph{{overflow:auto;border:1px solid #d9dee7;"
             f"border-radius:8px;max-height:1400px}}</style>"
             f"<h1>Collection map</h1>{summary}<ul class='box'>{notes}</ul>"
             f"<h2 id='duplicates'>Same models</h2>{_groups(m)}"
             f"<h2 id='graph'>Lineage</h2>{_legend()}<div class='graph'>{graph_svg(m)}</div>"
             f"<h2 id='similarity'>Similarity of the changes from the base</h2>"
             f"<p class='sub'>Delta cosine between models (one per group of copies), clustered (average "
             f"linkage).</p>{heat}{order}"
             f"<h2 id='models'>Models and their recipes</h2>{_table(m)}"
             f"<p class='muted'>sdforensics map (schema sdforensics.map/1)</p></div>")
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>sdforensics map: {_e(m.library, 200)}</title></head>"
            f"<body>{inner}</body></html>\n")
