"""The reference library: fingerprints of known models, stored as files in a folder.

A library folder holds ``library.json`` (the index: name, family, official flag, file hashes,
component content hashes, where the fingerprint is), ``fingerprints/*.sdfp`` and a
``MANIFEST.sha256`` that ``sdf refs verify`` checks. The default search path is the shipped
``reference_hashes/`` plus the user library (``$SDF_HOME``, else the platform's user data
folder); ``--library DIR`` selects one folder instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.fingerprinting.fingerprint import Fingerprint, Scheme, scheme_from_json
from sdforensics.fingerprinting.fpfile import load_fingerprint, save_fingerprint
from sdforensics.library.manifest import verify_manifest, write_manifest
from sdforensics.library.shipped import shipped_registry_dir
from sdforensics.library.vecstore import record_vector

INDEX = "library.json"
LIB_FORMAT = "sdforensics.library"
LIB_VERSION = 1
SHIPPED = shipped_registry_dir()


@dataclass(frozen=True)
class RefEntry:
    name: str
    family: str | None
    official: bool
    file: str
    """Fingerprint path relative to the library folder."""
    identity: dict[str, Any]
    library: Path

    @property
    def path(self) -> Path:
        return self.library / self.file

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "official": self.official,
            "file": self.file,
            "identity": self.identity,
        }


def user_library() -> Path:
    env = os.environ.get("SDF_HOME")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("sdforensics", appauthor=False))


def search_path(library: Path | None = None) -> list[Path]:
    """The library folders to search: ``[library]`` when given, else shipped + user."""
    if library is not None:
        return [Path(library)]
    out = []
    if (SHIPPED / INDEX).exists():
        out.append(SHIPPED)
    out.append(user_library())
    return out


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return slug[:80]


class Library:
    """One library folder (created on first write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._entries = self._read()

    def _read(self) -> list[RefEntry]:
        index = self.folder / INDEX
        if not index.exists():
            return []
        try:
            raw = json.loads(index.read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise LibraryError(
                f"{index}: cannot read the library index ({err}); run 'sdf refs verify'"
            ) from err
        if not isinstance(raw, dict) or raw.get("format") != LIB_FORMAT:
            raise LibraryError(f"{index}: not an sdforensics library index")
        if raw.get("version") != LIB_VERSION:
            raise LibraryError(
                f"{index}: library version {raw.get('version')!r}; this sdforensics reads {LIB_VERSION}"
            )
        out = []
        for i, e in enumerate(raw.get("entries", [])):
            try:
                file = str(e["file"])
                if Path(file).is_absolute() or ".." in Path(file).parts:
                    raise ValueError(f"fingerprint path {file!r} leaves the library folder")
                out.append(
                    RefEntry(
                        str(e["name"]),
                        e.get("family"),
                        bool(e.get("official")),
                        file,
                        dict(e.get("identity") or {}),
                        self.folder,
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise LibraryError(f"{index}: entry {i} is malformed ({err})") from err
        return out

    @property
    def entries(self) -> list[RefEntry]:
        return list(self._entries)

    def get(self, name: str) -> RefEntry:
        for e in self._entries:
            if e.name == name:
                return e
        raise LibraryError(f"{self.folder}: no reference named {name!r}; 'sdf refs list' shows the names")

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": LIB_FORMAT,
            "version": LIB_VERSION,
            "entries": [e.to_json() for e in sorted(self._entries, key=lambda e: e.name)],
        }
        tmp = self.folder / (INDEX + ".part")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")
        tmp.replace(self.folder / INDEX)
        write_manifest(self.folder)

    def add(self, fp: Fingerprint, name: str, official: bool = False, replace: bool = True) -> RefEntry:
        if any(e.name == name for e in self._entries):
            if not replace:
                raise LibraryError(f"{self.folder}: a reference named {name!r} exists; remove it first")
            self.remove(name, write=False)
        file = f"fingerprints/{_slug(name)}.sdfp"
        taken = {e.file for e in self._entries}
        n = 2
        while file in taken:
            file = f"fingerprints/{_slug(name)}-{n}.sdfp"
            n += 1
        identity = dict(fp.identity)
        identity["name"] = name
        fp = Fingerprint(fp.scheme, identity, fp.tensors)
        save_fingerprint(fp, self.folder / file)
        record_vector(self.folder, file, fp)  # the search vector beside it (library/vecstore.py)
        entry = RefEntry(name, fp.family, official, file, _index_identity(identity), self.folder)
        self._entries.append(entry)
        self._write()
        return entry

    def remove(self, name: str, write: bool = True) -> None:
        entry = self.get(name)
        self._entries = [e for e in self._entries if e.name != name]
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        if write:
            self._write()

    def load(self, name: str) -> Fingerprint:
        entry = self.get(name)
        fp = load_fingerprint(entry.path)
        return fp

    def verify(self) -> list[str]:
        if not (self.folder / INDEX).exists() and not (self.folder / "MANIFEST.sha256").exists():
            return [f"{self.folder}: no library here"]
        return verify_manifest(self.folder)


def _index_identity(identity: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "kind",
        "rank",
        "family",
        "arch",
        "width_factor",
        "sha256",
        "autov2",
        "autov1",
        "component_hashes",
        "source_file",
        "scheme",
    )
    return {k: identity[k] for k in keep if k in identity}


@dataclass(frozen=True)
class Reference:
    """A loaded reference: its index entry and fingerprint."""

    entry: RefEntry
    fingerprint: Fingerprint

    @property
    def name(self) -> str:
        return self.entry.name


def reference_entries(folders: list[Path], family: str | None = None) -> list[RefEntry]:
    """Every reference's index entry in ``folders`` (first folder wins on a name clash), optionally
    one family; nothing is loaded."""
    seen: set[str] = set()
    out = []
    for folder in folders:
        for entry in Library(folder).entries:
            if entry.name in seen or (family is not None and entry.family != family):
                continue
            seen.add(entry.name)
            out.append(entry)
    return out


def load_reference(entry: RefEntry) -> Reference:
    with _collector_paused():
        return Reference(entry, load_fingerprint(entry.path))


def load_references(folders: list[Path], family: str | None = None) -> list[Reference]:
    """Every reference in ``folders`` (first folder wins on a name clash), optionally one family."""
    with _collector_paused():
        return [Reference(e, load_fingerprint(e.path)) for e in reference_entries(folders, family)]


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while references load: each holds ~10,000 small objects and
    none makes a cycle, yet the growing heap set off full collections (0.1-0.15 s each, several
    per 50 references). Restored as it was, whatever happens."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def library_scheme(folders: list[Path]) -> Scheme | None:
    """The fingerprint scheme most references in ``folders`` were made with (None: empty library).

    A target is fingerprinted with it, so libraries made by an earlier scheme keep working."""
    counts: Counter[str] = Counter()
    for folder in folders:
        if not (folder / INDEX).exists():
            continue
        for e in Library(folder).entries:
            raw = e.identity.get("scheme")
            if isinstance(raw, dict):
                counts[json.dumps(raw, sort_keys=True)] += 1
    for text, _ in counts.most_common():
        try:
            return scheme_from_json(json.loads(text))
        except (KeyError, TypeError, ValueError):
            continue
    return None


__all__ = [
    "Library",
    "RefEntry",
    "Reference",
    "load_reference",
    "load_references",
    "reference_entries",
    "search_path",
    "user_library",
    "save_fingerprint",
    "load_fingerprint",
]
