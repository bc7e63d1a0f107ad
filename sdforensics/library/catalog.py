"""The library catalog: one SQLite database, ``library.sqlite``, beside ``fingerprints/*.sdfp``.

SQLite (Python's own ``sqlite3``) in WAL mode: every write is one transaction (all or nothing, even
on ``kill -9`` or power loss), any number of readers see a consistent snapshot while one writer
works, and there is no server and no extra dependency. Writers take the database's write lock with
``BEGIN IMMEDIATE`` before they touch ``fingerprints/``, so a fingerprint file that no row names
can only be left by a writer that died: the next writer deletes it (:func:`sweep_orphans`).

Tables (schema version in ``PRAGMA user_version`` and ``meta``):

* ``meta`` -- ``format``, ``version``, the fingerprint ``scheme`` (JSON, with the seed tag of the
  sketch signs) every reference of the library was made with, ``upgraded_from``;
* ``refs`` -- one row per reference: name, family, official, kind (model, lora, embedding), the
  fingerprint file (relative path, size, mtime_ns, sha256) and the identity (JSON);
* ``sources`` -- the model files a reference was made from: path, size, mtime_ns, sha256 and a
  quick signature (SHA-256 of the first and last MiB) that finds moved files without a full read;
* ``rejects`` -- files ``sdf index`` looked at and skipped, with the one-line reason, so that an
  unchanged file is not read again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdforensics.core.errors import LibraryError

CATALOG = "library.sqlite"
FORMAT = "sdforensics.library"
VERSION = 2
"""Library format version: 1 was ``library.json`` + ``MANIFEST.sha256``; 2 is this catalog."""
FINGERPRINTS = "fingerprints"

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE refs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        family TEXT,
        official INTEGER NOT NULL DEFAULT 0,
        kind TEXT NOT NULL DEFAULT 'model',
        file TEXT NOT NULL UNIQUE,
        fp_size INTEGER NOT NULL,
        fp_mtime_ns INTEGER NOT NULL,
        fp_sha256 TEXT NOT NULL,
        sha256 TEXT,
        identity TEXT NOT NULL)""",
    "CREATE INDEX refs_sha256 ON refs(sha256)",
    """CREATE TABLE sources (
        path TEXT PRIMARY KEY,
        ref_id INTEGER NOT NULL REFERENCES refs(id) ON DELETE CASCADE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        quick TEXT)""",
    "CREATE INDEX sources_ref ON sources(ref_id)",
    "CREATE INDEX sources_size ON sources(size)",
    "CREATE TABLE rejects (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, "
    "reason TEXT NOT NULL)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {}
"""Statements that take a catalog from version ``v - 1`` to ``v`` (``{3: (...)}`` when a later
version adds a table): applied in order, in one transaction, when a writer opens an older catalog."""


def catalog_path(folder: Path) -> Path:
    return Path(folder) / CATALOG


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        # A folder we cannot write (a wheel's package data): no -wal/-shm can be made there, and no
        # one writes it, so SQLite may treat the file as immutable.
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60)
    con = sqlite3.connect(str(path), isolation_level=None, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns (power loss included)
    con.execute("PRAGMA foreign_keys=ON")
    return con


@contextlib.contextmanager
def connect(folder: Path, readonly: bool = False) -> Iterator[sqlite3.Connection]:
    """An open catalog connection (checked: format and version), closed on exit."""
    path = catalog_path(folder)
    try:
        con = _connect(path, readonly)
    except sqlite3.Error as err:
        raise LibraryError(f"{path}: cannot open the library catalog ({err})") from err
    try:
        check_version(con, path, readonly)
        yield con
    except sqlite3.DatabaseError as err:
        raise LibraryError(f"{path}: the library catalog is damaged or locked ({err}); run 'sdf refs verify'") from err
    finally:
        con.close()


def create(folder: Path) -> None:
    """An empty catalog in ``folder`` (which exists), unless one is there already."""
    path = catalog_path(folder)
    if path.exists():
        return
    tmp = path.with_name(f".{CATALOG}.{os.getpid()}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    init_file(tmp, {})
    try:
        os.link(tmp, path)  # atomic create-if-absent: a concurrent creator's catalog is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


def init_file(path: Path, meta: dict[str, str], rows: list[tuple[Any, ...]] | None = None) -> None:
    """Write a fresh catalog file at ``path`` (rollback journal: one file, ready to be renamed)."""
    con = sqlite3.connect(str(path), isolation_level=None)
    try:
        con.execute("BEGIN")
        for stmt in _SCHEMA:
            con.execute(stmt)
        con.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?)",
            [("format", FORMAT), ("version", str(VERSION)), *meta.items()],
        )
        if rows:
            con.executemany(
                "INSERT INTO refs(name, family, official, kind, file, fp_size, fp_mtime_ns, fp_sha256, sha256, "
                "identity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        con.execute(f"PRAGMA user_version={VERSION}")
        con.execute("COMMIT")
    finally:
        con.close()
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_version(con: sqlite3.Connection, path: Path, readonly: bool) -> None:
    """Refuse a catalog that is not ours or newer than this sdforensics; bring an older one up to date."""
    try:
        version = int(con.execute("PRAGMA user_version").fetchone()[0])
        fmt = con.execute("SELECT value FROM meta WHERE key='format'").fetchone()
    except sqlite3.DatabaseError as err:
        raise LibraryError(f"{path}: not an sdforensics library catalog ({err})") from err
    if not fmt or fmt[0] != FORMAT:
        raise LibraryError(f"{path}: not an sdforensics library catalog")
    if version > VERSION:
        raise LibraryError(
            f"{path}: library catalog version {version}; this sdforensics reads versions up to {VERSION}. "
            "Upgrade sdforensics."
        )
    if version < VERSION:
        if readonly:
            return  # an older read-only catalog: its tables are a subset of ours
        con.execute("BEGIN IMMEDIATE")
        try:
            for v in range(version + 1, VERSION + 1):
                for stmt in MIGRATIONS.get(v, ()):
                    con.execute(stmt)
            con.execute("UPDATE meta SET value=? WHERE key='version'", (str(VERSION),))
            con.execute(f"PRAGMA user_version={VERSION}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


@contextlib.contextmanager
def write(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, the database's write lock held from its start (``BEGIN IMMEDIATE``):
    committed when the block ends, rolled back on any error."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def get_meta(con: sqlite3.Connection, key: str) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(con: sqlite3.Connection, key: str, value: str) -> None:
    con.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value))


def sweep_orphans(con: sqlite3.Connection, folder: Path) -> list[str]:
    """Delete fingerprint files no row names (left by a writer killed between writing the file and
    committing): call inside :func:`write`, so no live writer is between those two steps."""
    fps = Path(folder) / FINGERPRINTS
    if not fps.is_dir():
        return []
    named = {str(r[0]) for r in con.execute("SELECT file FROM refs")}
    gone = []
    for p in sorted(fps.iterdir()):
        rel = f"{FINGERPRINTS}/{p.name}"
        if p.is_file() and rel not in named and (p.suffix in (".sdfp", ".part") or p.name.endswith(".sdfp.part")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            gone.append(rel)
    return gone


def identity_json(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"))
