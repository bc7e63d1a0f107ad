"""The self-contained HTML report (``sdf analyze MODEL --format html``) and the Jupyter view.

One file, no network: inline CSS, figures as base64 SVG images (an SVG inside ``<img>`` runs
no script and shares no ids with the page), no JavaScript, and a Content-Security-Policy that
forbids scripts anyway. Every string that came from the file or a library (tensor names,
metadata keys and values, reference names) goes through :func:`_e`: control characters shown
(:func:`~sdforensics.core.safetext.printable`), then :func:`html.escape`. Sections have stable ids
(``summary``, ``identity``, ``problems``, ``matches``, ``recipe``, ``blocks``, ``similarity``,
``unexplained``, ``metadata``, ``tensors``) for tests and links.

>>> from sdforensics.report.render_html import analysis_to_html      # doctest: +SKIP
>>> Path("report.html").write_text(analysis_to_html(a))        # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sdforensics.core.safetext import human_size, percent, printable
from sdforensics.report.render_json import analysis_to_json
from sdforensics.report.tensor_table import component_rows, tensor_rows

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from sdforensics.analysis import Analysis

SECTIONS = ("summary", "identity", "problems", "matches", "recipe", "blocks", "similarity", "unexplained",
            "metadata", "tensors")
HTML_TENSOR_ROWS = 200
"""Tensors listed in the HTML report (folded); the JSON lists them all."""

CSS = """
.sdf{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;max-width:1180px;
 margin:0 auto;padding:8px 20px 40px}
