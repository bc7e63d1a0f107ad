"""Identity facts from a safetensors file's raw bytes: no torch, no tensors (pure math, no I/O).

:class:`ByteIdentity` is fed the file's bytes in order, in chunks of any size (it runs on a
hashing thread, next to SHA-256, so the identity pass costs about one read of the file). From
the header's byte ranges it computes, per tensor, exactly what :class:`sdforensics.model.identity.
IdentityCollector` computes from torch tensors: the content digest over values cast to fp16
(numpy performs the same round-to-nearest-even casts torch does, and quiets NaNs as torch does),
NaN/Inf counts from the bit patterns, and the CLIP ``position_ids`` check.

>>> from sdforensics.model.hashing import tensor_digest   # doctest: +SKIP
>>> bi = ByteIdentity([TensorSpan("w", (2,), "F32", 0, 8)])
>>> bi.update(np.array([1.0, 2.0], dtype="<f4").tobytes())
>>> bi.digests["w"] == tensor_digest("w", torch.tensor([1.0, 2.0]))  # doctest: +SKIP
True
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdforensics.core.dtypes import DTYPES, fp8_to_f16
from sdforensics.model.hashing import digest_start
from sdforensics.model.identity import TensorIssue, check_position_ids

POSITION_IDS_CAP = 1 << 20
"""Bytes of a ``position_ids`` tensor kept for its check (CLIP's are 77 int64: 616 bytes)."""


@dataclass(frozen=True)
class TensorSpan:
    """Where one tensor's bytes lie in the file, under its canonical name."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    start: int
    end: int


@dataclass(frozen=True)
class _Bits:
    """A float format's bit layout: the sign is the top bit, the exponent the bits below it.

    A value is NaN or Inf when all its exponent bits are set. Read as a signed integer, a
    positive one is then >= ``exponent``; read as unsigned, a negative one is >= ``sign |
    exponent``. So two plain reductions (a signed and an unsigned max) find any, without a
    masked temporary array.
    """

    signed: str
    unsigned: str
    sign: int
    exponent: int
    mantissa: int


_BITS = {
    "F16": _Bits("<i2", "<u2", 0x8000, 0x7C00, 0x03FF),
    "BF16": _Bits("<i2", "<u2", 0x8000, 0x7F80, 0x007F),
    "F32": _Bits("<i4", "<u4", 0x80000000, 0x7F800000, 0x007FFFFF),
    "F64": _Bits("<i8", "<u8", 0x8000000000000000, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F8_E5M2": _Bits("i1", "u1", 0x80, 0x7C, 0x03),
    "F8_E4M3": _Bits("i1", "u1", 0x80, 0x7F, 0x7F),  # e4m3fn: only S.1111.111 is NaN, no Inf
}


def _quiet_nans(bits: np.ndarray) -> np.ndarray:
    """Set the quiet bit of fp16 NaNs, as torch's casts do (numpy keeps signalling payloads)."""
    nan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0)
    bits[nan] |= 0x0200
    return bits


def canonical_f16(code: str, raw: memoryview | bytes, has_nan: bool) -> memoryview | bytes:
    """Whole elements of dtype ``code`` as little-endian fp16 bytes (what content digests hash)."""
    if code == "F16":
        return raw
    bits: np.ndarray
    with np.errstate(over="ignore", invalid="ignore"):
        if code == "BF16":
            wide = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            bits = wide.view(np.float32).astype(np.float16).view(np.uint16)
        elif code == "F32":
            bits = np.frombuffer(raw, "<f4").astype(np.float16).view(np.uint16)
        elif code == "F64":  # via float32, as torch's double -> half cast rounds
            bits = np.frombuffer(raw, "<f8").astype(np.float32).astype(np.float16).view(np.uint16)
        elif code in ("F8_E5M2", "F8_E4M3"):  # table lookups, NaNs made quiet as torch does
            return fp8_to_f16(np.frombuffer(raw, np.uint8), code).tobytes()
        else:
            raise ValueError(f"not a float dtype: {code}")
    if has_nan:
        bits = _quiet_nans(bits)
    return bits.tobytes()


def count_nonfinite(code: str, raw: memoryview | bytes) -> tuple[int, int]:
    """(NaN, Inf) counts among whole elements of float dtype ``code``, from their bit patterns."""
    b = _BITS[code]
    u = np.frombuffer(raw, b.unsigned)
    if not u.size:
        return 0, 0
    if int(np.frombuffer(raw, b.signed).max()) < b.exponent and int(u.max()) < (b.sign | b.exponent):
        return 0, 0  # the common case: two reductions, no special value
    exp = u & np.array(b.exponent, dtype=u.dtype)
    special = exp == b.exponent
    nan = int((special & ((u & np.array(b.mantissa, dtype=u.dtype)) != 0)).sum())
    return nan, int(special.sum()) - nan


