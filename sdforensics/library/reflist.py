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
