"""The one streaming pass over a checkpoint: reader -> canonical names -> consumers.

This is the only place that drives I/O for an analysis. Each tensor is read once, in file
order, handed to every consumer under its canonical name, and dropped. For a safetensors
file the same read feeds the file hashes and the byte-level identity (content digests, NaN/Inf,
position_ids) on worker threads; with no consumer (``sdf analyze --identity``) the file is read in
slices straight into the hashers, without building tensors or importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sdforensics.model.architecture import architecture, block_map_of
from sdforensics.model.byte_identity import ByteIdentity, TensorSpan
from sdforensics.model.detect import ArchitectureReport, detect, scaled
from sdforensics.model.hashing import SLICE, FileDigester, FileHashes, hash_file
from sdforensics.model.keymap import KeyMapping, canonicalize
from sdforensics.readers.base import Checkpoint, FormatInfo, TappedCheckpoint, TensorInfo
from sdforensics.readers.safetensors_reader import SafetensorsCheckpoint

if TYPE_CHECKING:
    import torch

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
    kept: dict[str, str] = field(default_factory=dict)
    """Stored name -> canonical name of every tensor handed on: EMA copies and later stored names
    for an already-seen canonical name left out (the one place that decides it)."""


def read_layout(ckpt: Checkpoint) -> Layout:
    raw = ckpt.infos()
    mapping = canonicalize(i.name for i in raw)
    ema = set(mapping.ema)
    infos: list[TensorInfo] = []
    kept: dict[str, str] = {}
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
        kept[info.name] = name
        infos.append(replace(info, name=name))
    arch = detect(infos, ema=bool(ema))
    return Layout(ckpt.path, ckpt.format(), tuple(infos), mapping, arch, tuple(dups), kept)


def byte_spans(ckpt: SafetensorsCheckpoint, layout: Layout) -> list[TensorSpan]:
    """The byte range of every tensor :func:`stream` hands on (canonical names; EMA copies and
    later duplicates of a name left out, as there)."""
    left = dict(layout.kept)
    out: list[TensorSpan] = []
    for info, offset in zip(ckpt.header.infos, ckpt.header.offsets, strict=True):
        name = left.pop(info.name, None)
        if name is not None:
            out.append(TensorSpan(name, info.shape, info.dtype, offset, offset + info.nbytes))
    return out


READ_SIZE = 2 * SLICE


def identity_pass(
    ckpt: SafetensorsCheckpoint, layout: Layout, consumers: Sequence[Consumer], progress: Progress | None = None
) -> tuple[FileHashes, ByteIdentity]:
    """One read of a safetensors file: file hashes and byte-level identity, and every tensor to
    ``consumers`` when there are any."""
    ident = ByteIdentity(byte_spans(ckpt, layout))
    if consumers:
        hashes = stream(ckpt, layout, consumers, progress, content=ident.update)
        assert hashes is not None
        return hashes, ident
    total = ckpt.header.file_size or 1
    with ckpt.mapped() as mapped, FileDigester(ckpt.header.data_start, content=ident.update) as digester:
        for start in range(0, len(mapped.view), READ_SIZE):
            digester.update(mapped.view[start : start + READ_SIZE], on_done=partial(mapped.done, start, READ_SIZE))
            if progress is not None:
                progress(min(start + READ_SIZE, total), total)
        return digester.finish(), ident


def stream(
    ckpt: Checkpoint,
    layout: Layout,
    consumers: Sequence[Consumer],
    progress: Progress | None = None,
    content: Callable[[Any], None] | None = None,
) -> FileHashes | None:
    """Feed every tensor to ``consumers``; returns file hashes for single-file checkpoints.
    ``content``: fed every byte of a safetensors file on a hashing thread (see :func:`identity_pass`)."""
    if isinstance(ckpt, SafetensorsCheckpoint):
        with FileDigester(autov3_start=ckpt.header.data_start, content=content) as digester:
            _feed(ckpt.tensors(tap=digester.update), layout, consumers, progress)
            return digester.finish()
    if isinstance(ckpt, TappedCheckpoint):  # a remote file: its bytes reach the hashers once, as they stream
        with FileDigester(autov3_start=None) as digester:
            _feed(ckpt.tapped_tensors(digester.update), layout, consumers, progress)
            return digester.finish()
    _feed(ckpt.tensors(), layout, consumers, progress)
    if layout.path.is_file():
        return hash_file(layout.path)
    return None


def _feed(
    tensors: Iterator[tuple[TensorInfo, torch.Tensor]],
    layout: Layout,
    consumers: Sequence[Consumer],
    progress: Progress | None,
) -> None:
    """Hand every kept tensor to every consumer under its canonical name, in file order."""
    total = sum(i.nbytes for i in layout.infos) or 1
    done = 0
    # Sketch sizes follow the architecture's full key table (at this file's width), so a file with
    # missing keys, a LoRA's fingerprint and a full model still get the same size for the same key.
    shapes = {i.name: i.shape for i in layout.infos}
    if layout.architecture.name is not None:
        arch = architecture(layout.architecture.name)
        table = {k: scaled(s, layout.architecture.width_factor) for k, (s, _) in arch.keys.items()}
        shapes = {**table, **{k: v for k, v in shapes.items() if k not in table}}
    bmap = block_map_of(layout.architecture.name or layout.architecture.family)
    for consumer in consumers:
        prepare = getattr(consumer, "prepare", None)
        if prepare is not None:
            prepare(shapes, bmap.block_of)
    left = dict(layout.kept)  # each stored name once, as read_layout decided
    for info, tensor in tensors:
        done += info.nbytes
        name = left.pop(info.name, None)
        if name is None:
            continue
        canon = replace(info, name=name)
        for consumer in consumers:
            consumer.consume(name, canon, tensor)
        if progress is not None:
            progress(done, total)
