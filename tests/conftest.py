"""Shared fixtures: a small synthetic SD1.5-layout family written once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdforensics.cli import app
from sdforensics.synth.specs import family_specs, write_safetensors

WIDTH = 16


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the real user library."""
    monkeypatch.setenv("SDF_HOME", str(tmp_path / "sdf-home"))


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + ft1..ft6 (ft6 is a child of ft1) as fp16 safetensors at 1/16 width."""
    out = tmp_path_factory.mktemp("family")
    specs = family_specs("sd1", width=WIDTH, finetunes=6, seed=3)
    return {name: write_safetensors(spec, out / f"{name}.safetensors") for name, spec in specs.items()}


@pytest.fixture(scope="session")
def family_specs_sd1() -> dict:
    return family_specs("sd1", width=WIDTH, finetunes=6, seed=3)


@pytest.fixture(scope="session")
def family_prints(family: dict[str, Path]) -> dict:
    """Each model of ``family`` fingerprinted once per session (CPU); read-only values."""
    from sdforensics import fingerprint

    return {name: fingerprint(path, device="cpu") for name, path in family.items()}


@pytest.fixture(scope="session")
def library(family_prints: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library with the base (official) and ft1..ft6."""
    from sdforensics import Library

    lib = Library(tmp_path_factory.mktemp("lib") / "library")
    for name, fp in family_prints.items():
        lib.add(fp, "sd15" if name == "base" else name, official=name == "base")
    return lib.folder


def empty_library(tmp_path: Path) -> Path:
    """An existing, empty library folder (a missing ``--library`` folder is an error)."""
    folder = tmp_path / "empty-library"
    folder.mkdir(exist_ok=True)
    return folder


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr


def sdf(*args: str | os.PathLike[str]) -> Result:
    """Run the CLI in-process; stdout and stderr apart, as a shell would see them."""
    runner = CliRunner()
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)
