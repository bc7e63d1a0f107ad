"""The reference library: fingerprints of known models in a folder, listed in a catalog.

A library folder holds ``library.sqlite`` (the catalog, :mod:`sdforensics.library.catalog`: one row
per reference with its fingerprint file's size, mtime and SHA-256, the model files it was made
from, the fingerprint scheme of the library) and ``fingerprints/*.sdfp``. Version 1 libraries
(``library.json`` + ``MANIFEST.sha256``) are upgraded in place when first opened, or read as they
are where the folder cannot be written (:mod:`sdforensics.library.legacy`). The default search path
is the shipped ``reference_hashes/`` plus the user library (``$SDF_HOME``, else the platform's user
data folder); ``--library DIR`` selects one folder instead.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.fingerprinting.fingerprint import Fingerprint, Scheme, scheme_from_json
from sdforensics.fingerprinting.fpfile import load_fingerprint, save_fingerprint
from sdforensics.fingerprinting.sketch import SCHEME as SIGN_SEED
from sdforensics.library import catalog, legacy
from sdforensics.library.manifest import MANIFEST_NAME, quick_signature, sha256_file, verify_manifest
from sdforensics.library.shipped import INSTALLED, SOURCE, shipped_registry_dir
from sdforensics.library.vecstore import record_vector

INDEX = legacy.INDEX
LIB_FORMAT = catalog.FORMAT
LIB_VERSION = catalog.VERSION
SHIPPED = shipped_registry_dir()


@dataclass(frozen=True)
class SourceFile:
    """A model file a reference was fingerprinted from, as it was then."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    quick: str | None = None
    """SHA-256 of the file's first and last MiB (see :func:`quick_signature`)."""


@dataclass(frozen=True)
class RefEntry:
    name: str
    family: str | None
    official: bool
    file: str
    """Fingerprint path relative to the library folder."""
    identity: dict[str, Any]
    library: Path
    fp_sha256: str | None = None
    """SHA-256 of the fingerprint file when it was added (None: not recorded)."""
    fp_size: int = -1
    fp_mtime_ns: int = -1
    """Size and mtime of the fingerprint file when it was added (-1: unknown, so it is hashed)."""
    sources: tuple[SourceFile, ...] = ()

    @property
    def path(self) -> Path:
        return self.library / self.file

    @property
    def kind(self) -> str:
        return str(self.identity.get("kind") or "model")

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


def is_library(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / catalog.CATALOG).exists() or (folder / INDEX).exists()


def search_path(library: Path | None = None) -> list[Path]:
    """The library folders to search: ``[library]`` when given, else shipped + user."""
    if library is not None:
        return [Path(library)]
    out = []
    if is_library(SHIPPED):
        out.append(SHIPPED)
    out.append(user_library())
    return out


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return slug[:80]


def _read_only(folder: Path) -> bool:
    """Never written: the shipped registry (package data or the source tree's), or a folder we may not write."""
    try:
        real = folder.resolve()
        if real in (INSTALLED.resolve(), SOURCE.resolve()):
            return True
    except OSError:
        pass
    return not os.access(folder, os.W_OK)


def scheme_record(fp: Fingerprint) -> dict[str, Any]:
    """The scheme a fingerprint was made with, as the catalog records it (the sketch parameters, the
    sign generator and the seed tag of the signs)."""
    rec = dict(fp.scheme.to_json())
    made = fp.identity.get("scheme")
    if isinstance(made, dict) and made.get("signs"):
        rec["signs"] = made["signs"]
    rec["seed"] = str(made.get("seed", SIGN_SEED)) if isinstance(made, dict) else SIGN_SEED
    return rec


