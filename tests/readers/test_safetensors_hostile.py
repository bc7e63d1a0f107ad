"""Malformed and hostile safetensors files: each gives exit 2 and one clear line, or a finding.

Cases follow ../shared/BAD_INPUTS.md 1-15; every file is generated here (no binary blobs).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import empty_library, sdf


def st(header: dict | bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else (header if isinstance(header, str) else json.dumps(header)).encode() \
        if not isinstance(header, bytes) else header
    n = len(raw) if length is None else length
    return struct.pack("<Q", n) + raw + data


def f32(name: str, shape: list, begin: int, end: int) -> dict:
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}}


GOOD = {**f32("a", [2], 0, 8), **f32("b", [2], 8, 16)}

BAD: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "shorter_than_8": lambda: b"\x01\x02\x03",
    "header_len_beyond_file": lambda: st(GOOD, b"\0" * 16, length=10_000),
    "header_len_2_63": lambda: st(GOOD, b"\0" * 16, length=2**63),
    "header_len_over_cap": lambda: st(GOOD, b"\0" * 16, length=200 * 1024 * 1024),
    "header_not_utf8": lambda: st(b'{"\xff": 1}'),
    "header_bom": lambda: st("\ufeff" + json.dumps(GOOD), b"\0" * 16),
    "header_nul_padding": lambda: st(json.dumps(GOOD).encode() + b"\0\0\0", b"\0" * 16),
    "header_array": lambda: st("[]"),
    "header_truncated_json": lambda: st("{"),
    "header_trailing_garbage": lambda: st("{}xx"),
    "header_deep_nesting": lambda: st("{\"a\":" + "[" * 100_000 + "]" * 100_000 + "}"),
    "duplicate_name_same": lambda: st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                      '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
    "duplicate_name_other_offsets": lambda: st('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                               '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', b"\0" * 16),
    "duplicate_metadata": lambda: st('{"__metadata__":{},"__metadata__":{},"a":{"dtype":"F32","shape":[2],'
                                     '"data_offsets":[0,8]}}', b"\0" * 8),
    "metadata_not_object": lambda: st({"__metadata__": [1], **f32("a", [2], 0, 8)}, b"\0" * 8),
    "unknown_dtype": lambda: st({"a": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "lowercase_dtype": lambda: st({"a": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "missing_dtype": lambda: st({"a": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "missing_shape": lambda: st({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8),
    "missing_offsets": lambda: st({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
    "negative_shape": lambda: st(f32("a", [-2], 0, 8), b"\0" * 8),
    "float_shape": lambda: st(f32("a", [2.0], 0, 8), b"\0" * 8),
    "bool_shape": lambda: st(f32("a", [True, 2], 0, 8), b"\0" * 8),
    "huge_offset": lambda: st(f32("a", [2], 0, 2**70), b"\0" * 8),
    "nan_literal": lambda: st('{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}}', b"\0" * 8),
    "overlap": lambda: st({**f32("a", [2], 0, 8), **f32("b", [2], 4, 12)}, b"\0" * 12),
    "aliasing_dos": lambda: st({f"t{i}": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} for i in range(1000)},
                               b"\0" * 8),
    "gap": lambda: st({**f32("a", [2], 0, 8), **f32("b", [2], 12, 20)}, b"\0" * 20),
    "end_before_begin": lambda: st(f32("a", [0], 8, 0), b"\0" * 8),
    "first_not_at_zero": lambda: st(f32("a", [2], 4, 12), b"\0" * 12),
    "size_mismatch": lambda: st(f32("a", [3], 0, 8), b"\0" * 8),
    "shape_overflow": lambda: st(f32("a", [2**40, 2**40, 2**40], 0, 8), b"\0" * 8),
    "missing_bytes_at_end": lambda: st(GOOD, b"\0" * 10),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_safetensors_gives_exit_2_and_one_line(case: str, tmp_path: Path) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(BAD[case]())
    res = sdf("analyze", path, "--library", empty_library(tmp_path))
    assert res.exit_code == 2, (case, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and path.name in lines[0], lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_trailing_bytes_are_a_finding_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "polyglot.safetensors"
    path.write_bytes(st(GOOD, b"\0" * 16 + b"PK\x03\x04appended zip"))
    res = sdf("analyze", path, "--format", "json", "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert any("trailing bytes" in p["message"] for p in doc["problems"])


def test_zero_dim_and_scalar_tensors_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "zero.safetensors"
    path.write_bytes(st({**f32("empty", [2, 0], 0, 0), **f32("scalar", [], 0, 4)}, b"\0" * 4))
    res = sdf("analyze", path, "--format", "json", "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["tensors"]["count"] == 2


def test_nonfinite_and_control_characters_are_reported_escaped(tmp_path: Path) -> None:
    values = struct.pack("<4f", float("nan"), float("inf"), 1.0, 0.0)
    name = "evil\x1b[31mname"
    path = tmp_path / "nan.safetensors"
    path.write_bytes(st({"__metadata__": {"note": "\x1b]0;pwned\x07"}, **f32(name, [4], 0, 16)}, values))
    res = sdf("analyze", path, "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout
    assert "1 NaN and 1 Inf" in res.stdout
    assert "evil\\x1b[31mname" in res.stdout


def test_non_string_metadata_is_shown_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "meta.safetensors"
    path.write_bytes(st({"__metadata__": {"n": 3, "nested": {"a": 1}}, **f32("a", [2], 0, 8)}, b"\0" * 8))
    res = sdf("analyze", path, "--format", "json", "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["metadata"]["raw"]["n"] == "3"
    assert any("not a string" in p["message"] for p in doc["problems"])


def test_many_tiny_tensors_header_is_handled_quickly(tmp_path: Path) -> None:
    n = 40_000  # SD checkpoints hold a few thousand; more than 50,000 is refused (test_bad_inputs case 14)
    header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(st(header, b"\0" * n))
    from sdforensics.readers.safetensors_reader import open_safetensors

    with open_safetensors(path) as ck:
        assert len(ck.infos()) == n


def test_file_truncated_after_open_is_an_error_not_a_crash(tmp_path: Path) -> None:
    from sdforensics.core.errors import CorruptFileError
    from sdforensics.readers.safetensors_reader import open_safetensors

    path = tmp_path / "shrinks.safetensors"
    path.write_bytes(st(GOOD, b"\0" * 16))
    ck = open_safetensors(path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 6)
    with pytest.raises(CorruptFileError, match="ended inside tensor"):
        list(ck.tensors())
    ck.close()
