"""The pickle reader: real files, a hand-built SD-1.x checkpoint, legacy files, hostile files."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_pickles import (
    CASES,
    GOOD_STORAGES,
    OD,
    REAL_FILES,
    REALDATA,
    Entry,
    dumps,
    make_zip,
    sd1_checkpoint,
    tensor,
    torch_zip,
    write_case,
)

from sdforensics.core import errors
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.pickle_reader import PickleCheckpoint, open_pickle


def _flatten(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_pickle(path)
    return {info.name: t for info, t in ckpt.tensors()}


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_real_files_match_torch_load(path: Path) -> None:
    expected = _flatten(torch.load(path, map_location="cpu", weights_only=True))
    ckpt = open_pickle(path)
    assert isinstance(ckpt, Checkpoint)
    infos = {i.name: i for i in ckpt.infos()}
    assert set(infos) == set(expected)
    for name, t in expected.items():
        assert infos[name].shape == tuple(t.shape)
        assert infos[name].nbytes == t.numel() * t.element_size()
    got = _load(path)
    assert all(torch.equal(got[n], expected[n]) and got[n].dtype == expected[n].dtype for n in expected)
    assert ckpt.format().container == "pickle-zip"
    assert all(g.verdict == "safe" for g in ckpt.format().globals)


def test_realdata_index_covers_pickles() -> None:
    if not REALDATA.exists():
        pytest.skip("no shared/realdata")
    index = json.loads((REALDATA / "index.json").read_text())
    assert len(REAL_FILES) == sum(1 for k in index if k.endswith((".pt", ".bin", ".pth")))


def test_sd1_lightning_checkpoint_loads_without_lightning(tmp_path: Path) -> None:
    blob, expected = sd1_checkpoint()
    path = tmp_path / "sd15.ckpt"
    path.write_bytes(blob)
    ckpt = open_pickle(path)
    got = _load(path)
    assert list(got) == [i.name for i in ckpt.infos()]
    assert set(got) == set(expected)
    for name, arr in expected.items():
        assert np.array_equal(got[name].numpy(), arr), name
    assert got["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float16
    quals = {g.qualname: g.verdict for g in ckpt.format().globals}
    assert quals["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"] == "safe"
    assert quals["numpy.core.multiarray.scalar"] == "safe"
    assert quals["_codecs.encode"] == "safe"
    assert "pytorch_lightning" not in sys.modules


def test_storage_order_and_shared_views(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    sd = {
        "z_last": torch.ones(2),
        "a_view": base.t(),
        "m_base": base,
        "half": torch.zeros(3, dtype=torch.float16),
    }
    path = tmp_path / "my model.pt"  # any top-level folder name
    torch.save(sd, path)
    got = _load(path)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v) and got[k].dtype == v.dtype
    with zipfile.ZipFile(path) as z:
        order = [n.rsplit("/", 1)[1] for n in z.namelist() if "/data/" in n]
    assert len(order) == 3


@pytest.mark.parametrize("wrap", ["module", "model", "state_dict"])
def test_wrappers(tmp_path: Path, wrap: str) -> None:
    path = tmp_path / "w.pt"
    torch.save({wrap: {"x": torch.ones(2)}, "step": 3}, path)
    assert list(_load(path)) == ["x"]


def test_textual_inversion_and_list(tmp_path: Path) -> None:
    ti = tmp_path / "emb.pt"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.ones(1, 768)},
            "name": "x",
            "step": 10,
        },
        ti,
    )
    assert list(_load(ti)) == ["string_to_param.*"]
    lst = tmp_path / "lora.pt"
    torch.save([torch.ones(4, 2), torch.zeros(2, 4)], lst)
    assert [i.name for i in open_pickle(lst).infos()] == ["0", "1"]


def test_control_characters_in_names_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "ctl.pt"
    torch.save({"a\x1b[31m\nb": torch.ones(1)}, path)
    assert list(_load(path)) == ["a\x1b[31m\nb"]


def test_legacy_format(tmp_path: Path) -> None:
    sd = {
        "a": torch.arange(6.0).reshape(2, 3),
        "b": torch.arange(4, dtype=torch.int64),
        "c": torch.ones(3).half(),
    }
    sd["a_t"] = sd["a"].t()
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, path, _use_new_zipfile_serialization=False)
    ckpt = open_pickle(path)
    assert ckpt.format().container == "pickle-legacy"
    got = _load(path)
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in sd.items())
    data = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[:-5])
    with pytest.raises(errors.CorruptFileError, match="cut.ckpt"):
        open_pickle(tmp_path / "cut.ckpt")


def test_crc_mismatch_in_storage_found_when_reading(tmp_path: Path) -> None:
    pkl = dumps(OD([("w", tensor("0", "FloatStorage", 4, (2, 2)))]))
    path = tmp_path / "crc.ckpt"
    path.write_bytes(
        make_zip(
            [Entry("archive/data.pkl", pkl), Entry("archive/data/0", GOOD_STORAGES["0"], crc=0x12345678)]
        )
    )
    ckpt = open_pickle(path)
    with pytest.raises(errors.CorruptFileError, match="CRC"):
        list(ckpt.tensors())


def test_appended_blob_is_a_finding(tmp_path: Path) -> None:
    path = tmp_path / "poly.ckpt"
    path.write_bytes(
        torch_zip(
            dumps(OD([("w", tensor("0", "FloatStorage", 4, (2, 2)))])),
            GOOD_STORAGES,
            append=b"%PDF-1.4 trailing",
        )
    )
    ckpt = open_pickle(path)
    assert any("appended" in f for f in ckpt.format().findings)
    assert torch.equal(_load(path)["w"], torch.ones(2, 2))


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.ckpt"
    import os

    os.mkfifo(fifo)
    with pytest.raises(errors.CorruptFileError, match="pipe.ckpt"):
        open_pickle(fifo)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_file_is_refused(tmp_path: Path, case) -> None:  # type: ignore[no-untyped-def]
    path, marker = write_case(case, tmp_path)
    with pytest.raises(errors.SdfError) as info:
        ckpt: PickleCheckpoint = open_pickle(path)
        list(ckpt.tensors())
    assert type(info.value).__name__ == case.error, str(info.value)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert not marker.exists()


LIVE = [
    "os_system_reduce_p0",
    "os_system_reduce_p4",
    "stack_global_p5",
    "inst_p0",
    "obj_p2",
    "memo_binput_memoize_mix",
    "safetensors_named_pickle",
]


@pytest.mark.parametrize("name", LIVE)
def test_planted_payloads_are_live(tmp_path: Path, name: str) -> None:
    """The markers mean something: the real unpickler, in a child process, does run the payload."""
    case = next(c for c in CASES if c.name == name)
    path, marker = write_case(case, tmp_path)
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True, timeout=60)
    assert marker.exists()
