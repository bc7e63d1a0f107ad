"""The static scanner and the opcode walker it shares with the reader."""

from __future__ import annotations

import json
import pickle
import pickletools
import zipfile
from pathlib import Path

import pytest
from hostile_pickles import (
    CASES,
    REAL_FILES,
    REALDATA,
    dumps,
    sd1_checkpoint,
    system_call,
    torch_zip,
    write_case,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sdforensics.core import errors
from sdforensics.readers.pickle_ops import verdict, walk
from sdforensics.readers.scan import exit_code, render_scan_text, scan_path, scan_to_json


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file_verdict(tmp_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    path, marker = write_case(case, tmp_path)
    report = scan_path(path)
    fs = report.files[0]
    assert fs.verdict == case.scan, (fs.globals, fs.findings, fs.error)
    if case.global_:
        assert any(g.qualname == case.global_ and g.verdict == "dangerous" for g in fs.globals)
    assert exit_code(report) == {"dangerous": 1, "suspicious": 1, "error": 2, "clean": 0}[case.scan]
    json.dumps(scan_to_json(report))
    assert not marker.exists()


def test_sd1_checkpoint_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "sd15.ckpt"
    path.write_bytes(sd1_checkpoint()[0])
    report = scan_path(path)
    assert report.verdict == "clean" and exit_code(report) == 0
    fs = report.files[0]
    assert fs.format == "pickle-zip" and not fs.findings
    names = {g.qualname for g in fs.globals}
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in names
    assert all(g.verdict == "safe" and g.member == "archive/data.pkl" for g in fs.globals)


def test_realdata_folder_is_clean() -> None:
    if not REALDATA.exists():
        pytest.skip("no shared/realdata")
    report = scan_path(REALDATA)
    assert report.verdict == "clean" and exit_code(report) == 0
    formats = {f.path.suffix: f.format for f in report.files}
    assert formats[".safetensors"] == "safetensors" and formats[".pt"] == "pickle-zip"
    assert len([f for f in report.files if f.format == "pickle-zip"]) == len(REAL_FILES)
    assert "not a pickle" in render_scan_text(report)


def test_folder_with_one_hostile_file(tmp_path: Path) -> None:
    (tmp_path / "ok.pt").write_bytes(sd1_checkpoint()[0])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bin").write_bytes(dumps(system_call(tmp_path / "m")))
    (tmp_path / "README.md").write_text("cats")
    report = scan_path(tmp_path)
    assert [f.path.name for f in report.files] == ["ok.pt", "x.bin"]
    assert report.verdict == "dangerous" and exit_code(report) == 1
    text = render_scan_text(report)
    assert "DANGEROUS" in text and "os.system" in text


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(errors.SdfError, match="nope"):
        scan_path(tmp_path / "nope.ckpt")


def test_render_escapes_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "ansi.pt"
    path.write_bytes(torch_zip(dumps(system_call(tmp_path / "m"))[:2] + b"cos\x1b[2J\nsystem\n)R.", {}))
    text = render_scan_text(scan_path(path))
    assert "\x1b" not in text and "\\x1b" in text


def test_verdicts() -> None:
    assert verdict("torch._utils", "_rebuild_tensor_v2") == "safe"
    assert verdict("torch", "BFloat16Storage") == "safe"
    assert verdict("collections", "OrderedDict") == "safe"
    assert verdict("os", "system") == verdict("posix", "system") == verdict("nt", "system") == "dangerous"
    assert verdict("commands", "getoutput") == "dangerous"  # Python 2 name mapped to subprocess
    assert verdict("__builtin__", "getattr") == "dangerous"
    assert verdict("torch", "serialization.load") == "dangerous"  # dotted name (protocol 4)
    assert verdict("os.path", "join") == "dangerous"
    assert verdict("mypackage", "MyClass") == "suspicious"
    assert verdict("unknown", "unknown") == "dangerous"


@pytest.mark.parametrize("proto", range(6))
def test_walker_finds_what_genops_finds(proto: int) -> None:
    import collections

    obj = {"a": collections.OrderedDict(x=[1, 2.5, b"y", (1, {2})]), "b": frozenset([3]), "c": "é" * 300}
    data = pickle.dumps(obj, protocol=proto)
    result = walk(data)
    assert result.stopped and result.error is None and result.end == len(data)
    assert result.n_opcodes == sum(1 for _ in pickletools.genops(data))
    expected = {tuple(arg.split(" ")) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    found = {(g.module, g.name) for g in result.globals}
    assert expected <= found and ("collections", "OrderedDict") in found


@pytest.mark.parametrize("path", REAL_FILES[:3], ids=lambda p: p.name)
def test_walker_on_real_pickles(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    result = walk(data)
    assert result.stopped and not result.notes
    assert {g.module for g in result.globals} <= {"torch", "torch._utils", "collections"}


_VALID = dumps(system_call(Path("/tmp/never")), 4) + pickle.dumps({"k": [1, (2, 3)]}, protocol=2)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(0, len(_VALID)), pos=st.integers(0, len(_VALID) - 1), byte=st.integers(0, 255))
def test_walker_never_raises_on_damaged_pickles(cut: int, pos: int, byte: int) -> None:
    damaged = bytearray(_VALID[:cut])
    if pos < len(damaged):
        damaged[pos] = byte
    result = walk(bytes(damaged))
    assert result.stopped or result.error
    if cut > 20 and pos > 20:  # the dangerous global comes first: still reported
        assert any(g.name == "system" for g in result.globals)
