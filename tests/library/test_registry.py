"""The known-model registry, its manifest, and recognising/downloading official files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdforensics.core.errors import LibraryError
from sdforensics.library.manifest import MANIFEST_NAME, verify_manifest, write_manifest
from sdforensics.library.official import download_first, download_official, find_official_files, official_urls
from sdforensics.library.registry import (
    FAMILIES,
    SCHEMA,
    SHIPPED_DIR,
    KnownModel,
    Registry,
    lineage_hint,
    load_registry,
    registry_rows,
    shipped_registry,
)


def _load_tool():  # noqa: ANN202 - tools/ is not a package
    import importlib.util

    root = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
    spec = importlib.util.spec_from_file_location("registry_rebuild", root / "tools" / "registry_rebuild.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOOL = _load_tool()
main, rebuild = _TOOL.main, _TOOL.rebuild


def _tiny_safetensors(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    save_file({"model.diffusion_model.conv_in.weight": rng.standard_normal((4, 4, 3, 3)).astype(np.float16)},
              str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _entry(name: str, path: Path, **kw: object) -> dict:
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    out = {"name": name, "family": "sd1", "kind": "checkpoint", "file": path.name, "bytes": len(data),
           "sha256": sha, "autov2": sha[:10], "legacy_hash": None, "source": "test: generated file",
           "lineage_note": None, "official": False}
    out.update(kw)
    return out


def _write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"schema": SCHEMA, "entries": entries}), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- shipped data


def test_shipped_registry_loads_with_sources_and_unique_hashes() -> None:
    reg = shipped_registry()
    raw = json.loads((SHIPPED_DIR / "known_models.json").read_text())["entries"]
    assert len(reg) == len(raw) >= 263
    shas = [e.sha256 for e in reg.entries if e.sha256]
    assert len(shas) == len(set(shas)) >= 192
    assert all(e.source.strip() for e in reg.entries)
    assert {e.family for e in reg.entries} <= set(FAMILIES)
    assert len(reg.legacy_rows) == 1314
    official = reg.official_entries()
    assert {e.family for e in official} == {"sd1", "sd2", "sdxl"}
    assert all(e.sha256 for e in official)
    sd15 = reg.by_sha256("6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa")
    assert sd15 is not None and sd15.official and sd15.file == "v1-5-pruned-emaonly.safetensors"
    assert reg.official_entries("sdxl") and not reg.official_entries("flux")


def test_shipped_licence_travels_with_legacy_csv() -> None:
    assert (SHIPPED_DIR / "legacy_hashes.csv").is_file()
    assert "MIT" in (SHIPPED_DIR / "LICENSE-model-keyword.txt").read_text()


def test_registry_rows_cover_every_entry_with_source_and_hash_only_marker() -> None:
    reg = shipped_registry()
    rows = registry_rows(reg)
    assert len(rows) == len(reg)
    assert all(r["source"] and r["fingerprint"] is False and r["status"] == "hash only" for r in rows)
    json.dumps(rows)  # JSON-ready


def test_lineage_hints_are_conservative() -> None:
    reg = shipped_registry()
    assert lineage_hint(reg.by_name("AbyssOrangeMix3 (AOM3)")) == "NAI-derived"
    assert lineage_hint(reg.by_name("BloodOrangeMix")) == "NAI-derived"
    assert lineage_hint(reg.by_name("Anything V4.0 (anything-v4.0.ckpt)")) is None  # "not involved"
    nai_sfw = reg.by_name("NovelAI animesfw-final-pruned (NAI leak, 'NAI sfw')")
    assert lineage_hint(nai_sfw) == "NovelAI leak"
    assert lineage_hint(reg.by_name("Stable Diffusion XL 1.0 base")) is None


# ----------------------------------------------------------------------------- matching


def test_generated_file_matched_exactly_by_sha256_and_autov2(tmp_path: Path) -> None:
    model = _tiny_safetensors(tmp_path / "tiny.safetensors", seed=1)
    reg_file = _write_registry(tmp_path / "test.json", [_entry("Tiny test model", model)])
    reg = load_registry([SHIPPED_DIR, reg_file])
    sha = _sha(model)

    by_sha = reg.match_file(sha, None, None)
    assert [(m.entry.name, m.how, m.strength, m.warning) for m in by_sha] == [
        ("Tiny test model", "sha256", "exact", None)]
    assert by_sha[0].entry.origin == str(reg_file)
    by_autov2 = reg.match_file(None, sha[:10].upper(), None)
    assert [(m.entry.name, m.how, m.strength) for m in by_autov2] == [("Tiny test model", "autov2", "exact")]
    assert reg.match_file("0" * 64, None, None) == []


def test_autov2_only_entry_matches_a_full_hash(tmp_path: Path) -> None:
    model = _tiny_safetensors(tmp_path / "m.safetensors", seed=2)
    entry = _entry("AutoV2 only", model, sha256=None, bytes=None)
    reg = load_registry([_write_registry(tmp_path / "r.json", [entry])])
    assert [m.how for m in reg.match_file(_sha(model), None, None)] == ["autov2"]


def test_legacy_hash_only_collision_is_a_weak_hint_with_warning() -> None:
    reg = shipped_registry()
    other_file = "ab" * 32  # a file we do not know, whose legacy window equals SD 1.4's
    matches = reg.match_file(other_file, other_file[:10], "7460A6FA")
    assert matches and all(m.strength == "weak" and m.how == "legacy_hash" for m in matches)
    assert matches[0].entry.name == "Stable Diffusion v1.4"
    warning = matches[0].warning or ""
    assert "legacy hash 7460a6fa is shared by 8 known files" in warning
    assert "base a model was derived from" in warning
    assert "not that file" in warning  # the full hashes differ
    assert reg.legacy_share_count("0eb3318b") > 200
    assert len(reg.match_file(None, None, "0eb3318b")) == 5  # capped; the warning carries the count


def test_exact_match_suppresses_legacy_hints(tmp_path: Path) -> None:
    reg = shipped_registry()
    sd14 = reg.by_name("Stable Diffusion v1.4")
    assert [m.how for m in reg.match_file(sd14.sha256, None, "7460a6fa")] == ["sha256"]


def test_component_match(tmp_path: Path) -> None:
    model = _tiny_safetensors(tmp_path / "v.safetensors", seed=3)
    entry = _entry("Some VAE", model, kind="vae", component_hashes={"vae": "c0ffee00" * 4})
    reg = load_registry([_write_registry(tmp_path / "r.json", [entry])])
    matches = reg.match_component("vae", "C0FFEE00" * 4)
    assert [(m.entry.name, m.how, m.strength) for m in matches] == [("Some VAE", "component:vae", "exact")]
    assert reg.match_component("unet", "c0ffee00" * 4) == []


@pytest.mark.parametrize(("field", "value", "expect"), [
    ("sha256", "xyz", "sha256 must be 64 hex"),
    ("family", "sd9", "family must be one of"),
    ("source", "", "source must be a non-empty string"),
    ("autov2", "0123456789", "is not the first 10 characters"),
    ("colour", "red", "unknown field(s) colour"),
])
def test_bad_entry_names_file_and_entry(tmp_path: Path, field: str, value: object, expect: str) -> None:
    model = _tiny_safetensors(tmp_path / "m.safetensors", seed=4)
    good = _entry("Good", model)
    bad = dict(_entry("Broken one", model, sha256="1" * 64, autov2="1" * 10), **{field: value})
    path = _write_registry(tmp_path / "bad.json", [good, bad])
    with pytest.raises(LibraryError) as err:
        load_registry([path])
    assert str(path) in str(err.value) and "entry 1" in str(err.value) and expect in str(err.value)


def test_wrong_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema": "sdforensics.known_models/99", "entries": []}))
    with pytest.raises(LibraryError, match="newer sdforensics"):
        load_registry([path])


# ----------------------------------------------------------------------------- manifest and rebuild


def test_manifest_passes_on_shipped_folder_and_names_an_edited_file(tmp_path: Path) -> None:
    assert verify_manifest(SHIPPED_DIR) == []
    copy = tmp_path / "reference_hashes"
    shutil.copytree(SHIPPED_DIR, copy)
    assert verify_manifest(copy) == []
    with open(copy / "known_models.json", "a", encoding="utf-8") as fh:
        fh.write(" ")
    (copy / "src" / "extra.txt").write_text("x")
    (copy / "legacy_hashes.csv").unlink()
    problems = verify_manifest(copy)
    assert any(p.startswith("modified: known_models.json") for p in problems)
    assert any(p.startswith("unlisted: src/extra.txt") for p in problems)
    assert any(p.startswith("missing: legacy_hashes.csv") for p in problems)
    (copy / MANIFEST_NAME).unlink()
    assert verify_manifest(copy)[0].startswith("manifest:")


def test_manifest_lines_are_sorted_sha256sum_format(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"b")
    (tmp_path / "a.txt").write_bytes(b"a")
    lines = write_manifest(tmp_path).read_text().splitlines()
    assert lines == [f"{hashlib.sha256(b'a').hexdigest()}  a.txt",
                     f"{hashlib.sha256(b'b').hexdigest()}  sub/b.bin"]


def test_rebuild_reproduces_shipped_outputs_and_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rebuild(SHIPPED_DIR / "src", out)
    for name in ("known_models.json", "legacy_hashes.csv", "LICENSE-model-keyword.txt"):
        assert (out / name).read_bytes() == (SHIPPED_DIR / name).read_bytes(), name
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    rebuild(SHIPPED_DIR / "src", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert verify_manifest(out) == []


def test_adding_an_entry_is_one_edit_plus_one_command(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SHIPPED_DIR / "src", src)
    model = _tiny_safetensors(tmp_path / "new.safetensors", seed=5)
    doc = json.loads((src / "sd1.json").read_text())
    doc["entries"].append(_entry("Brand new model", model))
    (src / "sd1.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(["rebuild", "--src", str(src), "--out", str(out)]) == 0
    reg = load_registry([out])
    assert reg.match_file(_sha(model), None, None)[0].entry.name == "Brand new model"
    doc["entries"].append(_entry("Duplicate", model))
    (src / "sd1.json").write_text(json.dumps(doc))
    assert main(["rebuild", "--src", str(src), "--out", str(out)]) == 2  # duplicate sha256 refused


# ----------------------------------------------------------------------------- official files


def test_find_official_files_by_hash(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    base = _tiny_safetensors(models / "renamed-base.safetensors", seed=10)
    xl = _tiny_safetensors(models / "sub" / "xl.bin", seed=11)
    other = _tiny_safetensors(models / "not-official.safetensors", seed=12)
    _tiny_safetensors(models / "unknown.safetensors", seed=13)
    (models / "notes.txt").write_text("hello")
    reg = load_registry([_write_registry(tmp_path / "r.json", [
        _entry("Test base", base, official=True),
        _entry("Test XL", xl, family="sdxl", official=True, bytes=None),
        _entry("Test mix", other),
    ])])
    hashed: list[Path] = []
    found = find_official_files(models, reg, progress=hashed.append)
    assert [(p.name, e.name) for p, e in found] == [("renamed-base.safetensors", "Test base"),
                                                    ("xl.bin", "Test XL")]
    assert models / "notes.txt" not in hashed  # neither a known size nor a model suffix
    every = find_official_files(models, reg, official_only=False)
    assert {e.name for _, e in every} == {"Test base", "Test XL", "Test mix"}


def test_find_official_files_skips_by_size_without_hashing(tmp_path: Path) -> None:
    model = _tiny_safetensors(tmp_path / "a.safetensors", seed=20)
    reg = Registry([KnownModel("Sized", "sd1", "checkpoint", "x", model.stat().st_size + 1, "0" * 64, None,
                               None, "test", official=True)])
    hashed: list[Path] = []
    assert find_official_files(tmp_path, reg, progress=hashed.append) == []
    assert hashed == []


def test_download_official_verifies_and_renames(tmp_path: Path) -> None:
    served = _tiny_safetensors(tmp_path / "served.safetensors", seed=30)
    entry = load_registry([_write_registry(tmp_path / "r.json", [
        _entry("Served", served, file="official.safetensors")])]).by_name("Served")
    dest = tmp_path / "dl"
    dest.mkdir()
    seen: list[tuple[int, int | None]] = []
    got = download_official(entry, served.as_uri(), dest, progress=lambda d, t: seen.append((d, t)))
    assert got == dest / "official.safetensors" and _sha(got) == entry.sha256
    assert seen[-1] == (served.stat().st_size, served.stat().st_size)
    assert sorted(p.name for p in dest.iterdir()) == ["official.safetensors"]
    assert download_official(entry, served.as_uri(), dest) == got  # already there: kept


def test_download_official_refuses_a_mismatch_and_leaves_nothing(tmp_path: Path) -> None:
    served = _tiny_safetensors(tmp_path / "served.safetensors", seed=31)
    wrong = _tiny_safetensors(tmp_path / "wrong.safetensors", seed=32)
    assert wrong.stat().st_size == served.stat().st_size
    reg = load_registry([_write_registry(tmp_path / "r.json", [_entry("Served", served)])])
    entry = reg.by_name("Served")
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(LibraryError, match="refused") as err:
        download_official(entry, wrong.as_uri(), dest / "model.safetensors")
    assert str(entry.sha256) in str(err.value)
    assert list(dest.iterdir()) == []
    shorter = tmp_path / "short.bin"
    shorter.write_bytes(b"abc")
    with pytest.raises(LibraryError, match="bytes"):
        download_official(entry, shorter.as_uri(), dest / "model.safetensors")
    with pytest.raises(LibraryError, match="download failed"):
        download_official(entry, (tmp_path / "absent").as_uri(), dest / "model.safetensors")
    assert list(dest.iterdir()) == []
    # the first URL fails, the second is right
    assert download_first(entry, [wrong.as_uri(), served.as_uri()], dest).name == served.name


def test_official_urls_follow_the_documented_rule() -> None:
    reg = shipped_registry()
    assert official_urls(reg.by_name("Stable Diffusion XL 1.0 base")) == [
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors"]
    sd15 = official_urls(reg.by_name("Stable Diffusion v1.5 (pruned, EMA only, safetensors)"))
    assert sd15[1] == ("https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
                       "v1-5-pruned-emaonly.safetensors")
    assert official_urls(reg.by_name("SD VAE ft-MSE 840000 (ckpt)")) == [
        "https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/vae-ft-mse-840000-ema-pruned.ckpt"]
    assert all(official_urls(e) for e in reg.official_entries())
    assert official_urls(reg.by_name("AbsoluteReality v1.6")) == []  # source names no HF repository
