"""Zip archives and the pickles inside them, read as torch would find them, never extracted or run.

Shared by the scanner (:mod:`.scan`) and the reader (:mod:`.pickle_reader`): the central directory
cross-checked against local headers (:func:`read_zip_layout`), members read under byte and time
budgets, every pickle member walked (:mod:`.pickle_ops`), and the five pickles of a legacy torch file.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from .pickle_ops import Limits, WalkResult, walk, walk_all
from .zip_members import resolve_main_pickle

MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_ZIP_MEMBERS = 200_000
MAX_INFLATED_BYTES = 64 * 1024 * 1024
"""Most bytes inflated from all deflated members of one file together (a zip bomb of many
central-directory entries pointing at one member would otherwise inflate it again and again)."""
MAX_SECONDS = 60.0
"""Wall-clock bound of one file's scan; past it the scan stops, incomplete (exit 1)."""
_MAGIC_LEGACY_PICKLE = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"

# ---------------------------------------------------------------------------------------- zip


@dataclass(frozen=True)
class ZipMember:
    """One entry of a zip central directory, checked against its local header."""

    name: str
    index: int
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    method: int
    flags: int
    crc: int


@dataclass(frozen=True)
class ZipAnomaly:
    """Something odd about a zip: ``unsafe`` and ``corrupt`` ones make the reader refuse."""

    kind: str
    """``unsafe``, ``corrupt`` or ``note``."""
    text: str


@dataclass(frozen=True)
class ZipLayout:
    members: tuple[ZipMember, ...]
    anomalies: tuple[ZipAnomaly, ...]
    file_size: int
    _by_name: dict[str, ZipMember] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, ZipMember] = {}
        for m in self.members:
            by_name.setdefault(m.name, m)
        object.__setattr__(self, "_by_name", by_name)

    def member(self, name: str) -> ZipMember | None:
        """The first member named exactly ``name`` (a dict lookup: opening is linear in members)."""
        return self._by_name.get(name)


class Budget:
    """What one file's scan may still spend: inflated bytes and wall-clock time."""

    def __init__(self, max_inflated: int = MAX_INFLATED_BYTES, max_seconds: float = MAX_SECONDS) -> None:
        self.inflated_left = max_inflated
        self.max_inflated = max_inflated
        self.deadline = time.monotonic() + max_seconds
        self.max_seconds = max_seconds

    def expired(self) -> bool:
        return time.monotonic() > self.deadline


class _Bad(Exception):
    pass


def _unpack(fmt: str, raw: bytes, what: str) -> tuple[Any, ...]:
    if len(raw) != struct.calcsize(fmt):
        raise _Bad(f"{what} is truncated")
    return struct.unpack(fmt, raw)


def read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _unsafe_name(name: str) -> bool:
    parts = re.split(r"[\\/]", name)
    return (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None or ".." in parts
            or "\x00" in name)


