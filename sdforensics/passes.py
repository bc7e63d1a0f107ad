"""The one streaming pass over a checkpoint: reader -> canonical names -> consumers.

This is the only place that drives I/O for an analysis. Each tensor is read once, in file
order, handed to every consumer under its canonical name, and dropped. For a safetensors
file the same read feeds the file hashes (no second pass over the file).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from sdforensics.arch import ArchitectureReport, detect, scaled
from sdforensics.hashing import FileDigester, FileHashes, hash_file
from sdforensics.keymap import KeyMapping, canonicalize
from sdforensics.readers import open_checkpoint
from sdforensics.readers.base import Checkpoint, FormatInfo, TensorInfo
from sdforensics.readers.safetensors_reader import SafetensorsCheckpoint
from sdforensics.tables import architecture, block_maps

Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as tensors are read."""


class Consumer(Protocol):
    def consume(self, name: str, info: TensorInfo, tensor: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class Layout:
    """A checkpoint's headers, read and interpreted before any tensor data."""

    path: Path
    format: FormatInfo
    infos: tuple[TensorInfo, ...]
    """Canonical names, file order, EMA copies excluded."""
    mapping: KeyMapping
    architecture: ArchitectureReport
    duplicates: tuple[str, ...]


def read_layout(ckpt: Checkpoint) -> Layout:
    raw = ckpt.infos()
    mapping = canonicalize(i.name for i in raw)
    ema = set(mapping.ema)
    infos: list[TensorInfo] = []
    seen: set[str] = set()
    dups: list[str] = []
    for info in raw:
        if info.name in ema:
            continue
        name = mapping.canonical[info.name]
        if name in seen:
            dups.append(name)
            continue
        seen.add(name)
        infos.append(replace(info, name=name))
    arch = detect(infos, ema=bool(ema))
    return Layout(ckpt.path, ckpt.format(), tuple(infos), mapping, arch, tuple(dups))


def stream(
    ckpt: Checkpoint, layout: Layout, consumers: Sequence[Consumer], progress: Progress | None = None
) -> FileHashes | None:
    """Feed every tensor to ``consumers``; returns file hashes for single-file checkpoints."""
    ema = set(layout.mapping.ema)
    total = sum(i.nbytes for i in layout.infos) or 1
    done = 0
    digester: FileDigester | None = None
    if isinstance(ckpt, SafetensorsCheckpoint):
        digester = FileDigester(autov3_start=ckpt.header.data_start)
        tensors = ckpt.tensors(tap=digester.update)
    else:
        tensors = ckpt.tensors()
    # Sketch sizes follow the architecture's full key table (at this file's width), so a file with
    # missing keys, a LoRA's fingerprint and a full model still get the same size for the same key.
    shapes = {i.name: i.shape for i in layout.infos}
    if layout.architecture.name is not None:
        arch = architecture(layout.architecture.name)
        table = {k: scaled(s, layout.architecture.width_factor) for k, (s, _) in arch.keys.items()}
        shapes = {**table, **{k: v for k, v in shapes.items() if k not in table}}
    bmap = block_maps()["sdxl" if layout.architecture.family == "sdxl" else "sd1"]
    for consumer in consumers:
        prepare = getattr(consumer, "prepare", None)
        if prepare is not None:
            prepare(shapes, bmap.block_of)
    seen: set[str] = set()
    for info, tensor in tensors:
        done += info.nbytes
        if info.name in ema:
            continue
        name = layout.mapping.canonical.get(info.name, info.name)
        if name in seen:
            continue
        seen.add(name)
        canon = replace(info, name=name)
        for consumer in consumers:
            consumer.consume(name, canon, tensor)
        if progress is not None:
            progress(done, total)
    if digester is not None:
        return digester.finish()
    if layout.path.is_file():
        return hash_file(layout.path)
    return None


def open_and_layout(path: Path) -> tuple[Checkpoint, Layout]:
    ckpt = open_checkpoint(path)
    try:
        return ckpt, read_layout(ckpt)
    except BaseException:
        ckpt.close()
        raise
