"""The library store: SQLite catalog + fingerprint files, v1 upgrade, schemes, refs commands on it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import sdf

from sdforensics.api import fingerprint_model
from sdforensics.core.errors import LibraryError
from sdforensics.fingerprinting.fingerprint import Scheme
from sdforensics.fingerprinting.fpfile import save_fingerprint
from sdforensics.library import refcheck, store
from sdforensics.library.manifest import write_manifest
from sdforensics.library.store import Library


def _v1_library(library: Path, folder: Path) -> Path:
    """The session library written the way sdforensics 0.1 did: library.json + MANIFEST.sha256."""
    folder.mkdir()
    entries = []
    for e in Library(library).entries:
        shutil.copy2(e.path, folder / "x")
        (folder / "fingerprints").mkdir(exist_ok=True)
        (folder / "x").rename(folder / e.file)
        entries.append(e.to_json())
    doc = {"format": "sdforensics.library", "version": 1, "entries": entries}
    (folder / "library.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", "utf-8")
    write_manifest(folder)
    return folder


def test_a_v1_library_is_upgraded_in_place_with_a_backup(
    library: Path, family: dict[str, Path], tmp_path: Path
) -> None:
    old = _v1_library(library, tmp_path / "old")
    v1_text = (old / "library.json").read_text()
    res = sdf("refs", "list", "--library", old, "-f", "json")
    assert res.exit_code == 0
    assert {r["name"] for r in json.loads(res.stdout)["references"]} == {"sd15", *(f"ft{i}" for i in range(1, 7))}
    assert (old / "library.sqlite").exists() and not (old / "library.json").exists()
    assert (old / "library.json.v1.bak").read_text() == v1_text and (old / "MANIFEST.sha256.v1.bak").exists()
    assert sdf("refs", "verify", "--library", old, "-q").exit_code == 0
    lib = Library(old)
    assert lib.get("sd15").official and lib.scheme() is not None
    doc = json.loads(sdf("analyze", family["ft3"], "--library", old, "-f", "json", "-q").stdout)
    assert doc["identical"]["unet"] == "ft3"


def test_a_tampered_v1_file_stays_left_out_after_the_upgrade(library: Path, tmp_path: Path) -> None:
    old = _v1_library(library, tmp_path / "old")
    shutil.copyfile(old / "fingerprints" / "ft3.sdfp", old / "fingerprints" / "ft2.sdfp")  # after the manifest
    good, dropped = refcheck.changed_references(Library(old).entries)
    assert [d.split(":")[0] for d in dropped] == ["ft2"] and len(good) == 6
    assert any(p.startswith("modified: fingerprints/ft2.sdfp") for p in Library(old).verify())


def test_the_shipped_v1_library_is_read_not_upgraded(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only library (the shipped registry in a wheel) keeps reading as version 1."""
    shipped = _v1_library(library, tmp_path / "shipped")
    monkeypatch.setattr(store, "SOURCE", shipped)
    lib = Library(shipped)
    assert lib.version == 1 and len(lib.entries) == 7 and not (shipped / "library.sqlite").exists()
    assert lib.verify() == [] and (shipped / "library.json").exists()
    good, dropped = refcheck.changed_references(lib.entries)
    assert len(good) == 7 and dropped == []
    with pytest.raises(LibraryError, match="cannot be written"):
        lib.remove("ft1")