def _zip64_extra(extra: bytes, vals: list[int]) -> list[int]:
    """Replace 0xFFFFFFFF fields (size, compressed size, offset) from a ZIP64 extra field."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, ln = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + ln]
        if tag == 1:
            k = 0
            for i, v in enumerate(vals):
                if v == 0xFFFFFFFF:
                    if k + 8 > len(body):
                        raise _Bad("a ZIP64 extra field is truncated")
                    vals[i] = struct.unpack_from("<Q", body, k)[0]
                    k += 8
        pos += 4 + ln
    return vals


def read_zip_layout(f: BinaryIO) -> ZipLayout:
    """Read and cross-check a zip's central directory and local headers; never extracts.

    Raises :class:`ValueError` (one line) when the directory itself cannot be read.
    """
    size = f.seek(0, os.SEEK_END)
    tail_start = max(0, size - 65557)
    tail = read_at(f, tail_start, size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise ValueError("the zip end-of-central-directory record is missing (truncated file?)")
    eocd = tail_start + at
    try:
        (_, disk, _, n_disk, n_total, cd_size, cd_off, clen) = _unpack("<IHHHHIIH", tail[at:at + 22], "EOCD")
        anomalies: list[ZipAnomaly] = []
        if disk != 0 or n_disk != n_total:
            anomalies.append(ZipAnomaly("corrupt", "multi-disk (spanned) zip archive"))
        cd_end = eocd
        loc = read_at(f, eocd - 20, 20) if eocd >= 20 else b""
        if len(loc) == 20 and loc[:4] == b"PK\x06\x07":
            rec_off = eocd - 76  # where a ZIP64 record without extensible data sits
            rec = read_at(f, rec_off, 56) if rec_off >= 0 else b""
            if rec[:4] != b"PK\x06\x06":
                rec_off = struct.unpack_from("<Q", loc, 8)[0]
                rec = read_at(f, rec_off, 56)
            if rec[:4] != b"PK\x06\x06":
                raise _Bad("the ZIP64 end-of-central-directory record is missing")
            n_total, cd_size, cd_off = _unpack("<QQQ", rec[32:56], "ZIP64 EOCD")
            cd_end = rec_off
        if eocd + 22 + clen < size:
            anomalies.append(ZipAnomaly("note", f"{size - eocd - 22 - clen:,} bytes appended after the zip"))
        if n_total > MAX_ZIP_MEMBERS:
            raise _Bad(f"{n_total:,} members (limit {MAX_ZIP_MEMBERS:,})")
        cd_start = cd_end - cd_size
        if cd_start < 0:
            raise _Bad("the central directory is larger than the file")
        shift = cd_start - cd_off
        if shift > 0:
            anomalies.append(ZipAnomaly("corrupt", f"{shift:,} bytes prepended before the zip archive"))
        elif shift < 0:
            raise _Bad("the central directory offset points past its end (truncated file?)")
        cd = read_at(f, cd_start, cd_size)
        if len(cd) != cd_size:
            raise _Bad("the central directory is truncated")
        members = _parse_central(f, cd, n_total, shift, cd_start, anomalies)
    except (_Bad, struct.error) as err:
        raise ValueError(str(err)) from None
    return ZipLayout(tuple(members), tuple(anomalies), size)


def _parse_central(f: BinaryIO, cd: bytes, n_total: int, shift: int, cd_start: int,
                   anomalies: list[ZipAnomaly]) -> list[ZipMember]:
    members: list[ZipMember] = []
    seen: set[str] = set()
    pos = 0
    for index in range(n_total):
        head = cd[pos:pos + 46]
        if len(head) < 46 or head[:4] != b"PK\x01\x02":
            raise _Bad(f"central directory entry {index} is truncated or malformed")
        (flags, method, crc, csize, usize, nlen, xlen, klen, hoff) = struct.unpack_from(
            "<8xHH4xIIIHHH8xI", head)
        raw_name = cd[pos + 46:pos + 46 + nlen]
        extra = cd[pos + 46 + nlen:pos + 46 + nlen + xlen]
        pos += 46 + nlen + xlen + klen
        if pos > len(cd):
            raise _Bad(f"central directory entry {index} runs past the directory")
        usize, csize, hoff = _zip64_extra(extra, [usize, csize, hoff])
        name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        hoff += shift
        if name in seen:
            anomalies.append(ZipAnomaly("corrupt", f"duplicate member name {name!r}"))
        seen.add(name)
        if _unsafe_name(name):
            anomalies.append(ZipAnomaly("unsafe", f"member name {name!r} escapes the archive "
                                                  "(path traversal)"))
        if flags & 0x61:
            anomalies.append(ZipAnomaly("corrupt", f"member {name!r} is encrypted or patched "
                                                   f"(flags 0x{flags:x})"))
        if method != 0:
            anomalies.append(ZipAnomaly("corrupt", f"member {name!r} is compressed (method {method}); torch "
                                                   "writes only stored members"))
        elif csize != usize:
            anomalies.append(ZipAnomaly("corrupt", f"stored member {name!r} declares {usize:,} bytes but "
                                                   f"holds {csize:,}"))
        local = read_at(f, hoff, 30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise _Bad(f"member {name!r} has no local header at byte {hoff}")
        lnlen, lxlen = struct.unpack_from("<HH", local, 26)
        lname = read_at(f, hoff + 30, lnlen)
        if lname != raw_name:
            local_name = lname.decode("utf-8", "replace")
            anomalies.append(ZipAnomaly("corrupt", f"member {name!r} is named {local_name!r} in its "
                                                   "local header"))
        data_off = hoff + 30 + lnlen + lxlen
        if data_off + csize > cd_start:
            anomalies.append(ZipAnomaly("corrupt", f"member {name!r} declares {csize:,} bytes that run past "
                                                   "the archive data"))
        members.append(ZipMember(name, index, hoff, data_off, csize, usize, method, flags, crc))
    by_offset = sorted(members, key=lambda m: m.header_offset)
    for a, b in zip(by_offset, by_offset[1:], strict=False):
        if a.data_offset + a.compressed_size > b.header_offset:
            anomalies.append(ZipAnomaly("corrupt", f"members {a.name!r} and {b.name!r} overlap"))
    if by_offset and by_offset[0].header_offset > 0 and shift == 0:
        anomalies.append(ZipAnomaly("note", f"{by_offset[0].header_offset:,} unreferenced bytes before the "
                                            "first member"))
    return members


def read_member(f: BinaryIO, m: ZipMember, cap: int = MAX_PICKLE_BYTES, budget: Budget | None = None) -> bytes:
    """A member's bytes (inflated when deflated, at most ``cap``); ValueError when over the cap
    or over what ``budget`` still allows to inflate."""
    if m.method == 0:
        if m.compressed_size > cap:
            raise ValueError(f"member {m.name!r} is {m.compressed_size:,} bytes (limit {cap:,})")
        return read_at(f, m.data_offset, m.compressed_size)
    if m.method != 8:
        raise ValueError(f"member {m.name!r} uses compression method {m.method}, which is not read")
    limit = cap if budget is None else min(cap, budget.inflated_left)
    if budget is not None and budget.expired():
        raise ValueError(f"member {m.name!r} was not inflated: the file's {budget.max_seconds:g} s scan time "
                         "limit was reached")
    raw = read_at(f, m.data_offset, min(m.compressed_size, cap))
    out = zlib.decompressobj(-15).decompress(raw, limit + 1)
    if budget is not None:
        budget.inflated_left -= min(len(out), limit)
    if len(out) > limit:
        if limit < cap and budget is not None:
            raise ValueError(f"member {m.name!r} was not inflated: the file's members inflate past "
                             f"{budget.max_inflated:,} bytes in total (zip bomb?)")
        raise ValueError(f"member {m.name!r} inflates past {cap:,} bytes (zip bomb?)")
    return out


def crc_ok(data: bytes, m: ZipMember) -> bool:
    """CRC-32 check; a stored CRC of 0 means torch wrote none (``set_crc32_options(False)``)."""
    return m.crc == 0 or zlib.crc32(data) == m.crc


def main_pickle(layout: ZipLayout) -> ZipMember | None:
    """The ``<folder>/data.pkl`` member ``torch.load`` unpickles, found as torch finds it
    (:mod:`sdforensics.readers.zip_members`); None when torch would refuse the zip or could read
    either of two entries."""
    return resolve_main_pickle(layout.members).member


def is_torchscript(layout: ZipLayout) -> bool:
    return any(re.search(r"(^|/)(code/|constants\.pkl$)", m.name) or m.name.endswith(".py")
               for m in layout.members)


def member_walks(f: BinaryIO, layout: ZipLayout, budget: Budget | None = None, limits: Limits | None = None,
                  main: tuple[ZipMember, ...] = ()
                  ) -> Iterator[tuple[ZipMember, list[WalkResult], list[str], list[str]]]:
    """Walk every pickle in a zip: every ``data.pkl`` candidate torch could read (case-insensitive),
    ``*.pkl`` members (any case), and pickles hidden under other names.

    Yields (member, walks, notes, reasons it was not read); a member that merely starts like a
    pickle (raw tensor bytes) is skipped unless it walks to ``STOP`` or names a global.
    """
    budget = budget or Budget()
    limits = limits or Limits.for_contents(len(layout.members), budget.deadline)
    main_ids = {m.index for m in main}
    for m in layout.members:
        named = m.name.lower().endswith((".pkl", ".pickle")) or m.index in main_ids
        head = read_at(f, m.data_offset, 8) if m.method == 0 else b""
        notes = []
        if head[:4] in (b"PK\x03\x04", b"7z\xbc\xaf") or head[:2] == b"\x1f\x8b":
            notes.append(f"member {m.name!r} is itself an archive")
        looks = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if not (named or looks or m.method != 0):
            if notes:
                yield m, [], notes, []
            continue
        if budget.expired():
            yield m, [], notes, [f"member {m.name!r} not scanned: the file's {budget.max_seconds:g} s scan time "
                                 "limit was reached"]
            continue
        try:
            data = read_member(f, m, budget=budget)
        except (ValueError, zlib.error) as err:
            yield m, [], notes, [f"{err}; not scanned"]
            continue
        results = walk_all(data, limits)
        if not named and not (results[0].stopped or results[0].globals):
            continue  # raw tensor bytes that merely start like a pickle
        if not named:
            notes.append(f"member {m.name!r} holds a pickle under a non-pickle name")
        if not crc_ok(data, m):
            notes.append(f"member {m.name!r} fails its CRC-32 check")
        yield m, results, notes, []


def member_pickles(f: BinaryIO, layout: ZipLayout) -> Iterator[tuple[ZipMember, list[WalkResult], list[str]]]:
    """:func:`member_walks` for the reader: (member, walks, notes and reasons it was not read)."""
    candidates = resolve_main_pickle(layout.members).candidates
    for m, results, notes, unread in member_walks(f, layout, main=candidates):
        yield m, results, notes + unread


def legacy_main_results(data: bytes, limits: Limits | None = None) -> list[WalkResult] | None:
    """The five walked pickles of a legacy (non-zip) torch file, or None when it is not one."""
    limits = limits if limits is not None else Limits()
    first = walk(data, 0, limits)
    if not (first.stopped and not first.globals and _MAGIC_LEGACY_PICKLE in data[:first.end]):
        return None
    results = [first]
    while len(results) < 5 and results[-1].stopped:
        results.append(walk(data, results[-1].end, limits))
    return results

