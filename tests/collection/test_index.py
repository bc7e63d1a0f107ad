"""`sdf index`: a models folder into the library, incrementally, resumably, hostile files skipped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import sdf
from hostile_pickles import GOOD_STORAGES, dumps, system_call, torch_zip
from safetensors.numpy import save_file

from sdforensics.library.store import Library, reference_entries

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata"
LORA = REAL / "cloneofsimo-lora" / "lora_disney.safetensors"


def _folder(family: dict[str, Path], tmp_path: Path, names: tuple[str, ...] = ("base", "ft1", "ft2")) -> Path:
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    for n in names:
        shutil.copy2(family[n], folder / ("sub" if n == "ft2" else "") / f"{n}.safetensors")
    return folder


def _index(*args: str | Path) -> dict:
    res = sdf("index", *args, "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_index_a_folder_then_rerun_reads_nothing(family: dict[str, Path], tmp_path: Path) -> None:
    folder = _folder(family, tmp_path)
    save_file({"emb_params": np.random.default_rng(0).standard_normal((2, 768)).astype(np.float32)},
              str(folder / "my-style.safetensors"))
    (folder / "notes.txt").write_text("trigger words: none\n")
    marker = tmp_path / "MARKER"
    (folder / "evil.ckpt").write_bytes(torch_zip(dumps(system_call(marker)), GOOD_STORAGES))
    if LORA.exists():
        shutil.copy2(LORA, folder / "disney.safetensors")
    lib = tmp_path / "lib"
    doc = _index(folder, "--library", lib)
    added = {d["name"] for d in doc["fingerprinted"]}
    assert added == {"base", "ft1", "ft2", "my-style"} | ({"disney"} if LORA.exists() else set())
    skipped = {Path(d["path"]).name: d["reason"] for d in doc["skipped"]}
    assert set(skipped) == {"evil.ckpt", "notes.txt"}
    assert skipped["evil.ckpt"].startswith("dangerous pickle, not opened") and "system" in skipped["evil.ckpt"]
    assert skipped["notes.txt"].startswith("not a model file")
    assert not marker.exists()
    entries = {e.name: e for e in Library(lib).entries}
    assert entries["ft2"].sources[0].path == str(folder / "sub" / "ft2.safetensors")
    assert entries["ft2"].sources[0].sha256 == entries["ft2"].identity["sha256"]
    assert entries["my-style"].kind == "embedding"
    assert "my-style" not in {e.name for e in reference_entries([lib])}  # catalogued, never compared
    if LORA.exists():
        assert entries["disney"].kind == "lora"
    # a second run: nothing read, nothing fingerprinted; the skipped files are listed again
    again = _index(folder, "--library", lib)
    assert again["fingerprinted"] == [] and again["bytes_read"] == 0
    assert again["unchanged"] == len(added) and {Path(d["path"]).name for d in again["skipped"]} == set(skipped)
    assert sdf("index", folder, "--library", lib, "--strict", "-q").exit_code == 1
    # the indexed library serves an analysis
    res = sdf("analyze", family["ft1"], "--library", lib, "-f", "json", "-q")
    assert res.exit_code == 0 and json.loads(res.stdout)["identical"]["unet"] == "ft1"


def test_a_renamed_file_is_recognised_by_hash_and_a_touched_one_by_content(
    family: dict[str, Path], tmp_path: Path
) -> None:
    folder = _folder(family, tmp_path)
    lib = tmp_path / "lib"
    _index(folder, "--library", lib)
    before = {e.name: e.fp_sha256 for e in Library(lib).entries}
    (folder / "ft1.safetensors").rename(folder / "sub" / "ft1-renamed.safetensors")
    os.utime(folder / "base.safetensors", ns=(1, 1_000_000_000))
    doc = _index(folder, "--library", lib)
    assert doc["fingerprinted"] == []
    assert doc["moved"] == [{"path": str(folder / "sub" / "ft1-renamed.safetensors"), "name": "ft1"}]
    assert doc["same_content"] == [str(folder / "base.safetensors")]
    lib_now = Library(lib)
    assert {e.name: e.fp_sha256 for e in lib_now.entries} == before
    assert [s.path for s in lib_now.get("ft1").sources] == [str(folder / "sub" / "ft1-renamed.safetensors")]
    assert _index(folder, "--library", lib)["unchanged"] == 3


def _content(lib: Path) -> dict[str, tuple]:
    """Names, sources and the fingerprint files' bytes (as recorded in the catalog, and on disk)."""
    out = {}
    for e in Library(lib).entries:
        on_disk = hashlib.sha256(e.path.read_bytes()).hexdigest()
        out[e.name] = (e.fp_sha256, on_disk, tuple((s.path, s.sha256) for s in e.sources))
    return out


def _count(lib: Path) -> int:
    try:
        con = sqlite3.connect(f"{(lib / 'library.sqlite').as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute("SELECT count(*) FROM refs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_library(family: dict[str, Path], tmp_path: Path) -> None:
    folder = _folder(family, tmp_path, tuple(family))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _index(folder, "--library", whole)
    cmd = [sys.executable, "-m", "sdforensics.cli", "index", str(folder), "--library", str(killed), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while _count(killed) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _count(killed)
    assert 1 <= done < len(family), "killed before the first commit or after the last"
    assert Library(killed).verify() == [] or all(p.startswith("unlisted:") for p in Library(killed).verify())
    doc = _index(folder, "--library", killed)
    assert len(doc["fingerprinted"]) == len(family) - done and doc["unchanged"] == done
    assert _content(killed) == _content(whole)
    assert Library(killed).verify() == []  # the file in flight when killed was swept


def test_index_refuses_a_missing_path(tmp_path: Path) -> None:
    res = sdf("index", tmp_path / "nowhere", "--library", tmp_path / "lib")
    assert res.exit_code == 2 and "nowhere: no such file or folder" in res.stderr


def test_an_official_base_the_registry_knows_is_marked_official(family: dict[str, Path], tmp_path: Path) -> None:
    from sdforensics.collection.index import index_paths
    from sdforensics.library.manifest import sha256_file
    from sdforensics.library.registry import KnownModel, Registry

    folder = _folder(family, tmp_path)
    sha = sha256_file(folder / "base.safetensors")
    reg = Registry([KnownModel("SD 1.5 (test)", "sd1", "checkpoint", "v1-5.safetensors", None, sha, None, None,
                               "test", official=True)], [])
    summary = index_paths([folder], tmp_path / "lib", registry=reg)
    assert summary.official == ["SD 1.5 (test)"]
    lib = Library(tmp_path / "lib")
    assert lib.get("SD 1.5 (test)").official and not lib.get("ft1").official


def test_diffusers_folders_are_one_model_each_and_progress_goes_to_stderr(tmp_path: Path) -> None:
    from sdforensics.synth.specs import write_family

    folder = tmp_path / "models"
    write_family(folder, "sd1", 16, 1, 5, "diffusers")
    res = sdf("index", folder, "--library", tmp_path / "lib", "-f", "json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)  # stdout: the JSON document alone
    assert sorted((Path(d["path"]).name, d["name"]) for d in doc["fingerprinted"]) == [("base", "base"), ("ft1", "ft1")]
    lines = res.stderr.splitlines()
    assert lines[-1].startswith("index: 2/2 files, 0.0") and "MB/s" in lines[-1] and "ETA" in lines[-2]
    again = json.loads(sdf("index", folder, "--library", tmp_path / "lib", "-f", "json", "-q").stdout)
    assert again["unchanged"] == 2 and again["fingerprinted"] == []
