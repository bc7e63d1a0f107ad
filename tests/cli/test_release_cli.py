"""A new user's first hour (issue 15): every mistake is one line and exit 2, every answer says what to do."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import sdf


def _one_line_error(res: object, *words: str) -> None:
    lines = res.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert res.exit_code == 2, (res.exit_code, res.stderr)  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in res.stderr and "bug in sdforensics" not in res.stderr  # type: ignore[attr-defined]
    for w in words:
        assert w in lines[0], lines[0]


def test_version_and_short_help() -> None:
    from sdforensics import __version__

    res = sdf("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"sdforensics {__version__}"
    for args in (["-h"], ["analyze", "-h"], ["refs", "import", "-h"], ["refs", "remove", "-h"], ["synth", "family", "-h"],
                 ["compare", "-h"], ["scan", "-h"]):
        res = sdf(*args)
        assert res.exit_code == 0 and "Usage:" in res.stdout, args
        assert "<bool>" not in res.stdout and "list[" not in res.stdout and "<str>" not in res.stdout, res.stdout
        assert "<path>" not in res.stdout, res.stdout  # an argument is its metavar alone: MODEL, not MODEL <path>
    imp = sdf("refs", "import", "-h").stdout
    assert "--official" in imp and "family's official base" in imp  # every option documented


def test_bad_choices_are_one_line(family: dict[str, Path], tmp_path: Path) -> None:
    _one_line_error(sdf("synth", "family", tmp_path / "x", "--family", "sd9"), "'sd9'", "'sd1', 'sd2', 'sdxl'")
    _one_line_error(sdf("analyze", family["ft1"], "--format", "xml"), "'xml'", "'text', 'json', 'html'")
    _one_line_error(sdf("analyze", family["ft1"], "--bogus"), "--bogus")
    assert not (tmp_path / "x").exists()


def test_out_is_checked_before_any_work(family: dict[str, Path], tmp_path: Path) -> None:
    res = sdf("analyze", family["ft1"], "-f", "html", "-o", tmp_path / "nonexistent" / "r.html")
    _one_line_error(res, "does not exist")
    assert "analyze" not in res.stderr.split("error:")[0]  # no progress: nothing was read
    _one_line_error(sdf("analyze", family["ft1"], "-o", tmp_path), "folder")


def test_missing_library_is_an_error_and_an_empty_one_says_how_to_fill_it(family: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    _one_line_error(sdf("analyze", family["ft1"], "--library", tmp_path / "does-not-exist"), "does not exist")
    _one_line_error(sdf("refs", "list", "--library", tmp_path / "does-not-exist"), "does not exist")
    (tmp_path / "empty").mkdir()
    res = sdf("analyze", family["ft1"], "--library", tmp_path / "empty", "-q")
    assert res.exit_code == 0
    assert "the reference library is empty" in res.stdout and "sdf refs add" in res.stdout and "--official" in res.stdout


def test_demo_prints_follow_up_commands_that_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = sdf("demo", "-q")
    assert res.exit_code == 0, res.stderr
    tail = res.stdout.split("Next (the demo library is")[1].splitlines()[1:]
    cmds = [shlex.split(line.strip()) for line in tail if line.strip().startswith("sdf ")]
    assert [c[1] for c in cmds] == ["analyze", "analyze", "refs", "compare"]
    first = sdf(*cmds[0][1:], "-q")
    assert "Recipe: 0.5 x ft1 + 0.3 x ft2 + 0.2 x ft3" in first.stdout, first.stdout
    assert sdf(*cmds[1][1:], "-q").exit_code == 0 and (tmp_path / "sdf-demo" / "report.html").is_file()
    listed = sdf(*cmds[2][1:]).stdout
    assert all(n in listed for n in ("sd15-base", "ft1", "ft2", "ft3", "ft4"))
    compared = sdf(*cmds[3][1:]).stdout  # the library's base is found: change-from-base cosines
    assert "(the library's sd15-base)" in compared and "change cos" in compared


def test_compare_refuses_other_architectures_and_shows_change_from_base(family: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from sdforensics.synth.specs import Base, write_safetensors

    xl = write_safetensors(Base("sdxl", width=32, seed=1), tmp_path / "xl.safetensors")
    _one_line_error(sdf("compare", family["ft1"], xl), "different architectures")
    raw = sdf("compare", family["ft1"], family["ft2"])
    assert raw.exit_code == 0 and "--base FILE" in raw.stdout
    doc = json.loads(sdf("compare", family["ft1"], family["ft2"], "--base", family["base"], "-f", "json").stdout)
    raw_cos = [b["cosine"] for b in doc["blocks"].values()]
    delta = [b["delta_cosine"] for b in doc["blocks"].values()]
    assert min(raw_cos) > 0.99  # raw cosines say little
    assert max(delta) < 0.95  # two independent fine-tunes: their changes differ
    child = json.loads(sdf("compare", family["ft1"], family["ft6"], "--base", family["base"], "-f", "json").stdout)
    assert min(b["delta_cosine"] for b in child["blocks"].values()) > max(delta)  # ft6 is a child of ft1


def test_compare_takes_the_family_base_from_the_library(family: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    base = shutil.copy2(family["base"], tmp_path / "base.safetensors")
    lib = tmp_path / "lib"
    assert sdf("refs", "add", base, "--name", "sd15-base", "--official", "--library", lib, "-q").exit_code == 0
    doc = json.loads(sdf("compare", family["ft1"], family["ft2"], "--library", lib, "-f", "json").stdout)
    given = json.loads(sdf("compare", family["ft1"], family["ft2"], "--base", base, "-f", "json").stdout)
    assert doc["base_reference"] == "sd15-base" and doc["base"] == str(base) and given["base_reference"] is None
    assert doc["blocks"] == given["blocks"]  # the same change-from-base cosines as with --base
    text = sdf("compare", family["ft1"], family["ft2"], "--library", lib).stdout
    assert "(the library's sd15-base)" in text and "change cos" in text
    Path(base).write_bytes(Path(base).read_bytes())  # the file changed since it was added: not trusted
    raw = sdf("compare", family["ft1"], family["ft2"], "--library", lib)
    assert raw.exit_code == 0 and "change cos" not in raw.stdout and "--official" in raw.stdout
    assert sdf("compare", family["ft1"], family["ft2"], "--library", tmp_path / "nope").exit_code == 2


def test_refs_add_warns_on_overwrite_and_duplicate(family: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    assert sdf("refs", "add", family["ft1"], "--name", "a", "--library", lib, "-q").stderr == ""
    res = sdf("refs", "add", family["ft2"], "--name", "a", "--library", lib, "-q")
    assert res.exit_code == 0 and "warning: replacing the existing reference 'a'" in res.stderr
    res = sdf("refs", "add", family["ft2"], "--name", "b", "--library", lib, "-q")
    assert res.exit_code == 0 and "already in the library as 'a'" in res.stderr


def test_a_changed_reference_is_left_out_and_named(library: Path, family: dict[str, Path], tmp_path: Path) -> None:
    from sdforensics.synth.specs import Merge, family_specs, write_safetensors

    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    specs = family_specs("sd1", width=16, finetunes=6, seed=3)
    mix = write_safetensors(Merge(((0.6, specs["ft1"]), (0.4, specs["ft2"]))), tmp_path / "mix.safetensors")
    from sdforensics.library.store import Library

    index = Library(lib)
    shutil.copyfile(index.get("ft3").path, index.get("ft2").path)  # ft2's file swapped for ft3's
    res = sdf("analyze", mix, "--library", lib, "-q")
    assert res.exit_code == 0
    assert "left out ft2: its fingerprint" in res.stdout and "changed since it was added" in res.stdout
    doc = json.loads(sdf("analyze", mix, "--library", lib, "-q", "-f", "json").stdout)
    assert "ft2" not in {c["reference"] for c in doc["recipe"]["components"]}
    assert doc["library"]["changed"] and doc["library"]["changed"][0].startswith("ft2:")
    assert sdf("refs", "verify", "--library", lib, "-q").exit_code == 1


def test_skipped_references_are_named_in_text(library: Path, tmp_path: Path) -> None:
    from sdforensics.synth.specs import family_specs, write_safetensors

    other = write_safetensors(family_specs("sd1", width=8, finetunes=1, seed=3)["ft1"], tmp_path / "w8.safetensors")
    lib = tmp_path / "lib"
    shutil.copytree(library, lib)
    assert sdf("refs", "add", other, "--name", "wide-one", "--library", lib, "-q").exit_code == 0
    _, specs = None, family_specs("sd1", width=16, finetunes=6, seed=3)
    target = write_safetensors(specs["ft2"], tmp_path / "t.safetensors")
    text = sdf("analyze", target, "--library", lib, "-q").stdout
    assert "1 reference was left out (wide-one)" in text, text


def test_refs_list_shows_your_references_first(library: Path) -> None:
    res = sdf("refs", "list", "--library", library)
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "family", "kind", "official"]
    assert len(lines) == 1 + 7 + 1 and lines[-1].startswith("7 fingerprinted references;")
    default = sdf("refs", "list").stdout.splitlines()  # shipped registry + empty user library
    assert len(default) <= 4 and "known by hash only (shown with --registry)" in default[-1]
    full = sdf("refs", "list", "--registry").stdout.splitlines()
    assert len(full) > 200 and full[-1].endswith("known by hash only")


def test_json_and_quiet_on_every_printing_command(family: dict[str, Path], library: Path, tmp_path: Path) -> None:
    doc = json.loads(sdf("refs", "verify", "--library", library, "-f", "json").stdout)
    assert doc["ok"] is True and doc["problems"] == []
    assert sdf("refs", "verify", "--library", library, "-q").stdout == ""
    doc = json.loads(sdf("scan", family["base"], "-f", "json", "-q").stdout)
    assert isinstance(doc, dict)
    out = json.loads(sdf("synth", "merge", tmp_path / "m.safetensors", "-f", "json", "-q").stdout)
    assert out["files"] == [str(tmp_path / "m.safetensors")]
    out = json.loads(sdf("synth", "family", tmp_path / "fam", "--finetunes", "1", "-f", "json").stdout)
    assert [Path(p).name for p in out["files"]] == ["base.safetensors", "ft1.safetensors"]