.sdf h1{font-size:22px;margin:12px 0 4px;word-break:break-all}
.sdf h2{font-size:17px;margin:26px 0 8px;padding-bottom:4px;border-bottom:1px solid #d9dee7}
.sdf h3{font-size:14px;margin:14px 0 6px}
.sdf .sub{color:#5b6475;margin:0 0 10px}
.sdf .box{background:#f3f6fb;border:1px solid #d6deeb;border-radius:8px;padding:10px 16px}
.sdf .box li{margin:3px 0;overflow-wrap:anywhere}
.sdf p,.sdf code,.sdf td{overflow-wrap:anywhere}
.sdf table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
.sdf th,.sdf td{border:1px solid #dde2ea;padding:3px 8px;text-align:left;vertical-align:top}
.sdf th{background:#f1f3f7;font-weight:600}
.sdf td.num{text-align:right;font-variant-numeric:tabular-nums}
.sdf code,.sdf .mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;
 word-break:break-all}
.sdf .sev{display:inline-block;min-width:58px;padding:0 6px;border-radius:4px;font-size:12px;
 text-align:center;margin-right:6px;color:#fff}
.sdf .error{background:#b3261e}.sdf .warning{background:#c77700}.sdf .info{background:#5b6b85}
.sdf .ok{color:#1e7b34}.sdf .bad{color:#b3261e}.sdf .muted{color:#6b7386}
.sdf img.fig{max-width:100%;height:auto;display:block;margin:6px 0}
.sdf details{margin:6px 0}.sdf summary{cursor:pointer;color:#2b5797}
.sdf .cols{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.sdf .recipe{font-size:16px;font-weight:600}
"""


def _e(value: object, limit: int | None = 500) -> str:
    """Text from a file or library, made safe: control characters shown, cut, HTML-escaped."""
    return html.escape(printable(str(value), limit), quote=True)


def _num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return "&ndash;"
    return f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    return percent(float(x)) if isinstance(x, int | float) and not isinstance(x, bool) else "&ndash;"


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """Two-column table; keys are our own labels, values are already-escaped HTML."""
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], num: Sequence[int] = ()) -> str:
    """Table with our own header labels; cells are already-escaped HTML."""
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(f"<td class='num'>{c}</td>" if i in num else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{title}</h2>{body}</section>"


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img class='fig' alt='{html.escape(alt, quote=True)}' src='data:image/svg+xml;base64,{data}'>"


# ---------------------------------------------------------------------------------------------
# sections


def _summary_items(a: Analysis, doc: dict[str, Any]) -> list[str]:
    arch = a.architecture
    items = []
    comps = ", ".join(arch.components) or "no known components"
    variant = "" if arch.variant in ("standard", "", None) else f", {arch.variant}"
    size = f", {human_size(a.hashes.bytes)}" if a.hashes else ""
    items.append(f"<b>What it is:</b> {_e(arch.label)}{_e(variant)} checkpoint ({_e(comps)}){size}, "
                 f"{_e(a.layout.format.container)}.")
    if isinstance(doc.get("lora"), dict) or isinstance(doc.get("embedding"), dict):
        from sdforensics.model.embedding import embedding_lines  # a LoRA or an embedding: the text report's lines
        from sdforensics.report.render_text import lora_lines

        lines = lora_lines(doc["lora"]) if isinstance(doc.get("lora"), dict) else embedding_lines(doc["embedding"])
        items.clear()  # "what it is: ... checkpoint" does not apply
        for line in lines:
            label, _, rest = line.strip().partition(" ")
            items.append(f"<b>{_e(label.capitalize())}:</b> {_e(rest.strip(), 1000)}")
    for m in doc.get("registry") or []:
        if m.get("strength") == "exact":
            items.append(f"<b>Known model:</b> {_e(m.get('name'))} (exact {_e(m.get('how'))} match; "
                         f"source: {_e(m.get('source'))}).")
    for comp, ref in (doc.get("identical") or {}).items():
        if ref:
            items.append(f"<b>Exact copy:</b> its {_e(comp.replace('_', ' '))} is identical to "
                         f"{_e(ref)}'s.")
    items += [_e(line, 1000) for line in doc.get("summary") or []]
    declared = a.metadata.declared
    if declared is not None:
        items.append(f"<b>Metadata declares</b> ({_e(declared.tool)}): {_e(declared.text, 300)} "
                     "&mdash; compared with the weights under <a href='#metadata'>Metadata</a>.")
    counts = {s: sum(p.severity == s for p in a.problems) for s in ("error", "warning", "info")}
    if counts["error"] or counts["warning"]:
        parts = [f"{n} {s}{'s' if n > 1 else ''}" for s, n in counts.items() if n]
        items.append(f"<b>Problems:</b> {', '.join(parts)} (see <a href='#problems'>Problems</a>).")
    else:
        items.append("<b>Problems:</b> nothing serious found"
                     + (f" ({counts['info']} note{'s' if counts['info'] > 1 else ''})." if counts["info"] else "."))
    return items


def _summary(a: Analysis, doc: dict[str, Any]) -> str:
    lis = "".join(f"<li>{i}</li>" for i in _summary_items(a, doc))
    return (f"<section id='summary'><h1>{_e(a.path.name, 200)}</h1>"
            f"<p class='sub mono'>{_e(a.path, 400)}</p><div class='box'><ul>{lis}</ul></div></section>")


def _identity(a: Analysis, doc: dict[str, Any]) -> str:
    arch = a.architecture
    ident = a.identity
    dtypes = ", ".join(f"{_e(k)} {percent(v / max(ident.n_params, 1))}"
                       for k, v in sorted(ident.dtypes.items(), key=lambda kv: -kv[1]))
    rows = [
        ("format", _e(a.layout.format.container)),
        ("architecture", _e(arch.label) + (f" <span class='muted'>({_e(arch.name)})</span>" if arch.name else "")),
        ("variant", _e(arch.variant)),
        ("components", _e(", ".join(arch.components) or "none recognised")),
    ]
    if arch.text_encoders:
        rows.append(("text encoders", _e(", ".join(arch.text_encoders))))
    if arch.width_factor and arch.width_factor != 1:
        rows.append(("width", f"1/{arch.width_factor} of the release architecture"))
    rows.append(("tensors", f"{ident.n_tensors:,} ({ident.n_params:,} values; {dtypes})"))
    h = a.hashes
    if h is not None:
        rows.append(("size", f"{human_size(h.bytes)} ({h.bytes:,} bytes)"))
        for label, value in (("SHA-256", h.sha256), ("AutoV2", h.autov2), ("AutoV1", h.autov1),
                             ("AutoV3", h.autov3), ("BLAKE3", h.blake3), ("CRC32", h.crc32)):
            rows.append((label, f"<code>{_e(value or '-')}</code>"))
    for comp, value in ident.component_hashes.items():
        rows.append((f"content {_e(comp)}", f"<code>{_e(value)}</code> <span class='muted'>"
                     "(hash of the values, the same across fp16/fp32 re-saves)</span>"))
    for note in (*a.layout.mapping.notes, *arch.hints):
        rows.append(("note", _e(note)))
    return _section("identity", "Identity and hashes", _kv(rows))


def _problems(a: Analysis) -> str:
    if not a.problems:
        return _section("problems", "Problems", "<p class='ok'>None found.</p>")
    lis = "".join(f"<li><span class='sev {_e(p.severity)}'>{_e(p.severity)}</span>{_e(p.message, 1000)} "
                  f"<span class='muted mono'>{_e(p.code)}</span></li>" for p in a.problems)
    return _section("problems", "Problems", f"<ul>{lis}</ul>")


def _matches(doc: dict[str, Any]) -> str:
    ident = doc.get("identical") or {}
    lib = doc.get("library") or {}
    if lib.get("references"):
        rows = [(_e(c.replace("_", " ")), f"<span class='ok'>identical to {_e(r)}</span>" if r
                 else "<span class='muted'>no identical reference</span>") for c, r in ident.items()]
        body = "<h3>Components identical to a library reference</h3>" + _kv(rows)
    else:
        body = "<p class='muted'>No library references of this family to compare components with.</p>"
    reg = doc.get("registry")
    if reg:
        rows2 = [[_e(m.get("name")), _e(m.get("how")), _e(m.get("strength")), _e(m.get("source")),
                  _e(m.get("warning") or "")] for m in reg]
        body += "<h3>Known models (registry)</h3>" + _table(["name", "matched on", "strength", "source", "note"], rows2)
    else:
        body += "<p class='muted'>No file or component hash matches a known model in the registry.</p>"
    return _section("matches", "Exact matches", body)


def _no_recipe(doc: dict[str, Any]) -> str:
    lib = doc.get("library") or {}
    searched = ", ".join(str(p) for p in lib.get("searched") or []) or "none"
    return (f"<p class='muted'>No recipe estimated: the library has {int(lib.get('references') or 0)} "
            f"compatible reference(s) (searched: <span class='mono'>{_e(searched)}</span>). "
            "Add references with <code>sdf refs add MODEL --name NAME</code>.</p>")


def _recipe(a: Analysis, doc: dict[str, Any], recipe: dict[str, Any] | None) -> str:
    if not recipe:
        return _section("recipe", "Recipe", _no_recipe(doc))
    from sdforensics.report.plots import recipe_figure

    kind = str(recipe.get("kind", "unknown")).replace("_", " ")
    body = (f"<p class='recipe'>{_e(recipe.get('text') or '')}</p><p>Kind: <b>{_e(kind)}</b>; "
            f"unexplained: <b>{_pct(recipe.get('unexplained'))}</b>; pivot "
            f"{_e(recipe.get('pivot') or '-')}. Weights are affine (they sum to 1; add difference shows "
            "as a negative weight).</p>")
    if recipe.get("components"):
        body += _img(recipe_figure(a), "recipe weights with 95% intervals")
        rows = [[_e(c.get("reference")), _num(c.get("weight")), _num((c.get("ci95") or [None])[0]),
                 _num((c.get("ci95") or [None, None])[1])] for c in recipe["components"]]
        body += _table(["reference", "weight", "95% low", "95% high"], rows, num=(1, 2, 3))
    for g in recipe.get("ambiguous") or []:
        body += (f"<p><b>Ambiguous:</b> {_e(', '.join(map(str, g.get('references') or [])))} are too alike "
                 f"(delta cosine {_num(g.get('cosine'), 2)}) to split; together {_num(g.get('weight'))}.</p>")
    loras = recipe.get("loras") or []
    if loras:
        rows = [[_e(lo.get("reference") or "unknown"), _num(lo.get("strength")), _e(lo.get("rank") or "-"),
                 _e(len(lo.get("layers") or []))] for lo in loras]
        body += "<h3>LoRAs baked in</h3>" + _table(["LoRA", "strength", "rank", "layers"], rows, num=(1, 2, 3))
    ew = recipe.get("elementwise")
    if ew and ew.get("kind") not in (None, "linear"):
        body += (f"<p><b>Element-wise merge:</b> {_e(ew.get('kind'))} (density {_num(ew.get('density'), 2)}, "
                 f"drop rate {_num(ew.get('drop_rate'), 2)}).</p>")
    notes = [n for n in recipe.get("notes") or [] if not str(n).startswith("blocks:")]  # shown under blocks
    if notes:
        body += "<ul class='muted'>" + "".join(f"<li>{_e(n, 1000)}</li>" for n in notes) + "</ul>"
    return _section("recipe", "Recipe", body)


def _blocks(a: Analysis, recipe: dict[str, Any] | None) -> str:
    if not recipe or not recipe.get("blocks"):
        return _section("blocks", "Recipe per merge block", "<p class='muted'>No per-block recipe.</p>")
    from sdforensics.report.frames import blocks_frame
    from sdforensics.report.plots import blocks_figure

    body = (f"<p class='sub'>Blocks: {_e(recipe.get('block_convention') or '')}.</p>"
            + _img(blocks_figure(a), "recipe per merge block"))
    sm = recipe.get("supermerger_weights")
    if sm:
        body += (f"<p>SuperMerger / sd-mecha block weights for <code>{_e(sm.get('formula'))}</code> "
                 f"({_e(', '.join(map(str, sm.get('models') or [])))}):</p><p><code>{_e(sm.get('text'), 2000)}"
                 "</code></p>")
    frame = blocks_frame(a)
    head = ["block", *(_e(c) for c in frame.columns)]
    rows = [[_e(b), *(_num(v) for v in row)] for b, row in zip(frame.index, frame.to_numpy(), strict=True)]
    body += ("<details><summary>Per-block weights as a table</summary>"
             + _table(head, rows, num=range(1, len(head))) + "</details>")
    return _section("blocks", "Recipe per merge block", body)


def _similarity(a: Analysis, doc: dict[str, Any]) -> str:
    sim = doc.get("similarity")
    if not sim or not sim.get("references"):
        return _section("similarity", "Similarity to the references", _no_recipe(doc))
    from sdforensics.report.frames import similarity_frame
    from sdforensics.report.plots import similarity_figure

    body = ""
    if sim.get("base"):
        body += (f"<p class='sub'>Cosine of each model's change from the family base "
                 f"<b>{_e(sim['base'])}</b> (raw cosines of SD weights are ~0.99 for everything).</p>")
        body += _img(similarity_figure(a), "per-block delta cosine heatmap")
    else:
        body += "<p class='muted'>No official family base in the library, so no delta cosines.</p>"
    frame = similarity_frame(a)
    rows = [[_e(r) + (" <span class='muted'>(base)</span>" if row.is_base else ""), _num(row.delta_cosine),
             _num(row.raw_cosine, 4), _num(row.weight)] for r, row in zip(frame.index, frame.itertuples(),
                                                                          strict=True)]
    body += _table(["reference", "delta cosine", "raw cosine", "weight in recipe"], rows, num=(1, 2, 3))
    return _section("similarity", "Similarity to the references", body)


def _unexplained(a: Analysis, recipe: dict[str, Any] | None) -> str:
    if not recipe or not recipe.get("block_unexplained"):
        return _section("unexplained", "Unexplained share", "<p class='muted'>No recipe estimated.</p>")
    from sdforensics.report.plots import unexplained_figure

    ref = recipe.get("base") or recipe.get("pivot") or "the base"
    body = (f"<p>{_pct(recipe.get('unexplained'))} of the change from {_e(ref)} is not accounted for by "
            "the library: further training, or an ingredient the library does not hold. Per block:</p>"
            + _img(unexplained_figure(a), "unexplained share per block"))
    return _section("unexplained", "Unexplained share", body)


def _declared_vs_weights(a: Analysis, recipe: dict[str, Any] | None) -> str:
    declared = a.metadata.declared
    est_text = _e(recipe.get("text")) if recipe else "<span class='muted'>no recipe estimated</span>"
    est_kind = _e(str(recipe.get("kind")).replace("_", " ")) if recipe else "&ndash;"
    if declared is None:
        rows = [("recipe", "<span class='muted'>nothing declared</span>", est_text)]
    else:
        weights = {str(c.get("reference")): c.get("weight") for c in (recipe or {}).get("components") or []}
        lower = {k.lower(): k for k in weights}
        models = []
        for m in declared.models:
            label = m.name or (m.sha256 or "?")[:10]
            stem = (m.name or "").rsplit(".", 1)[0].lower()
            found = lower.get((m.name or "").lower()) or lower.get(stem)
            verdict = (f"<span class='ok'>found: {_e(found)} weight {_num(weights[found])}</span>" if found
                       else "<span class='muted'>not among the estimated ingredients</span>")
            models.append((_e(label), verdict))
        rows = [("tool", _e(declared.tool), "sdforensics estimate"),
                ("recipe", _e(declared.text, 500), est_text),
                ("kind", _e(declared.mode or "-"), est_kind)]
        if declared.multiplier is not None:
            rows.append(("multiplier", _num(declared.multiplier), "see weights above"))
        rows += [(f"model {i + 1}", name, verdict) for i, (name, verdict) in enumerate(models)]
    body = "".join(f"<tr><th>{k}</th><td>{d}</td><td>{w}</td></tr>" for k, d, w in rows)
    return ("<h3>Declared in the metadata vs. shown by the weights</h3><table><thead><tr><th></th>"
            f"<th>declared (metadata)</th><th>weights show</th></tr></thead><tbody>{body}</tbody></table>")


def _metadata(a: Analysis, recipe: dict[str, Any] | None) -> str:
    md = a.metadata
    body = _declared_vs_weights(a, recipe)
    if md.modelspec:
        body += "<h3>ModelSpec</h3>" + _kv((_e(k), _e(v)) for k, v in md.modelspec.items())
    if md.training:
        body += (f"<details><summary>kohya training metadata ({len(md.training)} keys)</summary>"
                 + _kv((_e(k), _e(v)) for k, v in md.training.items()) + "</details>")
    if md.raw:
        rows = [(f"<span class='mono'>{_e(k, 200)}</span>", f"<span class='mono'>{_e(v, 600)}</span>")
                for k, v in sorted(md.raw.items())[:500]]
        body += (f"<details><summary>All {len(md.raw)} metadata entries as stored</summary>{_kv(rows)}"
                 "</details>")
    else:
        body += "<p class='muted'>The file carries no metadata.</p>"
    return _section("metadata", "Metadata", body)


def _tensors(a: Analysis) -> str:
    arch = a.architecture
    body = ""
    if arch.n_extra:
        body += (f"<p>{arch.n_extra} key(s) not in the {_e(arch.label)} layout, e.g. "
                 + ", ".join(f"<code>{_e(k, 200)}</code>" for k in arch.extra_keys[:10]) + "</p>")
    if arch.n_missing:
        body += (f"<p>{arch.n_missing} expected key(s) missing, e.g. "
                 + ", ".join(f"<code>{_e(k, 200)}</code>" for k in arch.missing_keys[:10]) + "</p>")
    rows = tensor_rows(a)
    comps = [[_e(c.component or "outside the layout"), f"{c.tensors:,}", f"{c.values:,}",
              _e(", ".join(f"{d} {n:,}" for d, n in c.dtypes))] for c in component_rows(rows)]
    body += _table(["component", "tensors", "values", "dtypes (tensors)"], comps, num=(1, 2))
    shown = rows[:HTML_TENSOR_ROWS]
    table = [[f"<span class='mono'>{_e(r.name, 300)}</span>", _e(r.shape_text), _e(r.dtype), f"{r.numel:,}",
              _e(r.component or "-"), _e(r.block or "-")] for r in shown]
    more = (f" (first {len(shown):,} shown; every tensor is listed under <code>tensors.list</code> in "
            f"<code>--format json</code>)") if len(rows) > len(shown) else ""
    body += (f"<details><summary>{len(rows):,} tensors{more}</summary>"
             + _table(["tensor", "shape", "dtype", "values", "component", "block"], table, num=(3,))
             + "</details>")
    pickle = a.layout.format.globals if a.layout.format.container.startswith("pickle") else ()
    if pickle:
        rows2 = [[f"<code>{_e(g.qualname, 300)}</code>", _e(g.verdict), _e(g.member)] for g in pickle]
        body += "<h3>Pickle globals</h3>" + _table(["global", "verdict", "member"], rows2)
    return _section("tensors", "Tensors", body)


def _footer(doc: dict[str, Any]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("sdforensics")
    except PackageNotFoundError:
        ver = "?"
    lib = doc.get("library") or {}
    searched = ", ".join(str(p) for p in lib.get("searched") or []) or "none"
    return (f"<p class='muted'>sdforensics {_e(ver)}, schema {_e(doc.get('schema'))}; libraries searched: "
            f"<span class='mono'>{_e(searched, 1000)}</span>.</p>")


def analysis_to_html(a: Analysis, fragment: bool = False) -> str:
    """The report as a whole HTML page, or (``fragment=True``) a ``<div>`` for Jupyter."""
    doc = analysis_to_json(a)
    recipe = doc.get("recipe") if isinstance(doc.get("recipe"), dict) else None
    parts = [
        _summary(a, doc),
        _identity(a, doc),
        _problems(a),
        _matches(doc),
        _recipe(a, doc, recipe),
        _blocks(a, recipe),
        _similarity(a, doc),
        _unexplained(a, recipe),
        _metadata(a, recipe),
        _tensors(a),
        _footer(doc),
    ]
    inner = f"<div class='sdf'><style>{CSS}</style>{''.join(parts)}</div>"
    if fragment:
        return inner
    title = _e(f"sdforensics: {a.path.name}", 200)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<link rel='icon' href='data:,'><title>{title}</title></head><body>{inner}</body></html>\n")
