"""A validating, streaming reader for ``.safetensors`` files.

The header is checked before anything in it is trusted: its length against a cap and the
file size, UTF-8 JSON object, no duplicate names, known dtypes, shapes and offsets that are
non-negative integers, ``numel x itemsize`` equal to the byte range, ranges inside the file,
starting at 0 with no gap and no overlap. Tensor data is then read with plain bounded reads
(no memory map, so a file truncated under us is an error, not a SIGBUS), one tensor at a time
in offset order.

>>> ckpt = open_safetensors(Path("model.safetensors"))  # doctest: +SKIP
>>> [i.name for i in ckpt.infos()][:2]                   # doctest: +SKIP
['first_stage_model.decoder.conv_in.bias', 'first_stage_model.decoder.conv_in.weight']
"""

from __future__ import annotations

import io
import json
import mmap
import os
import re
import struct
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sdforensics.core.dtypes import DTYPES, FP8_CODES, widen_fp8
from sdforensics.core.errors import CorruptFileError
from sdforensics.readers.base import ByteTap, ClosingCheckpoint, FormatInfo, TensorInfo
from sdforensics.readers.shape_bounds import shape_overflows

if TYPE_CHECKING:
    import torch

HEADER_CAP = 100 * 1024 * 1024
"""Largest JSON header we accept (the safetensors library uses the same 100 MB cap)."""
TENSOR_CAP = 50_000
"""Most tensors we accept in one file: SD checkpoints hold a few thousand, and a header of a million
tiny tensors (BAD_INPUTS 14) would cost minutes downstream."""

MAX_HEADER_ELEMENTS = 2_000_000
"""Most JSON values (objects, arrays, numbers, strings) a header may hold: an SD checkpoint's
header has ~10 per tensor, so a few tens of thousands. Parsing 33 M empty objects would cost
over 3 GB of memory before any check could run."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')

"""Receives every byte of the file, in order, as :meth:`SafetensorsCheckpoint.tensors` reads it."""


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors in offset order, metadata, and where data starts."""

    infos: tuple[TensorInfo, ...]
    offsets: tuple[int, ...]
    """Absolute file offset of each tensor's first byte (same order as ``infos``)."""
    metadata: dict[str, str]
    header_len: int
    data_start: int
    data_end: int
    file_size: int
    findings: tuple[str, ...]


