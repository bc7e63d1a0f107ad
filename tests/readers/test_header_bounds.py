"""safetensors headers are bounded by element count before they are parsed (issue 20 defect 7).

A 100 MB header of 33 M empty objects took ``sdf analyze`` to 3.1 GB RSS (also with
``--identity``), a list of 50 M zeros to 2.5 GB in HTML mode; the values are now counted
(strings blanked, in C) and a header over the bound is refused before ``json.loads``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import sdf

from sdforensics.core.errors import CorruptFileError
from sdforensics.readers.safetensors_reader import MAX_HEADER_ELEMENTS, open_safetensors


def _file(path: Path, inner: bytes) -> Path:
    tensor = b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    header = b'{"__metadata__": {"x": ' + inner + b"}, " + tensor + b"}"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    return path


@pytest.mark.parametrize("item", [b"{}", b"0"])
def test_a_header_of_too_many_values_is_refused_before_parsing(tmp_path: Path, item: bytes) -> None:
    path = _file(tmp_path / "bomb.safetensors", b"[" + b",".join([item] * (MAX_HEADER_ELEMENTS + 10)) + b"]")
    with pytest.raises(CorruptFileError, match="JSON values"):
        open_safetensors(path)
    (tmp_path / "lib").mkdir()
    for args in (["--identity"], ["-f", "html", "-o", str(tmp_path / "r.html")], []):
        res = sdf("analyze", path, *args, "--library", tmp_path / "lib", "-q")
        assert res.exit_code == 2 and "JSON values" in res.stderr


def test_commas_inside_a_long_metadata_string_do_not_count(tmp_path: Path) -> None:
    text = b'"' + b"a," * (MAX_HEADER_ELEMENTS + 10) + b'"'
    with open_safetensors(_file(tmp_path / "ok.safetensors", text)) as ck:
        assert [i.name for i in ck.infos()] == ["w"]
