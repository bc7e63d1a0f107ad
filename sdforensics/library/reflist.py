"""Rows for ``sdf refs list``: fingerprinted references next to registry entries (hash only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdforensics.library.registry import registry_rows, shipped_registry
from sdforensics.library.store import Library, search_path


def list_references(library: Path | None, include_registry: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    by_sha: dict[str, dict[str, Any]] = {}
    for folder in search_path(library):
        if not folder.exists():
            continue
        for e in Library(folder).entries:
            row = {
                "name": e.name,
                "family": e.family,
                "official": e.official,
                "fingerprint": True,
                "status": "fingerprint",
                "library": str(folder),
                "sha256": e.identity.get("sha256"),
                "source": f"fingerprinted from {e.identity.get('source_file')}",
                "kind": e.kind,
                "paths": [s.path for s in e.sources],
            }
            rows.append(row)
            if row["sha256"]:
                by_sha[str(row["sha256"])] = row
    if include_registry:
        for r in registry_rows(shipped_registry()):
            sha = r.get("sha256")
            if sha and sha in by_sha:
                by_sha[sha]["registry_name"] = r["name"]
                by_sha[sha]["source"] = r["source"]
                continue
            rows.append(r)
    return rows


def render_reference_list(rows: list[dict[str, Any]], registry: bool) -> str:
    """``sdf refs list``: a header, your fingerprinted references, then the registry (``registry``)
    or one line counting it."""
    from sdforensics.core.safetext import printable

    fps = [r for r in rows if r["fingerprint"]]
    known = [r for r in rows if not r["fingerprint"]]
    shown = fps + (known if registry else [])
    width = min(max([len(printable(str(r["name"]), 60)) for r in shown] + [4]), 36)
    lines = [f"{'name':{width}}  {'family':6}  {'kind':11}  {'official':8}  library"]
    for r in shown:
        kind = "fingerprint" if r["fingerprint"] else "hash only"
        where = r.get("library") or r.get("source") or "-"
        lines.append(f"{printable(str(r['name']), 60):{width}}  {r.get('family') or '-':6}  {kind:11}  "
                     f"{'yes' if r.get('official') else '':8}  {printable(str(where), 60)}")
    if not fps:
        lines.append("(no fingerprinted references yet: add one with 'sdf refs add MODEL --name NAME', "
                     "the family base with --official)")
    count = f"{len(fps)} fingerprinted reference{'s' * (len(fps) != 1)}"
    if registry:
        lines.append(f"{count}, {len(known)} known by hash only")
    else:
        lines.append(f"{count}; {len(known)} more models are known by hash only (shown with --registry)")
    return "\n".join(lines)
