"""Which files under the paths given to ``sdf index`` are models.

A file is a candidate when its extension is a model's (``.safetensors``, ``.ckpt``, ``.pt``...) or
its first bytes are safetensors, zip or pickle; a folder holding ``model_index.json`` is one
diffusers model (not descended into). Library folders, hidden files and partial downloads are passed
over silently; every other file is reported as not a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sdforensics.core.errors import SdfError

MODEL_SUFFIXES = {".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin"}
PARTIAL_SUFFIXES = {".part", ".tmp", ".crdownload", ".partial", ".incomplete", ".aria2"}
_LIBRARY_MARKERS = ("library.sqlite", "library.json")


@dataclass(frozen=True)
class Found:
    models: tuple[Path, ...]
    """Files and diffusers folders to index, sorted."""
    not_models: tuple[tuple[Path, str], ...]
    """Files that are not models, with the reason."""


def discover(paths: Sequence[Path], library: Path | None = None) -> Found:
    """Every model file or diffusers folder under ``paths`` (a path may itself be a model file)."""
    skip = {library.resolve()} if library is not None and library.exists() else set()
    models: dict[Path, None] = {}
    not_models: list[tuple[Path, str]] = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise SdfError(f"{root}: no such file or folder")
        if root.is_dir() and not _is_diffusers(root):
            for p in _walk(root, skip):
                why = _not_a_model(p)
                if why is None:
                    models.setdefault(p.absolute(), None)
                elif why:
                    not_models.append((p, why))
        else:
            models.setdefault(root.absolute(), None)
    return Found(tuple(sorted(models)), tuple(not_models))


def _is_diffusers(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _walk(root: Path, skip: set[Path]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            sub = here / d
            if d.startswith(".") or any((sub / m).exists() for m in _LIBRARY_MARKERS) or sub.resolve() in skip:
                continue
            if _is_diffusers(sub):
                yield sub
                continue
            keep.append(d)
        dirnames[:] = keep
        if here.resolve() in skip or any((here / m).exists() for m in _LIBRARY_MARKERS):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if not name.startswith("."):
                yield here / name


def _not_a_model(path: Path) -> str | None:
    """None for a candidate; "" for a file passed over silently; else why it is not a model."""
    if path.is_dir():
        return None
    if path.suffix.lower() in PARTIAL_SUFFIXES:
        return ""
    if path.suffix.lower() in MODEL_SUFFIXES:
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or (len(head) >= 9 and head[8:9] == b"{"):
        return None
    return "not a model file (no model extension; not safetensors, zip or pickle)"