def test_changed_references_reads_only_files_whose_stat_moved(
    library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old check hashed every fingerprint file on every analysis; now only changed ones."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    calls: list[Path] = []
    real = refcheck.sha256_file
    monkeypatch.setattr(refcheck, "sha256_file", lambda p: calls.append(p) or real(p))
    good, dropped = refcheck.changed_references(Library(lib).entries)
    assert len(good) == 7 and dropped == [] and calls == []
    entry = Library(lib).get("ft2")
    shutil.copyfile(Library(lib).get("ft3").path, entry.path)
    good, dropped = refcheck.changed_references(Library(lib).entries)
    assert calls == [entry.path] and len(good) == 6 and dropped[0].startswith("ft2: its fingerprint")


def test_a_fingerprint_of_another_scheme_is_refused(library: Path, family: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    _, fp = fingerprint_model(family["ft1"], device="cpu", scheme=Scheme(block_budget=8192))
    other = save_fingerprint(fp, tmp_path / "other.sdfp")
    res = sdf("refs", "import", other, "--name", "odd", "--library", lib)
    assert res.exit_code == 2
    assert "made with another scheme (k1=32, k2=32, samples=1024, exact_max=16384, block_budget=8192" in res.stderr
    assert "block_budget=114688" in res.stderr and "odd" not in {e.name for e in Library(lib).entries}
    assert sdf("refs", "verify", "--library", lib, "-q").exit_code == 0  # nothing half-written


def test_refs_commands_on_the_catalog(family: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    assert sdf("refs", "add", family["base"], "--name", "sd15", "--official", "--library", lib, "-q").exit_code == 0
    assert sdf("refs", "add", family["ft1"], "--name", "one", "--library", lib, "-q").exit_code == 0
    rows = json.loads(sdf("refs", "list", "--library", lib, "-f", "json").stdout)["references"]
    assert [(r["name"], r["official"]) for r in rows] == [("one", False), ("sd15", True)]
    assert rows[0]["paths"] == [str(family["ft1"].absolute())]
    assert sdf("refs", "remove", "one", "--library", lib).exit_code == 0
    assert not (lib / "fingerprints" / "one.sdfp").exists() and [e.name for e in Library(lib).entries] == ["sd15"]
    (lib / "fingerprints" / "stray.sdfp").write_bytes(b"left by a killed writer")
    res = sdf("refs", "verify", "--library", lib)
    assert res.exit_code == 1 and "unlisted: fingerprints/stray.sdfp" in res.stderr
    assert sdf("refs", "add", family["ft2"], "--name", "two", "--library", lib, "-q").exit_code == 0
    assert not (lib / "fingerprints" / "stray.sdfp").exists()  # the next writer swept it
    assert sdf("refs", "verify", "--library", lib, "-q").exit_code == 0
    Library(lib).get("two").path.write_bytes(b"edited")
    res = sdf("refs", "verify", "--library", lib)
    assert res.exit_code == 1 and "modified: fingerprints/two.sdfp" in res.stderr


def test_a_newer_catalog_is_refused(library: Path, tmp_path: Path) -> None:
    import sqlite3

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    con = sqlite3.connect(lib / "library.sqlite")
    con.execute("PRAGMA user_version=99")
    con.close()
    res = sdf("refs", "list", "--library", lib)
    assert res.exit_code == 2 and "library catalog version 99; this sdforensics reads versions up to 2" in res.stderr


def test_readers_see_the_last_commit_while_a_writer_works(library: Path, tmp_path: Path) -> None:
    """WAL: a reader opened during a write transaction sees the library as it was, never half of it,
    and a write that fails leaves nothing behind."""
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    writer = Library(lib)
    fp = writer.load("ft1")
    with pytest.raises(RuntimeError, match="stopped"), writer.writing() as con:
        writer.add_in(con, fp, "ft1-again")
        assert con.execute("SELECT count(*) FROM refs").fetchone()[0] == 8
        seen = [e.name for e in Library(lib).entries]  # another connection, mid-transaction
        assert len(seen) == 7 and "ft1-again" not in seen
        raise RuntimeError("stopped")
    assert "ft1-again" not in {e.name for e in Library(lib).entries}
    assert Library(lib).verify() == []  # the rolled-back write took its fingerprint file with it
    writer.add(fp, "ft1-again")
    assert Library(lib).verify() == [] and len(Library(lib).entries) == 8


def test_refs_add_fingerprints_with_the_library_scheme(family: dict[str, Path], tmp_path: Path) -> None:
    """A library made with an earlier scheme keeps growing: refs add uses the scheme it records."""
    lib = Library(tmp_path / "lib")
    _, fp = fingerprint_model(family["base"], device="cpu", scheme=Scheme(block_budget=8192))
    lib.add(fp, "sd15", official=True)
    assert sdf("refs", "add", family["ft1"], "--name", "one", "--library", lib.folder, "-q").exit_code == 0
    assert Library(lib.folder).load("one").scheme == Scheme(block_budget=8192)