def looks_like_safetensors(head: bytes) -> bool:
    """True when the first bytes are an 8-byte little-endian length followed by ``{``."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= HEADER_CAP and head[8:9] == b"{"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number literal {name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate name {key!r}")
        out[key] = value
    return out


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(name: str) -> str:
    text = name if len(name) <= 80 else name[:77] + "..."
    return text.encode("unicode_escape").decode("ascii")


def _count_json_values(raw: bytes) -> int:
    """An upper bound on the values in a JSON text, without parsing it: separators and opening
    brackets outside strings, plus one (strings are blanked first, in C, so commas in a long
    metadata string do not count).

    >>> _count_json_values(b'{"a": [1, 2, {}], "b,c": "x,y"}')
    9
    """
    bare = _JSON_STRING.sub(b'""', raw)
    return bare.count(b",") + bare.count(b"[") + bare.count(b"{") + bare.count(b":") + 1


def parse_header(raw: bytes, file_size: int, where: str) -> SafetensorsHeader:
    """Validate header bytes of a file of ``file_size`` bytes; ``where`` names it in errors."""
    header_len = len(raw)
    if raw.count(b'"data_offsets"') > TENSOR_CAP:  # cheap bound before parsing a huge header
        raise CorruptFileError(f"{where}: the header declares more than {TENSOR_CAP:,} tensors (SD checkpoints "
                               "hold a few thousand); refusing it")
    n_values = _count_json_values(raw)
    if n_values > MAX_HEADER_ELEMENTS:
        raise CorruptFileError(f"{where}: the header holds about {n_values:,} JSON values (limit "
                               f"{MAX_HEADER_ELEMENTS:,}; an SD checkpoint's holds a few tens of thousands); "
                               "refusing to parse it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"{where}: the header is not valid UTF-8 (byte {err.start})") from err
    stripped = text.rstrip(" ")
    if not stripped.startswith("{"):
        raise CorruptFileError(f"{where}: the header is not a JSON object (it starts with {text[:8]!r})")
    try:
        doc = json.loads(stripped, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError as err:
        raise CorruptFileError(f"{where}: the header JSON is nested too deeply") from err
    except ValueError as err:
        raise CorruptFileError(f"{where}: the header is not valid JSON: {_short(str(err))}") from err
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{where}: the header is not a JSON object")

    findings: list[str] = []
    metadata: dict[str, str] = {}
    raw_meta = doc.pop("__metadata__", None)
    if raw_meta is not None:
        if not isinstance(raw_meta, dict):
            raise CorruptFileError(f"{where}: __metadata__ must be an object of strings")
        for key, value in raw_meta.items():
            if not isinstance(value, str):
                findings.append(f"__metadata__[{_short(key)}] is not a string; shown as JSON")
                value = json.dumps(value)
            metadata[key] = value

    if len(doc) > TENSOR_CAP:
        raise CorruptFileError(f"{where}: the header declares {len(doc):,} tensors, more than the "
                               f"{TENSOR_CAP:,} sdforensics reads (SD checkpoints hold a few thousand)")
    data_size = file_size - 8 - header_len
    entries: list[tuple[int, int, TensorInfo]] = []
    for name, entry in doc.items():
        label = _short(name)
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{where}: tensor {label!r} is not described by an object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in entry:
                raise CorruptFileError(f"{where}: tensor {label!r} has no {field!r}")
        extra = set(entry) - {"dtype", "shape", "data_offsets"}
        if extra:
            findings.append(f"tensor {label!r} has unknown fields {sorted(extra)}")
        code = entry["dtype"]
        if not isinstance(code, str) or code not in DTYPES:
            raise CorruptFileError(
                f"{where}: tensor {label!r} has unknown dtype {code!r} (expected one of {', '.join(DTYPES)})"
            )
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise CorruptFileError(f"{where}: tensor {label!r} has an invalid shape {_short(str(shape))}")
        if any(d >= 2**63 for d in shape):  # even with a 0 dim (0 bytes), torch cannot build the shape
            raise CorruptFileError(f"{where}: tensor {label!r} has a dimension of 2^63 or more")
        if shape_overflows(shape, DTYPES[code].itemsize):
            raise CorruptFileError(f"{where}: tensor {label!r} has a shape {_short(str(shape))} whose size "
                                   "overflows 64 bits (torch cannot build it, even with a 0 dimension)")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
            raise CorruptFileError(f"{where}: tensor {label!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise CorruptFileError(f"{where}: tensor {label!r} ends ({end}) before it begins ({begin})")
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * DTYPES[code].itemsize
        if nbytes != end - begin:
            raise CorruptFileError(
                f"{where}: tensor {label!r} is {shape} x {code} = {nbytes:,} bytes "
                f"but its data_offsets span {end - begin:,} bytes"
            )
        if end > data_size:
            raise CorruptFileError(
                f"{where}: tensor {label!r} ends at byte {end:,} of the data section but the file holds "
                f"only {max(data_size, 0):,} bytes of data; the file is truncated. Download it again."
            )
        entries.append((begin, end, TensorInfo(name, tuple(shape), code, nbytes)))

    entries.sort(key=lambda e: (e[0], e[1]))
    cursor = 0
    for begin, end, info in entries:
        if begin < cursor:
            raise CorruptFileError(
                f"{where}: tensor {_short(info.name)!r} overlaps the previous tensor's bytes"
            )
        if begin > cursor:
            raise CorruptFileError(
                f"{where}: {begin - cursor:,} unused bytes before tensor {_short(info.name)!r} (a gap in the data)"
            )
        cursor = end
    if cursor < data_size:
        findings.append(
            f"{data_size - cursor:,} trailing bytes after the last tensor (not part of any tensor; "
            "possibly an appended file)"
        )
    data_start = 8 + header_len
    return SafetensorsHeader(
        infos=tuple(e[2] for e in entries),
        offsets=tuple(data_start + e[0] for e in entries),
        metadata=metadata,
        header_len=header_len,
        data_start=data_start,
        data_end=data_start + cursor,
        file_size=file_size,
        findings=tuple(findings),
    )


def read_header(fh: BinaryIO, file_size: int, where: str) -> tuple[bytes, SafetensorsHeader]:
    """Read and validate the header from an open file positioned at 0."""
    head = fh.read(8)
    if len(head) < 8:
        raise CorruptFileError(f"{where}: {file_size} bytes is too short for a safetensors file (need 8+)")
    (n,) = struct.unpack("<Q", head)
    if n > HEADER_CAP:
        raise CorruptFileError(f"{where}: header length {n:,} exceeds the {HEADER_CAP:,}-byte cap")
    if n > file_size - 8:
        raise CorruptFileError(
            f"{where}: header length {n:,} is larger than the file ({file_size:,} bytes); the file is truncated"
        )
    raw = fh.read(n)
    if len(raw) != n:
        raise CorruptFileError(f"{where}: the file ended inside its header")
    return head + raw, parse_header(raw, file_size, where)


class SafetensorsCheckpoint(ClosingCheckpoint):
    """An opened, validated ``.safetensors`` file (see :mod:`sdforensics.readers.base`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._where = str(path)
        with ExitStack() as on_error:  # closes the file unless the header validates
            try:
                self._fh: io.FileIO = on_error.enter_context(open(path, "rb", buffering=0))
            except OSError as err:
                raise CorruptFileError(f"{path}: cannot open: {err.strerror}") from err
            size = os.fstat(self._fh.fileno()).st_size
            self._head_bytes, self.header = read_header(self._fh, size, self._where)
            on_error.pop_all()

    def format(self) -> FormatInfo:
        return FormatInfo(
            container="safetensors",
            files=(self.path,),
            metadata=dict(self.header.metadata),
            findings=self.header.findings,
        )

    def infos(self) -> list[TensorInfo]:
        return list(self.header.infos)

    def tensors(self, tap: ByteTap | None = None) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Yield tensors in offset order. ``tap`` (optional) sees every byte of the file in order."""
        import torch

        fh = self._fh
        if tap is not None:
            tap(self._head_bytes)
        fh.seek(self.header.data_start)
        for info, offset in zip(self.header.infos, self.header.offsets, strict=True):
            # torch.empty: no zero-fill before the read overwrites every byte
            raw = torch.empty(info.nbytes, dtype=torch.uint8)
            if info.nbytes:
                view = raw.numpy().data.cast("B")
                fh.seek(offset)
                got = 0
                try:
                    while got < info.nbytes:  # a single read() returns at most ~2 GiB
                        n = fh.readinto(view[got:])
                        if not n:
                            break
                        got += n
                except OSError as err:
                    raise CorruptFileError(
                        f"{self._where}: read error in {_short(info.name)!r}: {err}"
                    ) from err
                if got != info.nbytes:
                    raise CorruptFileError(
                        f"{self._where}: the file ended inside tensor {_short(info.name)!r} "
                        "(it changed or was truncated while being read)"
                    )
                if tap is not None:
                    tap(view)
            yield info, _to_tensor(raw, info)
        if tap is not None:
            fh.seek(self.header.data_end)
            while chunk := fh.read(16 << 20):
                tap(chunk)

    @contextmanager
    def mapped(self) -> Iterator[MappedFile]:
        """Every byte of the file as one read-only memory map (no torch, no tensors, no copy: what
        the identity pass hashes). The map covers the size the header was validated against; like
        safetensors' own loader, a file truncated by another process while mapped ends the process
        (SIGBUS) rather than returning wrong bytes."""
        size = self.header.file_size
        try:
            mm = mmap.mmap(self._fh.fileno(), size, access=mmap.ACCESS_READ) if size else None
        except (OSError, ValueError) as err:
            raise CorruptFileError(f"{self._where}: cannot map the file: {err}") from err
        mapped = MappedFile(mm)
        try:
            yield mapped
        finally:
            mapped.view.release()
            if mm is not None:
                with suppress(BufferError):  # a slice still referenced elsewhere: the map goes with it
                    mm.close()

    def close(self) -> None:
        self._fh.close()


class MappedFile:
    """A read-only map of a whole file: ``view`` its bytes; :meth:`done` hands pages back."""

    def __init__(self, mm: mmap.mmap | None) -> None:
        self._mm = mm
        self.view = memoryview(mm) if mm is not None else memoryview(b"")
        self._advise = mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED")
        if self._advise and mm is not None:
            mm.madvise(mmap.MADV_SEQUENTIAL)

    def done(self, start: int, length: int) -> None:
        """Bytes ``[start, start + length)`` (page-aligned start) are no longer needed: unmap their
        pages so they stop counting as this process's memory (the page cache keeps them)."""
        if self._advise and self._mm is not None and not self._mm.closed:
            self._mm.madvise(mmap.MADV_DONTNEED, start, min(length, len(self._mm) - start))


def _to_tensor(raw: torch.Tensor, info: TensorInfo) -> torch.Tensor:
    import torch

    dtype = DTYPES[info.dtype].torch_dtype
    if info.dtype in FP8_CODES:  # fp8 values are handed on as the fp16 values they exactly are
        return widen_fp8(raw, info.dtype).reshape(info.shape)
    if info.nbytes == 0:
        return torch.empty(info.shape, dtype=dtype)
    return raw.view(dtype).reshape(info.shape)


def open_safetensors(path: Path) -> SafetensorsCheckpoint:
    """Open and validate ``path``; raises :class:`~sdforensics.core.errors.CorruptFileError` on bad input."""
    return SafetensorsCheckpoint(Path(path))
