"""Version 1 libraries (``library.json`` + ``MANIFEST.sha256``): read them, and upgrade them in place.

A version 1 library in a folder we may write is upgraded the first time it is opened: the catalog
is built in a temporary file (every fingerprint file hashed once and checked against the manifest),
then linked into place (atomic; a concurrent upgrader's catalog wins), and only then are
``library.json`` and ``MANIFEST.sha256`` renamed to ``*.v1.bak``. A kill at any point leaves either
the old library or the new one. A folder we may not write (the shipped registry in a wheel) is read
as version 1, as before, and never changed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.library import catalog
from sdforensics.library.manifest import MANIFEST_NAME, read_manifest, sha256_file

INDEX = "library.json"
V1_VERSION = 1
BACKUP = ".v1.bak"


def read_v1(folder: Path) -> list[dict[str, Any]]:
    """The entries of ``folder/library.json`` (validated), each a dict with name, family, official,
    file, identity."""
    index = Path(folder) / INDEX
    try:
        raw = json.loads(index.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise LibraryError(f"{index}: cannot read the library index ({err}); run 'sdf refs verify'") from err
    if not isinstance(raw, dict) or raw.get("format") != catalog.FORMAT:
        raise LibraryError(f"{index}: not an sdforensics library index")
    if raw.get("version") != V1_VERSION:
        raise LibraryError(f"{index}: library version {raw.get('version')!r}; this sdforensics reads {V1_VERSION} "
                           f"(library.json) and {catalog.VERSION} ({catalog.CATALOG})")
    out = []
    for i, e in enumerate(raw.get("entries", [])):
        try:
            file = str(e["file"])
            if Path(file).is_absolute() or ".." in Path(file).parts:
                raise ValueError(f"fingerprint path {file!r} leaves the library folder")
            out.append({
                "name": str(e["name"]), "family": e.get("family"), "official": bool(e.get("official")),
                "file": file, "identity": dict(e.get("identity") or {}),
            })  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise LibraryError(f"{index}: entry {i} is malformed ({err})") from err
    return out


def manifest_hashes(folder: Path) -> dict[str, str]:
    """The v1 manifest's ``{file: sha256}`` (empty when there is none or it is malformed)."""
    try:
        return read_manifest(folder)
    except LibraryError:
        return {}


def majority_scheme(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    counts: Counter[str] = Counter()
    for e in entries:
        raw = e["identity"].get("scheme")
        if isinstance(raw, dict):
            counts[json.dumps(raw, sort_keys=True)] += 1
    return json.loads(counts.most_common(1)[0][0]) if counts else None


def upgrade_in_place(folder: Path) -> bool:
    """Turn the version 1 library in ``folder`` into a catalog; True when this call did it."""
    folder = Path(folder)
    target = catalog.catalog_path(folder)
    if target.exists():
        _retire_v1(folder)
        return False
    entries = read_v1(folder)
    listed = manifest_hashes(folder)
    rows = []
    for e in entries:
        path = folder / e["file"]
        want = listed.get(e["file"])
        try:
            st = path.stat()
            have = sha256_file(path)
        except OSError:
            st, have = None, ""
        # A file that no longer matches its manifest keeps the manifest's hash and no size, so the
        # analysis keeps leaving it out until it is re-added.
        ok = st is not None and (want is None or want == have)
        ident = e["identity"]
        kind = str(ident.get("kind") or "model")
        rows.append((
            e["name"], e["family"], int(e["official"]), kind, e["file"],
            st.st_size if ok and st else -1, st.st_mtime_ns if ok and st else -1,
            have if ok else (want or ""), ident.get("sha256"), catalog.identity_json(ident),
        ))  # fmt: skip
    meta = {"upgraded_from": f"{INDEX} version {V1_VERSION} (kept as {INDEX}{BACKUP})"}
    scheme = majority_scheme(entries)
    if scheme is not None:
        meta["scheme"] = json.dumps(scheme, sort_keys=True)
    tmp = folder / f".{catalog.CATALOG}.{os.getpid()}.upgrade"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        catalog.init_file(tmp, meta, rows)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _retire_v1(folder)
    return True


def _retire_v1(folder: Path) -> None:
    """Rename the v1 index and manifest to backups once the catalog is in place."""
    for name in (INDEX, MANIFEST_NAME):
        src = folder / name
        if src.exists():
            with contextlib.suppress(FileNotFoundError):
                os.replace(src, folder / (name + BACKUP))
