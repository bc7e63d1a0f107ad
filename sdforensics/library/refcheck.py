"""Checks on the reference library that ``sdf refs add`` and ``sdf analyze`` make before trusting it.

* :func:`changed_references` -- references whose fingerprint file no longer has the SHA-256 the
  library's catalog recorded when it was added (edited, truncated, swapped): the analysis leaves
  them out and names them, instead of fitting a recipe to a tampered file. Only files whose size
  or mtime changed are read.
* :func:`add_warnings` -- what adding a reference would silently do: replace a reference of the
  same name, or store a model already in the library under another name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.library.manifest import sha256_file
from sdforensics.library.store import Library, RefEntry


def changed_references(entries: Sequence[RefEntry]) -> tuple[list[RefEntry], list[str]]:
    """``(entries whose fingerprint file is the one the catalog recorded, one line per reference left out)``.

    A file whose size and mtime are those recorded is taken as unchanged without being read; only
    a file whose size or mtime moved is hashed and compared with the recorded SHA-256. An entry
    with no recorded hash (a version 1 library without a manifest) cannot be checked and is kept.
    """
    good: list[RefEntry] = []
    dropped: list[str] = []
    for entry in entries:
        want = entry.fp_sha256
        if not want:
            good.append(entry)
            continue
        try:
            st = entry.path.stat()
            if st.st_size == entry.fp_size and st.st_mtime_ns == entry.fp_mtime_ns:
                good.append(entry)
                continue
            have = sha256_file(entry.path)
        except OSError as err:
            dropped.append(f"{entry.name}: its fingerprint {entry.file} cannot be read ({err.strerror})")
            continue
        if have != want:
            dropped.append(f"{entry.name}: its fingerprint {entry.file} changed since it was added "
                           f"(sha256 {have[:12]}, recorded {want[:12]}); re-add it or run 'sdf refs verify'")
        else:
            good.append(entry)
    return good, dropped


def add_warnings(library: Library, name: str, identity: Mapping[str, Any]) -> list[str]:
    """Warnings before adding a model with ``identity`` as ``name`` to ``library``."""
    out = []
    sha = identity.get("sha256")
    for entry in library.entries:
        if entry.name == name:
            out.append(f"replacing the existing reference {name!r} "
                       f"(was {entry.identity.get('source_file') or entry.file})")
        elif sha and entry.identity.get("sha256") == sha:
            out.append(f"the same file (sha256 {str(sha)[:12]}) is already in the library as {entry.name!r}; "
                       f"it is now there twice, which makes the two names indistinguishable in a recipe")
    return out


def empty_library_summary(folders: Sequence[Path], family: str | None, label: str) -> list[str]:
    """What to say when the library holds no reference of the model's family: plainly, with the fix."""
    if not family:
        return []
    counts: dict[str, int] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        try:
            for entry in Library(folder).entries:
                counts[entry.family or "?"] = counts.get(entry.family or "?", 0) + 1
        except LibraryError:
            continue
    where = " + ".join(str(f) for f in folders) or "(none)"
    fix = ("add the family base with 'sdf refs add BASE.safetensors --name NAME --official' and the models "
           "you suspect with 'sdf refs add MODEL.safetensors --name NAME'")
    if not counts:
        return [f"the reference library is empty ({where}), so no recipe can be estimated: {fix}"]
    others = ", ".join(f"{n} {fam}" for fam, n in sorted(counts.items()))
    return [f"no {label} ({family}) references in the library ({where}; it holds {others}): {fix}"]
