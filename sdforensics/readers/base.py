"""The contract every checkpoint reader keeps.

A reader is opened on an untrusted path, validates what it can from headers alone, and then
offers two views (and is a context manager: ``with open_checkpoint(path) as ckpt:``):

* :meth:`Checkpoint.infos` -- the tensors' names, shapes and dtypes, from headers only;
* :meth:`Checkpoint.tensors` -- the tensors themselves, one at a time, in file order, so a
  7 GB file never has to be held in memory.

Names are the names *as stored*; :mod:`sdforensics.model.keymap` turns them into the canonical
single-file (ldm/sgm) names the rest of the package uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch

_C = TypeVar("_C", bound="ClosingCheckpoint")


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a header describes it (no data)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    """safetensors dtype code, e.g. ``F16`` (see :mod:`sdforensics.core.dtypes`)."""
    nbytes: int
    source: str = ""
    """Which file of a multi-file checkpoint holds it (diffusers folders, shards); "" otherwise."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class PickleGlobal:
    """A ``module.name`` global that a pickle references, with our verdict on it."""

    module: str
    name: str
    verdict: str
    """``safe``, ``suspicious`` or ``dangerous``."""
    member: str = ""
    """The pickle inside a zip archive (``archive/data.pkl``) or "" for a plain pickle."""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class FormatInfo:
    """What kind of container a checkpoint is, and what its reader noticed about it."""

    container: str
    """``safetensors``, ``pickle-zip``, ``pickle-legacy``, ``diffusers``, ``sharded-safetensors``."""
    files: tuple[Path, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    """``__metadata__`` of a safetensors file (string to string), or {}."""
    globals: tuple[PickleGlobal, ...] = ()
    """Every global a pickle names (pickle formats only)."""
    findings: tuple[str, ...] = ()
    """Anomalies that did not stop reading (trailing bytes, odd zip members ...)."""


ByteTap = Callable[[memoryview | bytes | bytearray], None]
"""Receives a file's bytes in order as a reader reads them (the hashers)."""


@runtime_checkable
class Checkpoint(Protocol):
    """An opened, header-validated checkpoint."""

    path: Path

    def format(self) -> FormatInfo: ...

    def infos(self) -> list[TensorInfo]:
        """Every tensor, from headers only, in file order."""
        ...

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Every tensor with its values, one at a time, in file order (CPU tensors). fp8 tensors
        (F8_E4M3, F8_E5M2) come as the float16 values they exactly are; every other dtype as stored."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Checkpoint: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class TappedCheckpoint(Checkpoint, Protocol):
    """A checkpoint whose reader brings the file's bytes itself (a URL read by range requests):
    :meth:`tapped_tensors` hands every byte, in file order, to ``tap`` while it yields the tensors,
    so the file hashes come from the same single read."""

    def tapped_tensors(self, tap: ByteTap) -> Iterator[tuple[TensorInfo, torch.Tensor]]: ...


class ClosingCheckpoint:
    """Mixin: a reader is a context manager, ``with open_checkpoint(path) as ckpt:`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
