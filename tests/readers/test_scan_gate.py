"""``sdf scan`` as a gate (issue 20): exit 0 only for a complete scan of allowlisted globals.

The corpus test (``test_scan_corpus.py``) checks every hostile class against torch.load; these
tests pin the cases that need a folder, a size, or the CLI: symlinked Hugging Face snapshots,
links that escape, text files named like models, empty folders, scale (40,000 tensors), and how
the torch member is resolved.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import sdf
from hostile_pickles import GOOD_STORAGES, Entry, dumps, good_state_pickle, make_zip, system_call, torch_zip

from sdforensics.readers.scan import exit_code, scan_path
from sdforensics.readers.zip_archive import ZipLayout, ZipMember, read_zip_layout
from sdforensics.readers.zip_members import resolve_main_pickle


def _hf_snapshot(tmp_path: Path, payload: bytes) -> Path:
    """models--org--name/{blobs/<sha>, snapshots/<rev>/unet/model.ckpt -> ../../../blobs/<sha>}."""
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_bytes(payload)
    snap = repo / "snapshots" / "rev1" / "unet"
    snap.mkdir(parents=True)
    (snap / "model.ckpt").symlink_to("../../../blobs/abc123")
    return repo / "snapshots" / "rev1"


def test_hf_cache_snapshot_of_links_is_scanned(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    snap = _hf_snapshot(tmp_path, torch_zip(dumps(system_call(marker)), GOOD_STORAGES))
    report = scan_path(snap)
    assert [f.path.name for f in report.files] == ["model.ckpt"]  # was: 0 files, clean
    assert report.files[0].verdict == "dangerous" and exit_code(report) == 1
    assert not marker.exists()


def test_clean_hf_snapshot_exits_0(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save(OrderedDict(w=torch.ones(2)), buf)
    report = scan_path(_hf_snapshot(tmp_path, buf.getvalue()))
    assert len(report.files) == 1 and exit_code(report) == 0


def test_link_out_of_the_folder_is_not_followed_and_not_clean(tmp_path: Path) -> None:
    outside = tmp_path / "outside.ckpt"
    outside.write_bytes(torch_zip(good_state_pickle(), GOOD_STORAGES))
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.ckpt").symlink_to(outside)
    (folder / "loop.ckpt").symlink_to(folder / "loop.ckpt")
    report = scan_path(folder)
    assert exit_code(report) == 1
    texts = {f.path.name: " ".join(f.incomplete) for f in report.files}
    assert "outside" in texts["m.ckpt"] and "loops" in texts["loop.ckpt"]


def test_folder_without_a_model_file_is_not_clean(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here")
    report = scan_path(tmp_path)
    assert report.files == () and exit_code(report) == 2


def test_text_named_safetensors_exits_2(tmp_path: Path) -> None:
    """Issue 15 item 13: a file that is not a model is an error (was SUSPICIOUS, exit 0)."""
    path = tmp_path / "text.safetensors"
    path.write_text("just some notes, not weights\n")
    res = sdf("scan", path)
    assert res.exit_code == 2, res.stdout
    assert "not a model file" in res.stdout


def test_valid_safetensors_exits_0_and_broken_header_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "ok.safetensors"
    good.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    assert exit_code(scan_path(good)) == 0
    assert exit_code(scan_path(bad)) == 2


def test_torch_save_of_40000_tensors_scans_clean(tmp_path: Path) -> None:
    """Was refused for exceeding 1 M opcodes: limits scale with the records the zip declares."""
    path = tmp_path / "many.pt"
    torch.save({f"t{i}": torch.zeros(1) for i in range(40_000)}, path)
    report = scan_path(path)
    assert exit_code(report) == 0, (report.files[0].findings, report.files[0].incomplete)


def test_zip_member_lookup_is_a_dict() -> None:
    """Opening a 20k-member zip was quadratic (a list search per storage)."""
    members = tuple(ZipMember(f"archive/data/{i}", i, 0, 0, 0, 0, 0, 0, 0) for i in range(200_000))
    layout = ZipLayout(members, (), 0)

    class NoScan(tuple):  # a lookup that walked the members would touch this
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise AssertionError("member() searched the member list")

    object.__setattr__(layout, "members", NoScan(members))
    assert all(layout.member(f"archive/data/{i}") is members[i] for i in range(0, 200_000, 10))


@pytest.mark.parametrize(("names", "want"), [
    (["archive/data.pkl", "archive/version"], "archive/data.pkl"),
    (["archive/version", "archive/DATA.PKL"], "archive/DATA.PKL"),   # torch's lookup ignores case
    (["x/data.pkl", "archive/data.pkl"], "x/data.pkl"),              # the folder is the first entry's
    (["archive/data.pkl", "archive/Data.pkl"], None),                # ambiguous: refused
    (["data.pkl", "archive/data.pkl"], None),                        # first entry not in a folder
])
def test_main_pickle_resolved_as_torch_does(names: list[str], want: str | None) -> None:
    members = [ZipMember(n, i, 0, 0, 0, 0, 0, 0, 0) for i, n in enumerate(names)]
    got = resolve_main_pickle(members)
    assert (got.member.name if got.member else None) == want
    assert (got.problem is None) == (want is not None)


def test_upper_case_pickle_is_walked(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "m.ckpt"
    path.write_bytes(make_zip([Entry("archive/DATA.PKL", dumps(system_call(marker))),
                               Entry("archive/version", b"3\n")]))
    with open(path, "rb") as f:
        assert resolve_main_pickle(read_zip_layout(f).members).member is not None
    report = scan_path(path)
    assert report.files[0].verdict == "dangerous" and exit_code(report) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_in_a_folder_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.ckpt")
    report = scan_path(tmp_path / "pipe.ckpt")
    assert exit_code(report) == 2 and "not a regular file" in (report.files[0].error or "")


@pytest.mark.parametrize("qual", [
    "logging.config.dictConfig", "logging.config._resolve", "torch._utils._import_dotted_name",
    "uuid._get_command_stdout", "_osx_support._read_output", "typing._eval_type", "dataclasses._create_fn",
    "os.spawnlp", "os.posix_spawnp", "codecs.open", "mailcap.findmatch", "imaplib.IMAP4_stream",
])
def test_defect_4_globals_are_named_dangerous(qual: str) -> None:
    """Each runs code or touches files (the corpus proves it); unknown callables already exit 1,
    the denylist sharpens the verdict to 'dangerous'."""
    from sdforensics.readers.pickle_ops import verdict

    module, name = qual.rsplit(".", 1)
    assert verdict(module, name) == "dangerous"
