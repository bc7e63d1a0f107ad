"""Every hash equals an independent computation (hashlib, zlib, blake3)."""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import blake3
import torch
from conftest import sdf
from safetensors.torch import save_file

from conftest import empty_library, sdf
from sdforensics.model.hashing import FileDigester, hash_file


def _independent(path: Path, safetensors: bool) -> dict[str, str | None]:
    data = path.read_bytes()
    v1 = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8] if len(data) >= 0x110000 else None
    v3 = None
    if safetensors:
        n = struct.unpack("<Q", data[:8])[0]
        v3 = hashlib.sha256(data[8 + n :]).hexdigest()
    sha = hashlib.sha256(data).hexdigest()
    return {"sha256": sha, "autov2": sha[:10], "autov1": v1, "autov3": v3,
            "blake3": blake3.blake3(data).hexdigest(), "crc32": f"{zlib.crc32(data):08x}"}


def test_cli_hashes_equal_independent_computation(family: dict[str, Path]) -> None:
    path = family["ft2"]
    res = sdf("analyze", path, "--format", "json", "--library", empty_library(path.parent))
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)["file"]
    want = _independent(path, safetensors=True)
    for key, value in want.items():
        assert got[key] == value, key
    assert got["bytes"] == path.stat().st_size


def test_autov1_absent_for_small_files(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file({"a": torch.zeros(4)}, str(path))
    h = hash_file(path, autov3_start=None)
    assert h.autov1 is None
    assert h.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_digester_any_chunking_gives_the_same_hashes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # 2.3 MB, crosses the AutoV1 window
    d = FileDigester(autov3_start=1000)
    for i in range(0, len(data), 77_777):
        d.update(data[i : i + 77_777])
    h = d.finish()
    assert h.sha256 == hashlib.sha256(data).hexdigest()
    assert h.autov3 == hashlib.sha256(data[1000:]).hexdigest()
    assert h.autov1 == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert h.crc32 == f"{zlib.crc32(data):08x}"
    assert h.blake3 == blake3.blake3(data).hexdigest()
    _ = json  # (json used above)
