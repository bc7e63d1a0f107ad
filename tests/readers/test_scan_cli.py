"""``sdf scan`` and ``sdf analyze`` on pickles, through the CLI: exit codes, output, no code run.

Exit codes as picklescan users expect: 0 clean, 1 dangerous found, 2 error (one line on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import empty_library, sdf
from hostile_pickles import GOOD_STORAGES, dumps, inst_payload, sd1_checkpoint, system_call, torch_zip

from sdforensics.synth.specs import family_specs, write_ckpt


@pytest.fixture(scope="module")
def sd1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real SD-1.x layout (1/16 width) written by torch.save, with Lightning training fields."""
    base = family_specs("sd1", width=16, finetunes=1, seed=5)["base"]
    return write_ckpt(base, tmp_path_factory.mktemp("ckpt") / "sd15-tiny.ckpt")


@pytest.fixture
def lightning_ckpt(tmp_path: Path) -> Path:
    """A hand-built checkpoint naming pytorch_lightning, numpy and argparse globals (as SD 1.x files do)."""
    path = tmp_path / "v1-5-pruned.ckpt"
    path.write_bytes(sd1_checkpoint()[0])
    return path


def _evil(folder: Path, name: str = "evil.ckpt") -> tuple[Path, Path]:
    marker = folder / f"{name}.MARKER"
    path = folder / name
    path.write_bytes(torch_zip(dumps(system_call(marker)), GOOD_STORAGES))
    return path, marker


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def test_scan_clean_torch_save_checkpoint_exits_0(sd1_ckpt: Path) -> None:
    res = sdf("scan", sd1_ckpt)
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "CLEAN (pickle-zip)" in res.stdout and "verdict: clean" in res.stdout
    assert "safe       torch._utils._rebuild_tensor_v2" in res.stdout
    assert "dangerous" not in res.stdout.replace("0 dangerous", "")


def test_scan_lightning_and_numpy_globals_are_safe(lightning_ckpt: Path) -> None:
    res = sdf("scan", lightning_ckpt)
    assert res.exit_code == 0, res.stdout
    for name in ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint", "numpy.core.multiarray.scalar",
                 "numpy.dtype", "_codecs.encode"):
        assert f"safe       {name}" in res.stdout, name


@pytest.mark.parametrize("how", ["reduce-in-zip", "inst-protocol-0", "stack-global-plain"])
def test_scan_dangerous_pickle_exits_1_and_names_the_global(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.ckpt"
    if how == "reduce-in-zip":
        path.write_bytes(torch_zip(dumps(system_call(marker)), GOOD_STORAGES))
    elif how == "inst-protocol-0":
        path.write_bytes(inst_payload(marker, 0))
    else:
        path.write_bytes(dumps(system_call(marker, "STACK"), 4))
    res = sdf("scan", path)
    assert res.exit_code == 1, res.stdout + res.stderr
    assert "DANGEROUS" in res.stdout and "dangerous  os.system" in res.stdout
    assert not marker.exists()


def test_scan_folder_lists_every_file(tmp_path: Path, sd1_ckpt: Path) -> None:
    (tmp_path / "clean.ckpt").write_bytes(sd1_ckpt.read_bytes())
    (tmp_path / "sub").mkdir()
    evil, marker = _evil(tmp_path / "sub", "x.bin")
    (tmp_path / "weights.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    (tmp_path / "notes.txt").write_text("not a model")
    res = sdf("scan", tmp_path)
    assert res.exit_code == 1
    listed = [line.split(": ", 1)[0] for line in res.stdout.splitlines() if not line.startswith(" ")][:-1]
    assert sorted(Path(p).name for p in listed) == ["clean.ckpt", "weights.safetensors", "x.bin"]
    assert f"{evil}: DANGEROUS" in res.stdout and f"{tmp_path / 'clean.ckpt'}: CLEAN" in res.stdout
    assert "3 file(s) scanned, 1 dangerous; verdict: dangerous" in res.stdout
    assert not marker.exists()


def test_scan_json_parses(tmp_path: Path, lightning_ckpt: Path) -> None:
    _evil(tmp_path)
    res = sdf("scan", tmp_path, "--format", "json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["schema"] == "sdforensics.scan/1" and doc["verdict"] == "dangerous" and doc["exit_code"] == 1
    by_name = {Path(f["path"]).name: f for f in doc["files"]}
    assert set(by_name) == {"evil.ckpt", "v1-5-pruned.ckpt"}
    assert by_name["v1-5-pruned.ckpt"]["verdict"] == "clean"
    evil = by_name["evil.ckpt"]
    assert evil["verdict"] == "dangerous"
    assert {"module": "os", "name": "system", "verdict": "dangerous", "member": "archive/data.pkl"} in evil["globals"]


def test_scan_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    res = sdf("scan", tmp_path / "nope.ckpt")
    assert res.exit_code == 2
    line = _one_error_line(res.stderr)
    assert "nope.ckpt" in line and res.stdout == ""


def test_analyze_refuses_a_dangerous_file_in_one_line(tmp_path: Path) -> None:
    path, marker = _evil(tmp_path)
    res = sdf("analyze", path, "--library", empty_library(tmp_path), "-q")
    assert res.exit_code == 2
    line = _one_error_line(res.stderr)
    assert str(path) in line and "os.system" in line and "refusing" in line
    assert res.stdout == ""
    assert not marker.exists()


def test_analyze_json_shows_the_scan_verdict_of_a_clean_pickle(lightning_ckpt: Path, tmp_path: Path) -> None:
    res = sdf("analyze", lightning_ckpt, "--format", "json", "--library", empty_library(tmp_path), "-q")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    globals_ = {g["global"]: g["verdict"] for g in doc["pickle"]["globals"]}
    assert globals_["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"] == "safe"
    assert globals_["numpy.core.multiarray.scalar"] == "safe"
    assert set(globals_.values()) == {"safe"}
    assert all(g["member"] == "archive/data.pkl" for g in doc["pickle"]["globals"])


def test_analyze_sd1_ckpt_reads_weights_and_lists_globals(sd1_ckpt: Path, tmp_path: Path) -> None:
    res = sdf("analyze", sd1_ckpt, "--format", "json", "--library", empty_library(tmp_path), "-q")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["architecture"]["family"] == "sd1"
    assert {g["global"] for g in doc["pickle"]["globals"]} >= {"torch._utils._rebuild_tensor_v2",
                                                              "collections.OrderedDict"}


def test_safetensors_has_no_pickle_section(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    res = sdf("scan", path)
    assert res.exit_code == 0 and "not a pickle" in res.stdout
