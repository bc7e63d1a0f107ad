"""``sdf index``: every model under some folders into a library, incrementally and resumably.

The parent process is the library's only writer: it plans a :class:`~.task.FileTask` per file the
catalog does not already describe (same path, size and mtime: nothing to do), hands them to an
:class:`~.engine.Engine`, and commits each result in its own transaction as it arrives (the
fingerprint file written and synced first, inside the transaction's write lock). A run killed at
any point loses only the files in flight; the next run skips everything committed.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdforensics.collection.discover import discover
from sdforensics.collection.engine import Engine, LocalEngine
from sdforensics.collection.task import FileResult, FileTask, run_task, stat_key
from sdforensics.core.errors import LibraryError
from sdforensics.library.registry import Registry, shipped_registry
from sdforensics.library.store import Library, SourceFile, put_source
from sdforensics.readers.remote import is_url

SCHEMA = "sdforensics.index/1"


@dataclass
class IndexSummary:
    library: Path
    files: int = 0
    """Model files and folders found."""
    unchanged: int = 0
    """Already in the catalog with the same size and mtime: not read."""
    fingerprinted: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reference name)`` of files fingerprinted in this run."""
    official: list[str] = field(default_factory=list)
    """Names of the references marked official (family bases the registry knows by SHA-256)."""
    same: list[str] = field(default_factory=list)
    """Paths whose mtime changed but whose content did not (hashed, not fingerprinted)."""
    moved: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reference name)``: a catalogued file found at a new path (moved, renamed or copied)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, one-line reason)``: not a model, unreadable, hostile."""
    bytes_read: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "library": str(self.library),
            "files": self.files,
            "unchanged": self.unchanged,
            "fingerprinted": [{"path": p, "name": n, "official": n in self.official} for p, n in self.fingerprinted],
            "same_content": self.same,
            "moved": [{"path": p, "name": n} for p, n in self.moved],
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Progress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    seconds: float
    last: FileResult | None = None

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes_done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.bytes_total - self.bytes_done) / self.rate if self.rate > 0 else None


def index_paths(
    paths: Sequence[Path | str],
    library: Path,
    engine: Engine | None = None,
    progress: Callable[[Progress], None] | None = None,
    device: str = "cpu",
    registry: Registry | None = None,
    threads: int | None = None,
) -> IndexSummary:
    """Index every model under ``paths`` into the library folder ``library`` (see the module docstring).

    A file the known-model ``registry`` (default: the shipped one) lists as an official family base
    (by SHA-256) is stored under the registry's name and marked official, as ``sdf refs
    build-official`` does, so the analysis measures changes from it. ``threads``: torch CPU threads
    per file (give each of N parallel workers its share of the cores)."""
    start = time.monotonic()
    known = registry if registry is not None else shipped_registry()
    lib = Library(library)
    with lib.writing():  # creates the catalog, sweeps what a killed run left
        pass
    urls = [str(p) for p in paths if is_url(p)]  # read where they are (readers.remote)
    local = [Path(p) for p in paths if not is_url(p)]
    found = discover(local, lib.folder)
    summary = IndexSummary(lib.folder, files=len(found.models) + len(urls))
    summary.skipped += [(str(p), why) for p, why in found.not_models]
    with lib.connect() as con:
        tasks = _plan(con, found.models, lib.scheme(), device, summary, threads)
        tasks += _plan_urls(con, urls, lib.scheme(), device, summary, threads)
    total = sum(t.size for t in tasks)
    done_bytes = 0
    if progress is not None:
        progress(Progress(0, len(tasks), 0, total, 0.0))
    for done_files, result in enumerate((engine or LocalEngine()).map(run_task, tasks), start=1):
        _commit(lib, result, summary, known)
        done_bytes += result.size
        summary.bytes_read += result.bytes_read
        if progress is not None:
            progress(Progress(done_files, len(tasks), done_bytes, total, time.monotonic() - start, result))
    _forget_vanished(lib, local, found.models)
    summary.seconds = time.monotonic() - start
    return summary


def _plan(
    con: sqlite3.Connection,
    models: Sequence[Path],
    scheme: dict[str, Any] | None,
    device: str,
    summary: IndexSummary,
    threads: int | None = None,
) -> list[FileTask]:
    known = {str(r[0]): (int(r[1]), int(r[2]), str(r[3])) for r in
             con.execute("SELECT path, size, mtime_ns, sha256 FROM sources")}  # fmt: skip
    rejected = {str(r[0]): (int(r[1]), int(r[2]), str(r[3])) for r in
                con.execute("SELECT path, size, mtime_ns, reason FROM rejects")}  # fmt: skip
    by_size: dict[int, list[tuple[str, str]]] = {}
    for size, quick, sha in con.execute("SELECT size, quick, sha256 FROM sources WHERE quick IS NOT NULL"):
        by_size.setdefault(int(size), []).append((str(quick), str(sha)))
    tasks = []
    for path in models:
        key = str(path)
        try:
            size, mtime, is_dir = stat_key(path)
        except OSError as err:
            summary.skipped.append((key, f"cannot read: {err.strerror or err}"))
            continue
        old = known.get(key)
        if old is not None and old[:2] == (size, mtime):
            summary.unchanged += 1
            continue
        rej = rejected.get(key)
        if rej is not None and rej[:2] == (size, mtime):
            summary.skipped.append((key, rej[2]))
            continue
        recorded = old[2] if old is not None and old[0] == size and not is_dir else None
        peers = () if is_dir else tuple(sorted(set(by_size.get(size, ()))))
        tasks.append(FileTask(key, size, mtime, is_dir, recorded, peers, scheme, device, threads))
    return tasks


def _plan_urls(
    con: sqlite3.Connection,
    urls: Sequence[str],
    scheme: dict[str, Any] | None,
    device: str,
    summary: IndexSummary,
    threads: int | None = None,
) -> list[FileTask]:
    """A URL the catalog already records is not read again (no request is made to plan)."""
    tasks = []
    for url in dict.fromkeys(urls):
        if con.execute("SELECT 1 FROM sources WHERE path=?", (url,)).fetchone():
            summary.unchanged += 1
            continue
        tasks.append(FileTask(url, 0, 0, False, None, (), scheme, device, threads))
    return tasks


def _commit(lib: Library, r: FileResult, summary: IndexSummary, registry: Registry) -> None:
    """One result, one transaction."""
    src = SourceFile(r.path, r.size, r.mtime_ns, r.sha256, r.quick)
    with lib.writing(sweep=False, reload=False) as con:
        if r.status == "skipped":
            con.execute(
                "INSERT INTO rejects(path, size, mtime_ns, reason) VALUES (?, ?, ?, ?) ON CONFLICT(path) DO UPDATE "
                "SET size=excluded.size, mtime_ns=excluded.mtime_ns, reason=excluded.reason",
                (r.path, r.size, r.mtime_ns, r.reason),
            )
            con.execute("DELETE FROM sources WHERE path=?", (r.path,))
            summary.skipped.append((r.path, r.reason))
            return
        if r.status == "same":
            con.execute("UPDATE sources SET mtime_ns=? WHERE path=?", (r.mtime_ns, r.path))
            summary.same.append(r.path)
            return
        row = con.execute("SELECT id, name FROM refs WHERE sha256=? ORDER BY id LIMIT 1", (r.sha256,)).fetchone()
        if row is not None:  # a catalogued file at a new path (or found twice in this run)
            put_source(con, int(row[0]), src)
            _drop_vanished_sources(con, int(row[0]))
            summary.moved.append((r.path, str(row[1])))
            return
        if r.fingerprint is None:
            raise LibraryError(f"{r.path}: no reference has its sha256 {r.sha256[:12]} any more; index it again")
        entry = registry.by_sha256(r.sha256) if len(r.sha256) == 64 else None
        official = entry is not None and entry.official
        name = _unique_name(con, entry.name if entry is not None and official else Path(r.path).stem)
        lib.add_in(con, r.fingerprint, name, official=official, replace=False, sources=[src])
        summary.fingerprinted.append((r.path, name))
        if official:
            summary.official.append(name)


def _unique_name(con: sqlite3.Connection, stem: str) -> str:
    name, n = stem or "model", 2
    while con.execute("SELECT 1 FROM refs WHERE name=?", (name,)).fetchone():
        name = f"{stem}-{n}"
        n += 1
    return name


def _drop_vanished_sources(con: sqlite3.Connection, ref_id: int) -> None:
    """A reference's recorded files that are gone from disk (it moved): forget those paths."""
    for (path,) in con.execute("SELECT path FROM sources WHERE ref_id=?", (ref_id,)).fetchall():
        if not is_url(path) and not Path(path).exists():
            con.execute("DELETE FROM sources WHERE path=?", (path,))


def _forget_vanished(lib: Library, roots: Sequence[Path], present: Sequence[Path]) -> None:
    """Recorded files under the indexed folders that are no longer there: their paths are forgotten
    (the references stay: a fingerprint outlives the file it was made from)."""
    here = {str(p) for p in present}
    prefixes = [str(Path(r).absolute()) for r in roots]
    with lib.connect() as con:
        gone = [
            str(p) for (p,) in con.execute("SELECT path FROM sources UNION SELECT path FROM rejects")
            if str(p) not in here and any(str(p) == r or str(p).startswith(r.rstrip("/") + "/") for r in prefixes)
            and not Path(str(p)).exists()
        ]  # fmt: skip
    if gone:
        with lib.writing() as con:
            con.executemany("DELETE FROM sources WHERE path=?", [(p,) for p in gone])
            con.executemany("DELETE FROM rejects WHERE path=?", [(p,) for p in gone])
