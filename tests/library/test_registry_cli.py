"""Known-model registry from the CLI: exact names, weak legacy hints, build-official."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from conftest import empty_library, sdf

from sdforensics.library.registry import SHIPPED_DIR


def _registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"schema": "sdforensics.known_models/1", "entries": entries}))
    return path


def test_registry_entry_names_a_generated_file(family: dict[str, Path], tmp_path: Path) -> None:
    target = family["ft3"]
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    reg = _registry(tmp_path / "reg.json", [{
        "name": "Test Model v3", "family": "sd1", "kind": "checkpoint", "file": target.name, "sha256": sha,
        "source": "test fixture", "lineage_note": "fine-tuned from the synthetic base"}])
    res = sdf("analyze", target, "--identity", "--registry", reg)
    assert res.exit_code == 0, res.stderr
    assert "known    Test Model v3 (exact sha256 match; source: test fixture)" in res.stdout
    doc = json.loads(sdf("analyze", target, "--identity", "--registry", reg, "-f", "json").stdout)
    assert doc["registry"][0]["strength"] == "exact" and doc["registry"][0]["name"] == "Test Model v3"


def test_legacy_hash_only_match_is_a_weak_hint_with_warning(family: dict[str, Path], tmp_path: Path) -> None:
    target = family["ft2"]
    data = target.read_bytes()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    reg = _registry(tmp_path / "reg.json", [
        {"name": "Some Dreambooth", "family": "sd1", "kind": "checkpoint", "legacy_hash": legacy, "source": "list A"},
        {"name": "Another Model", "family": "sd1", "kind": "checkpoint", "legacy_hash": legacy, "source": "list B"},
    ])
    doc = json.loads(sdf("analyze", target, "--identity", "--registry", reg, "-f", "json").stdout)
    hints = doc["registry"]
    assert hints and all(h["strength"] == "weak" and h["how"] == "legacy_hash" for h in hints)
    assert "shared by 2" in hints[0]["warning"]
    text = sdf("analyze", target, "--identity", "--registry", reg).stdout
    assert "hint     Some Dreambooth?" in text and "  known    " not in text


def test_refs_list_json_includes_every_shipped_entry_with_source(tmp_path: Path) -> None:
    res = sdf("refs", "list", "--library", empty_library(tmp_path), "--format", "json", "--registry")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)["references"]
    shipped = json.loads((SHIPPED_DIR / "known_models.json").read_text())["entries"]
    names = {r["name"] for r in rows if not r["fingerprint"]}
    assert {e["name"] for e in shipped} <= names
    assert all(r.get("source") for r in rows)
    assert all(r["status"] == "hash only" for r in rows if not r["fingerprint"])


def test_refs_verify_passes_shipped_and_fails_when_edited(tmp_path: Path) -> None:
    assert sdf("refs", "verify", "--library", SHIPPED_DIR).exit_code == 0
    copy = tmp_path / "reference_hashes"
    shutil.copytree(SHIPPED_DIR, copy)
    path = copy / "known_models.json"
    path.write_text(path.read_text().replace("Stable Diffusion", "Stable  Diffusion", 1))
    res = sdf("refs", "verify", "--library", copy)
    assert res.exit_code == 1 and "known_models.json" in res.stderr


def test_build_official_marks_generated_files_and_analyze_uses_them(family: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy(family["base"], folder / "v1-5-pruned-emaonly.safetensors")
    base_sha = hashlib.sha256(family["base"].read_bytes()).hexdigest()
    reg = _registry(tmp_path / "reg.json", [{
        "name": "Stable Diffusion v1.5 (test copy)", "family": "sd1", "kind": "checkpoint",
        "file": "v1-5-pruned-emaonly.safetensors", "bytes": family["base"].stat().st_size, "sha256": base_sha,
        "source": "test", "official": True}])
    lib = tmp_path / "lib"
    res = sdf("refs", "build-official", "--from", folder, "--registry", reg, "--library", lib, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert "Stable Diffusion v1.5 (test copy)" in res.stdout
    assert sdf("refs", "add", family["ft1"], "--name", "ft1", "--library", lib).exit_code == 0
    doc = json.loads(sdf("analyze", family["ft6"], "--library", lib, "-f", "json").stdout)
    assert doc["similarity"]["base"] == "Stable Diffusion v1.5 (test copy)"
    assert doc["recipe"]["base"] == "Stable Diffusion v1.5 (test copy)"
