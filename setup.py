"""Build step: ship the top-level ``reference_hashes/`` registry inside the wheel.

Everything else is in pyproject.toml. The registry's source of truth stays at the top level of
the repository; a built wheel (and a wheel built from the sdist) carries a byte-identical copy,
MANIFEST.sha256 included, as package data in ``sdforensics/data/reference_hashes/``, which
:mod:`sdforensics.library.shipped` prefers. An editable install reads the top-level folder directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "reference_hashes"


class BuildPyWithRegistry(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the source tree's folder
        if not (REGISTRY / "known_models.json").is_file():
            raise SystemExit(f"{REGISTRY}: the registry is missing; cannot build a working package")
        target = Path(self.build_lib) / "sdforensics" / "data" / "reference_hashes"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(REGISTRY, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithRegistry})
