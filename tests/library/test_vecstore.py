"""The search-vector file (library/vecstore.py): what is appended is what a later search reads back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sdforensics.library import vecstore
from sdforensics.library.vecstore import HEADER, VectorFile
from sdforensics.library.vectors import SearchVector
from sdforensics.model.architecture import block_map_of


def _vec(vf: VectorFile, seed: int) -> SearchVector:
    rng = np.random.default_rng(seed)
    present = rng.random(vf.projector.n_blocks) > 0.3
    return SearchVector(rng.standard_normal(vf.projector.dim).astype(np.float32), present)


def test_sd1_and_sdxl_vectors_are_read_back_the_newest_record_winning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SD1's layout (27 block names) did not fit the first 256-byte header, so no SD1 vector was ever
    read back. A key ending in a zero byte (1 SHA-256 in 256) is found too, and a re-written key gives
    its newest vector, also when the file is read in several chunks."""
    monkeypatch.setattr(vecstore, "CHUNK", 64)
    for arch in ("sd1", "sdxl"):
        vf = VectorFile(tmp_path / arch, block_map_of(arch))
        keys = [hashlib.sha256(str(i).encode()).digest() for i in range(300)]
        keys[7] = keys[7][:31] + b"\0"
        first = [_vec(vf, i) for i in range(300)]
        assert vf.append(list(zip(keys, first, strict=True)))
        newer = _vec(vf, 1000)
        assert vf.append([(keys[3], newer)])
        assert vf.path.stat().st_size == HEADER + 301 * vf.record.itemsize
        missing = hashlib.sha256(b"not stored").digest()
        raw, present, found = VectorFile(tmp_path / arch, block_map_of(arch)).lookup(
            np.array([keys[3], missing, keys[7], *keys[10:20]], dtype="S32")
        )
        assert found.tolist() == [True, False] + [True] * 11
        assert np.array_equal(raw[0], newer.raw) and np.array_equal(present[0], newer.present)
        assert not raw[1].any() and not present[1].any()
        for row, i in zip(range(2, 13), [7, *range(10, 20)], strict=True):
            assert np.array_equal(raw[row], first[i].raw) and np.array_equal(present[row], first[i].present)
        with open(vf.path, "ab") as fh:  # a writer killed mid-record: the partial record is ignored
            fh.write(keys[3] + b"\1" * 100)
        raw, _, found = vf.lookup(np.array([keys[3], keys[299]], dtype="S32"))
        assert found.all() and np.array_equal(raw[0], newer.raw) and np.array_equal(raw[1], first[299].raw)


def test_a_file_with_another_layout_is_ignored_then_rewritten(tmp_path: Path) -> None:
    """A vector file written with the old 256-byte header is not trusted; the next append starts it
    again with the right header."""
    vf = VectorFile(tmp_path, block_map_of("sd1"))
    vf.path.parent.mkdir(parents=True)
    vf.path.write_bytes(vf.head[:256] + b"\0" * vf.record.itemsize * 3)
    key = hashlib.sha256(b"a").digest()
    assert not vf.lookup(np.array([key], dtype="S32"))[2].any()
    vec = _vec(vf, 1)
    assert vf.append([(key, vec)])
    raw, _, found = vf.lookup(np.array([key], dtype="S32"))
    assert found.tolist() == [True] and np.array_equal(raw[0], vec.raw)
    assert vf.path.stat().st_size == HEADER + vf.record.itemsize