def same_scheme(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return bool(
            scheme_from_json(a) == scheme_from_json(b)
            and a.get("signs") == b.get("signs")
            and a.get("seed", SIGN_SEED) == b.get("seed", SIGN_SEED)
        )
    except (KeyError, TypeError, ValueError):
        return False


def describe_scheme(rec: dict[str, Any]) -> str:
    keys = ("k1", "k2", "samples", "exact_max", "block_budget", "oversample", "rounding", "signs", "seed")
    return ", ".join(f"{k}={rec.get(k)}" for k in keys if k in rec)


class Library:
    """One library folder (created on first write). Reads see the catalog as it was when the
    object was made; every write is one transaction."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.readonly = self.folder.is_dir() and _read_only(self.folder)
        self.version = catalog.VERSION
        self._unlink_after: list[str] = []
        self._written: list[str] = []
        self._entries = self._read()

    # ------------------------------------------------------------------ reading

    def _read(self) -> list[RefEntry]:
        if not (self.folder / catalog.CATALOG).exists() and (self.folder / INDEX).exists():
            if self.readonly:
                self.version = legacy.V1_VERSION
                return self._read_v1()
            legacy.upgrade_in_place(self.folder)
        if not (self.folder / catalog.CATALOG).exists():
            return []
        with self.connect() as con:
            return self._rows(con)

    def _read_v1(self) -> list[RefEntry]:
        listed = legacy.manifest_hashes(self.folder)
        return [
            RefEntry(e["name"], e["family"], e["official"], e["file"], e["identity"], self.folder,
                     fp_sha256=listed.get(e["file"]))
            for e in legacy.read_v1(self.folder)
        ]  # fmt: skip

    def _rows(self, con: sqlite3.Connection) -> list[RefEntry]:
        sources: dict[int, list[SourceFile]] = {}
        for ref_id, path, size, mtime, sha, quick in con.execute(
            "SELECT ref_id, path, size, mtime_ns, sha256, quick FROM sources ORDER BY path"
        ):
            sources.setdefault(ref_id, []).append(SourceFile(path, size, mtime, sha, quick))
        out = []
        for ref_id, name, family, official, file, size, mtime, sha, ident in con.execute(
            "SELECT id, name, family, official, file, fp_size, fp_mtime_ns, fp_sha256, identity FROM refs ORDER BY name"
        ):
            if Path(file).is_absolute() or ".." in Path(file).parts:
                raise LibraryError(f"{self.folder / catalog.CATALOG}: reference {name!r}: fingerprint path "
                                   f"{file!r} leaves the library folder")
            out.append(RefEntry(name, family, bool(official), file, json.loads(ident), self.folder,
                                sha or None, size, mtime, tuple(sources.get(ref_id, ()))))
        return out

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to the catalog (read-only in a folder that cannot be written)."""
        with catalog.connect(self.folder, readonly=self.readonly) as con:
            yield con

    def refresh(self) -> None:
        self._entries = self._read()

    @property
    def entries(self) -> list[RefEntry]:
        return list(self._entries)

    def get(self, name: str) -> RefEntry:
        for e in self._entries:
            if e.name == name:
                return e
        raise LibraryError(f"{self.folder}: no reference named {name!r}; 'sdf refs list' shows the names")

    def scheme(self) -> dict[str, Any] | None:
        """The fingerprint scheme of the library (None: nothing recorded yet)."""
        if not (self.folder / catalog.CATALOG).exists():
            return legacy.majority_scheme([e.to_json() for e in self._entries]) if self._entries else None
        with self.connect() as con:
            raw = catalog.get_meta(con, "scheme")
        return json.loads(raw) if raw else None

    def load(self, name: str) -> Fingerprint:
        return load_fingerprint(self.get(name).path)

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def writing(self, sweep: bool = True, reload: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction on the catalog (made first if need be). ``sweep``: delete the orphaned
        fingerprint files of a writer that died first; ``reload``: read the entries again afterwards
        (a bulk writer committing per file turns both off: each costs a pass over the library)."""
        if self.readonly or self.version != catalog.VERSION:
            raise LibraryError(f"{self.folder}: the library folder cannot be written (read-only); copy it to a "
                               "folder you can write, or use --library DIR")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / catalog.FINGERPRINTS).mkdir(exist_ok=True)
        catalog.create(self.folder)
        self._unlink_after, self._written = [], []
        still: set[str] = set()
        try:
            with catalog.connect(self.folder) as con:
                with catalog.write(con):
                    if sweep:
                        catalog.sweep_orphans(con, self.folder)
                    yield con
                if reload:
                    self._entries = self._rows(con)
                still = {str(r[0]) for r in con.execute("SELECT file FROM refs")} if self._unlink_after else set()
        except BaseException as err:
            for rel in self._written:  # rolled back: the files it wrote name nothing
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / rel).unlink()
            if isinstance(err, sqlite3.DatabaseError):
                raise LibraryError(
                    f"{self.folder / catalog.CATALOG}: cannot write the library catalog ({err})"
                ) from err
            raise
        finally:
            pending, self._unlink_after, self._written = self._unlink_after, [], []
        # Files the transaction stopped naming: deleted once it is committed (a kill before that
        # leaves an orphan, which the next writer deletes).
        for rel in pending:
            if rel not in still:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / rel).unlink()

    def add(
        self,
        fp: Fingerprint,
        name: str,
        official: bool = False,
        replace: bool = True,
        sources: Iterable[SourceFile] = (),
    ) -> RefEntry:
        """Store ``fp`` as ``name`` (``official``: the family's base), with the model files it was made
        from; one transaction. A fingerprint of another scheme than the library's is refused."""
        with self.writing() as con:
            self.add_in(con, fp, name, official, replace, sources)
        return self.get(name)

    def add_in(
        self,
        con: sqlite3.Connection,
        fp: Fingerprint,
        name: str,
        official: bool = False,
        replace: bool = True,
        sources: Iterable[SourceFile] = (),
    ) -> str:
        """:meth:`add` inside a transaction of :meth:`writing`; returns the fingerprint's file."""
        check_scheme(con, self.folder, fp, name)
        old = con.execute("SELECT id, file FROM refs WHERE name=?", (name,)).fetchone()
        if old is not None:
            if not replace:
                raise LibraryError(f"{self.folder}: a reference named {name!r} exists; remove it first")
            con.execute("DELETE FROM refs WHERE id=?", (old[0],))
        taken = {str(r[0]) for r in con.execute("SELECT file FROM refs")}
        file = f"{catalog.FINGERPRINTS}/{_slug(name)}.sdfp"
        n = 2
        while file in taken:
            file = f"{catalog.FINGERPRINTS}/{_slug(name)}-{n}.sdfp"
            n += 1
        identity = dict(fp.identity)
        identity["name"] = name
        self._written.append(file)
        fp = Fingerprint(fp.scheme, identity, fp.tensors)
        path = save_fingerprint(fp, self.folder / file)
        _fsync(path)
        record_vector(self.folder, file, fp)  # the search vector beside it (library/vecstore.py)
        st = path.stat()
        cur = con.execute(
            "INSERT INTO refs(name, family, official, kind, file, fp_size, fp_mtime_ns, fp_sha256, sha256, identity) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (name, fp.family, int(official), str(identity.get("kind") or "model"), file, st.st_size,
             st.st_mtime_ns, sha256_file(path), identity.get("sha256"),
             catalog.identity_json(_index_identity(identity))),
        )  # fmt: skip
        for src in sources:
            put_source(con, int(cur.lastrowid or 0), src)
        if old is not None and old[1] != file:
            self._unlink_after.append(str(old[1]))
        return file

    def remove(self, name: str, write: bool = True) -> None:
        entry = self.get(name)
        with self.writing() as con:
            if con.execute("DELETE FROM refs WHERE name=?", (name,)).rowcount:
                self._unlink_after.append(entry.file)

    def verify(self) -> list[str]:
        """Problems between the catalog and the files: damaged catalog, missing, modified or unlisted
        fingerprint files (one line each; empty when all agree)."""
        if self.version == legacy.V1_VERSION or not (self.folder / catalog.CATALOG).exists():
            if (self.folder / INDEX).exists() or (self.folder / MANIFEST_NAME).exists():
                return verify_manifest(self.folder)  # a v1 library, or a registry folder (reference_hashes/)
            return [f"{self.folder}: no library here"]
        problems: list[str] = []
        with self.connect() as con:
            check = [str(r[0]) for r in con.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            problems.append(f"catalog: {catalog.CATALOG} is damaged ({'; '.join(check[:3])})")
        for e in self._entries:
            try:
                got = sha256_file(e.path)
            except OSError:
                problems.append(f"missing: {e.file} (reference {e.name!r}) is in the catalog but not in {self.folder}")
                continue
            if got != e.fp_sha256:
                problems.append(f"modified: {e.file} (expected sha256 {e.fp_sha256}, got {got})")
        named = {e.file for e in self._entries}
        fps = self.folder / catalog.FINGERPRINTS
        for p in sorted(fps.iterdir()) if fps.is_dir() else []:
            rel = f"{catalog.FINGERPRINTS}/{p.name}"
            if rel not in named:
                problems.append(f"unlisted: {rel} is in {self.folder} but not in the catalog")
        return problems


def check_scheme(con: sqlite3.Connection, folder: Path, fp: Fingerprint, name: str) -> None:
    """Record the library's scheme with its first reference; refuse a fingerprint of another scheme."""
    got = scheme_record(fp)
    raw = catalog.get_meta(con, "scheme")
    if raw is None:
        catalog.set_meta(con, "scheme", json.dumps(got, sort_keys=True))
        return
    want = json.loads(raw)
    if not same_scheme(want, got):
        raise LibraryError(
            f"{name}: its fingerprint was made with another scheme ({describe_scheme(got)}) than the library "
            f"{folder} holds ({describe_scheme(want)}); fingerprints of different schemes cannot be compared. "
            "Fingerprint the model again with 'sdf refs add' or 'sdf index' (they use the library's scheme), "
            "or keep it in another --library."
        )


def source_file(path: Path, sha256: str | None) -> SourceFile | None:
    """The record of a model file (None for a folder, or when it cannot be read or has no hash)."""
    try:
        st = Path(path).stat()
        if not Path(path).is_file() or not sha256:
            return None
        return SourceFile(str(Path(path).absolute()), st.st_size, st.st_mtime_ns, sha256,
                          quick_signature(Path(path), st.st_size))
    except OSError:
        return None


def put_source(con: sqlite3.Connection, ref_id: int, src: SourceFile) -> None:
    """Record (or move) the model file ``src`` as a source of reference ``ref_id``."""
    con.execute(
        "INSERT INTO sources(path, ref_id, size, mtime_ns, sha256, quick) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(path) DO UPDATE SET ref_id=excluded.ref_id, size=excluded.size, mtime_ns=excluded.mtime_ns, "
        "sha256=excluded.sha256, quick=excluded.quick",
        (src.path, ref_id, src.size, src.mtime_ns, src.sha256, src.quick),
    )
    con.execute("DELETE FROM rejects WHERE path=?", (src.path,))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        "tokens",
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
    one family; nothing is loaded. Embeddings are catalogued but are not references to compare with."""
    seen: set[str] = set()
    out = []
    for folder in folders:
        for entry in Library(folder).entries:
            if entry.name in seen or (family is not None and entry.family != family) or entry.kind == "embedding":
                continue
            seen.add(entry.name)
            out.append(entry)
    return out


def load_reference(entry: RefEntry, samples_only: bool = False) -> Reference:
    """``entry``'s fingerprint read (``samples_only``: its coordinate samples alone, see
    :func:`~sdforensics.fingerprinting.fpfile.load_fingerprint`)."""
    with _collector_paused():
        return Reference(entry, load_fingerprint(entry.path, samples_only))


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
        if not is_library(folder):
            continue
        lib = Library(folder)
        recorded = lib.scheme() if lib.version == catalog.VERSION else None
        if recorded is not None:
            counts[json.dumps(recorded, sort_keys=True)] += len(lib.entries) or 1
            continue
        counts.update(_scheme_texts(e.identity.get("scheme") for e in lib.entries))
    return _most_common(counts)


def common_scheme(entries: Iterable[RefEntry]) -> Scheme | None:
    """The fingerprint scheme most of ``entries`` record in their identity (None: none records one)."""
    return _most_common(Counter(_scheme_texts(e.identity.get("scheme") for e in entries)))


def _scheme_texts(raws: Iterable[Any]) -> Iterator[str]:
    return (json.dumps(raw, sort_keys=True) for raw in raws if isinstance(raw, dict))


def _most_common(counts: Counter[str]) -> Scheme | None:
    for text, _ in counts.most_common():
        try:
            return scheme_from_json(json.loads(text))
        except (KeyError, TypeError, ValueError):
            continue
    return None


__all__ = [
    "Library",
    "SourceFile",
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