class _Open:
    """The tensor being fed: its digest so far, NaN/Inf counts, and a partial element."""

    def __init__(self, span: TensorSpan) -> None:
        self.span = span
        self.itemsize = DTYPES[span.dtype].itemsize
        self.is_float = DTYPES[span.dtype].is_float
        self.hasher: Any = digest_start(span.name, span.shape) if self.is_float else None
        self.carry = b""
        self.nan = 0
        self.inf = 0
        self.keep: bytearray | None = None
        if span.name.endswith("embeddings.position_ids") and span.end - span.start <= POSITION_IDS_CAP:
            self.keep = bytearray()

    def feed(self, data: memoryview) -> None:
        if self.keep is not None:
            self.keep += data
        if not self.is_float:
            return
        if self.carry:  # an element split between two chunks
            need = self.itemsize - len(self.carry)
            self.carry += bytes(data[:need])
            data = data[need:]
            if len(self.carry) < self.itemsize:
                return
            self._elements(self.carry)
            self.carry = b""
        whole = len(data) - len(data) % self.itemsize
        if whole:
            self._elements(data[:whole])
        if whole < len(data):
            self.carry = bytes(data[whole:])

    def _elements(self, raw: memoryview | bytes) -> None:
        nan, inf = count_nonfinite(self.span.dtype, raw)
        self.nan += nan
        self.inf += inf
        self.hasher.update(canonical_f16(self.span.dtype, raw, nan > 0))


class ByteIdentity:
    """Feed a safetensors file's bytes in order with :meth:`update`; then read the fields.

    ``spans``: the tensors to account for (canonical names; EMA copies and duplicate names left
    out), in offset order, non-overlapping.
    """

    def __init__(self, spans: list[TensorSpan]) -> None:
        self.spans = sorted(spans, key=lambda s: s.start)
        self.digests: dict[str, bytes] = {}
        self.dtypes: Counter[str] = Counter()
        self.n_tensors = len(self.spans)
        self.n_params = 0
        self.nonfinite: list[TensorIssue] = []
        self.position_ids: str | None = None
        for s in self.spans:
            n = math.prod(s.shape)
            self.n_params += n
            self.dtypes[s.dtype] += n
        self._offset = 0
        self._next = 0
        self._open: _Open | None = None

    def update(self, data: memoryview | bytes | bytearray) -> None:
        view = memoryview(data).cast("B")
        pos, end = self._offset, self._offset + len(view)
        while True:
            if self._open is None:
                if self._next >= len(self.spans) or self.spans[self._next].start > end:
                    break
                span = self.spans[self._next]
                self._next += 1
                if span.start == span.end:
                    continue  # no values: no digest, nothing to check
                self._open = _Open(span)
            span = self._open.span
            lo, hi = max(span.start, pos), min(span.end, end)
            if lo < hi:
                self._open.feed(view[lo - pos : hi - pos])
            if span.end > end:
                break
            self._close(self._open)
            self._open = None
        self._offset = end

    def _close(self, t: _Open) -> None:
        name = t.span.name
        if t.hasher is not None:
            self.digests[name] = t.hasher.digest()
        if t.nan or t.inf:
            self.nonfinite.append(TensorIssue(name, t.nan, t.inf))
        if t.keep is not None:
            code = t.span.dtype
            dt = DTYPES[code]
            if dt.is_float:
                values = _exact_float64(code, bytes(t.keep))
                stored = dt.torch_name
            else:
                values = np.frombuffer(bytes(t.keep), _INT_FORMATS[code]).astype(np.float64)
                stored = "integers"
            self.position_ids = check_position_ids(values, stored)

    def finished(self) -> bool:
        """True once every span's bytes have been seen."""
        return self._open is None and self._next >= len(self.spans)


def _exact_float64(code: str, raw: bytes) -> np.ndarray:
    """Stored float values, exactly, as float64 (every format here widens without rounding)."""
    if code == "F32":
        return np.frombuffer(raw, "<f4").astype(np.float64)
    if code == "F64":
        return np.frombuffer(raw, "<f8").astype(np.float64)
    if code == "BF16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.frombuffer(canonical_f16(code, raw, True), "<f2").astype(np.float64)  # F16, F8: exact in fp16


_INT_FORMATS = {"I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1"}
