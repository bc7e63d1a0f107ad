"""Static safety scan of pickle checkpoints (``sdf scan``): globals, broken pickles, zip anomalies.

Nothing is unpickled and nothing is extracted: every pickle is walked opcode by opcode
(:func:`sdforensics.readers.pickle_ops.walk`), every zip is read from its central directory with
bounds checks. A file's verdict is the worst of its globals' verdicts
(``data/pickle_allowlist.json``), raised to ``suspicious`` by any anomaly or by anything that
left the scan incomplete (a limit, a member not read, a format not scanned).

The contract (README, "Exit codes and what clean guarantees"): ``clean`` and exit 0 only when
every pickle in every file was walked to its ``STOP`` and every global it names is on the
allowlist; exit 1 when a file is dangerous or cannot be shown safe; exit 2 when nothing could be
scanned (no such file, not a regular file, not a model file at all).

>>> import pickle, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "x.pkl"
>>> _ = p.write_bytes(pickle.dumps({"a": 1}, protocol=2))
>>> scan_path(p).verdict
'clean'
"""

from __future__ import annotations

import os
import re
import stat
import struct
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import SdfError
from .base import PickleGlobal
from .pickle_ops import DANGEROUS, SAFE, SUSPICIOUS, Limits, WalkResult, verdict, walk, walk_all, worst
from .zip_members import resolve_main_pickle

MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_ZIP_MEMBERS = 200_000
MAX_INFLATED_BYTES = 64 * 1024 * 1024
"""Most bytes inflated from all deflated members of one file together (a zip bomb of many
central-directory entries pointing at one member would otherwise inflate it again and again)."""
MAX_SECONDS = 60.0
"""Wall-clock bound of one file's scan; past it the scan stops, incomplete (exit 1)."""
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".joblib", ".dat", ".data", ".pt2",
                   ".safetensors", ".zip", ".npy", ".th"}
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


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
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
    tail = _read_at(f, tail_start, size - tail_start)
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
        loc = _read_at(f, eocd - 20, 20) if eocd >= 20 else b""
        if len(loc) == 20 and loc[:4] == b"PK\x06\x07":
            rec_off = eocd - 76  # where a ZIP64 record without extensible data sits
            rec = _read_at(f, rec_off, 56) if rec_off >= 0 else b""
            if rec[:4] != b"PK\x06\x06":
                rec_off = struct.unpack_from("<Q", loc, 8)[0]
                rec = _read_at(f, rec_off, 56)
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
        cd = _read_at(f, cd_start, cd_size)
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
        local = _read_at(f, hoff, 30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise _Bad(f"member {name!r} has no local header at byte {hoff}")
        lnlen, lxlen = struct.unpack_from("<HH", local, 26)
        lname = _read_at(f, hoff + 30, lnlen)
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
        return _read_at(f, m.data_offset, m.compressed_size)
    if m.method != 8:
        raise ValueError(f"member {m.name!r} uses compression method {m.method}, which is not read")
    limit = cap if budget is None else min(cap, budget.inflated_left)
    if budget is not None and budget.expired():
        raise ValueError(f"member {m.name!r} was not inflated: the file's {budget.max_seconds:g} s scan time "
                         "limit was reached")
    raw = _read_at(f, m.data_offset, min(m.compressed_size, cap))
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


# -------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class FileScan:
    """The scan of one file."""

    path: Path
    format: str
    """``pickle-zip``, ``pickle-legacy``, ``pickle``, ``torchscript``, ``torch-tar``, ``safetensors``,
    ``zip`` or ``unknown``."""
    globals: tuple[PickleGlobal, ...] = ()
    findings: tuple[str, ...] = ()
    error: str | None = None
    n_opcodes: int = 0
    incomplete: tuple[str, ...] = ()
    """Why the scan could not show the file safe: a pickle not walked to its ``STOP`` (broken, or
    stopped at a limit), a member not read, a format not scanned."""

    @property
    def verdict(self) -> str:
        """``dangerous`` if a global is; ``suspicious`` (cannot be shown safe) for a global not on
        the allowlist, an anomaly or an incomplete scan; ``error`` when nothing could be scanned
        (unreadable, or not a model file at all); else ``clean``."""
        v = worst(g.verdict for g in self.globals)
        if v == DANGEROUS:
            return DANGEROUS
        if v == SUSPICIOUS or self.findings or self.incomplete:
            return SUSPICIOUS
        if self.error or self.format == "unknown":
            return "error"
        return "clean"


_ORDER = ["clean", "error", SUSPICIOUS, DANGEROUS]


@dataclass(frozen=True)
class ScanReport:
    """The scan of a file or of every candidate file of a folder."""

    root: Path
    files: tuple[FileScan, ...]

    @property
    def verdict(self) -> str:
        """``clean``, ``error``, ``suspicious`` or ``dangerous``: the worst of the files
        (``error`` when there is no file to scan)."""
        return max((f.verdict for f in self.files), key=_ORDER.index, default="error")


def exit_code(report: ScanReport) -> int:
    """0 clean; 1 when a file is dangerous or cannot be shown safe; 2 when a file (or the
    folder) held nothing to scan: unreadable, not a regular file, not a model file.

    A folder's code is 1 if any file's is, else 2 if any file's is (or it holds no model
    file), else 0.
    """
    verdicts = {f.verdict for f in report.files}
    if verdicts & {DANGEROUS, SUSPICIOUS}:
        return 1
    return 2 if not verdicts or "error" in verdicts else 0


def _globals(results: list[WalkResult], member: str, seen: dict[tuple[str, str, str], PickleGlobal]) -> None:
    for r in results:
        for g in r.globals:
            key = (g.module, g.name, member)
            if key not in seen:
                seen[key] = PickleGlobal(g.module, g.name, verdict(g.module, g.name), member)


def _walk_findings(results: list[WalkResult], where: str) -> list[str]:
    """Notes of the walks (odd but complete pickles)."""
    return [f"{where}{n}" for r in results for n in r.notes]


def _walk_incomplete(results: list[WalkResult], where: str) -> list[str]:
    """Why a walk did not reach its ``STOP``: a limit, or a broken pickle."""
    out = []
    for r in results:
        if r.error:
            what = "stopped at a safety limit" if r.over_limit else "is broken"
            out.append(f"{where}pickle {what} before its STOP: {r.error}")
    return out


def sniff(head: bytes, size: int) -> str:
    """Format from magic bytes (never from the extension)."""
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "torch-tar"
    first = head[:1]
    if first == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") or (first and first in b"(c]})N"):
        return "pickle"
    return "unknown"


def _scan_zip(f: BinaryIO, path: Path, budget: Budget) -> FileScan:
    try:
        layout = read_zip_layout(f)
    except ValueError as err:
        return FileScan(path, "zip", incomplete=(f"cannot read the zip: {err}",))
    findings = [a.text for a in layout.anomalies]
    incomplete: list[str] = []
    seen: dict[tuple[str, str, str], PickleGlobal] = {}
    n_ops = 0
    main = resolve_main_pickle(layout.members)
    ts = is_torchscript(layout)
    fmt = "torchscript" if ts else ("pickle-zip" if main.candidates else "zip")
    if ts:
        findings.append("TorchScript archive (code/ or constants.pkl): torch.load hands it to torch.jit.load; "
                        "reported, never loaded")
    if main.ambiguous and main.problem:
        findings.append(main.problem)
    limits = Limits.for_contents(len(layout.members), budget.deadline)
    n_pickles = 0
    for m, results, notes, unread in _member_walks(f, layout, budget, limits, main.candidates):
        findings += notes
        incomplete += unread
        n_ops += sum(r.n_opcodes for r in results)
        n_pickles += bool(results)
        _globals(results, m.name, seen)
        findings += _walk_findings(results, f"{m.name}: ")
        incomplete += _walk_incomplete(results, f"{m.name}: ")
    error = None
    if fmt == "zip" and not n_pickles:
        error = "a zip archive without a torch data.pkl or any other pickle: not a model file"
    return FileScan(path, fmt, tuple(seen.values()), tuple(findings), error, n_ops, tuple(incomplete))


def _member_walks(f: BinaryIO, layout: ZipLayout, budget: Budget | None = None, limits: Limits | None = None,
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
        head = _read_at(f, m.data_offset, 8) if m.method == 0 else b""
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
    """:func:`_member_walks` for the reader: (member, walks, notes and reasons it was not read)."""
    candidates = resolve_main_pickle(layout.members).candidates
    for m, results, notes, unread in _member_walks(f, layout, main=candidates):
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


_PREFIX_BYTES = 1 << 16
_NOT_PICKLE = "not a model file: not a pickle, zip or safetensors file"


def _out_of_bytes(r: WalkResult) -> bool:
    return bool(r.error) and any(s in (r.error or "") for s in ("remain", "without STOP", "no end of line"))


def _scan_pickle(f: BinaryIO, path: Path, size: int, budget: Budget) -> FileScan:
    """Walk the file as ``torch.load`` would unpickle it when it is not a zip (first pickle first).

    A file whose first pickle breaks before naming any global is not a pickle at all: no
    unpickler could import anything from it (format ``unknown``, exit 2).
    """
    f.seek(0)
    data = f.read(min(size, _PREFIX_BYTES))
    limits = Limits.for_contents(min(size, MAX_PICKLE_BYTES) // 64, budget.deadline)
    first = walk(data, 0, limits)
    if size > len(data) and (first.stopped or first.globals or _out_of_bytes(first) or first.over_limit):
        data += f.read(MAX_PICKLE_BYTES - len(data))
        first = walk(data, 0, limits)
    if not first.stopped and not first.globals and not first.over_limit:
        return FileScan(path, "unknown", error=f"{_NOT_PICKLE} ({first.error})")
    findings = []
    incomplete = []
    legacy = legacy_main_results(data, limits)
    results = legacy if legacy is not None else walk_all(data, limits)
    fmt = "pickle-legacy" if legacy is not None else "pickle"
    if legacy is not None and len(legacy) < 5:
        findings.append(f"legacy torch file holds {len(legacy)} pickles, expected 5")
    if legacy is None and len(results) > 1:
        findings.append(f"{len(results)} consecutive pickles without the torch magic number")
    if legacy is None and results[-1].stopped and results[-1].end < size:
        findings.append(f"{size - results[-1].end:,} bytes after the last pickle")
    if size > len(data) and not results[-1].stopped and not results[-1].error:
        incomplete.append(f"only the first {len(data):,} bytes were scanned")
    seen: dict[tuple[str, str, str], PickleGlobal] = {}
    _globals(results, "", seen)
    findings += _walk_findings(results, "")
    incomplete += _walk_incomplete(results, "")
    if size > len(data) and results[-1].error and _out_of_bytes(results[-1]):
        incomplete.append(f"the pickle continues past the {MAX_PICKLE_BYTES:,} bytes scanned")
    return FileScan(path, fmt, tuple(seen.values()), tuple(findings), None, sum(r.n_opcodes for r in results),
                    tuple(incomplete))


def _is_tar(f: BinaryIO) -> bool:
    """True when Python's tarfile (which torch's legacy loader tries first) opens the file."""
    f.seek(0)
    try:
        with tarfile.open(fileobj=f, mode="r:"):  # reads the first header only
            return True
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return False
    finally:
        f.seek(0)


def _scan_safetensors(f: BinaryIO, path: Path, size: int) -> FileScan:
    from .safetensors_reader import read_header

    f.seek(0)
    try:
        read_header(f, size, str(path))
    except SdfError as err:
        msg = str(err).removeprefix(f"{path}: ")
        return FileScan(path, "unknown", error=f"not a model file: not a valid safetensors file ({msg})")
    return FileScan(path, "safetensors")


def _merge(path: Path, parts: list[FileScan]) -> FileScan:
    """One file read several ways (a polyglot): everything any reading found."""
    if len(parts) == 1:
        return parts[0]
    real = [p for p in parts if p.format != "unknown"] or parts[:1]
    findings = [f for p in parts for f in p.findings]
    if len(real) > 1:
        findings.insert(0, "the file is several formats at once (polyglot: " + " + ".join(p.format for p in real)
                        + "); each reading was scanned")
    seen: dict[tuple[str, str, str], PickleGlobal] = {}
    for p in parts:
        for g in p.globals:
            seen.setdefault((g.module, g.name, g.member), g)
    errors = [p.error for p in real if p.error]
    return FileScan(path, real[0].format, tuple(seen.values()), tuple(findings), errors[0] if errors else None,
                    sum(p.n_opcodes for p in parts), tuple(r for p in parts for r in p.incomplete))


def scan_file(path: Path, max_seconds: float = MAX_SECONDS) -> FileScan:
    """Scan one file (format sniffed from its bytes, read every way a loader would read it)."""
    budget = Budget(max_seconds=max_seconds)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return FileScan(path, "unknown", error="not a regular file (FIFO, device or folder); not read")
        with open(path, "rb") as f:
            head = f.read(512)
            fmt = sniff(head, st.st_size)
            parts: list[FileScan] = []
            if fmt == "safetensors":
                parts.append(_scan_safetensors(f, path, st.st_size))
            zip_start = head[:4] == b"PK\x03\x04"
            if zip_start or _has_eocd(f, st.st_size):
                parts.append(_scan_zip(f, path, budget))
            if not zip_start:  # torch.load tries tarfile, then unpickles the file
                if _is_tar(f):
                    parts.append(FileScan(path, "torch-tar", incomplete=(
                        "torch 0.1.x tar format: torch.load unpickles its members, which sdforensics does not "
                        "scan; it cannot be shown safe",)))
                else:
                    pk = _scan_pickle(f, path, st.st_size, budget)
                    if pk.format != "unknown" or not parts:
                        parts.append(pk)
            return _check_readable(_merge(path, parts))
    except OSError as err:
        return FileScan(path, "unknown", error=f"cannot read: {err.strerror or err}")


def _check_readable(fs: FileScan) -> FileScan:
    """For a clean torch pickle, also check its storages and tensor bounds with the reader.

    Safe by construction: the reader unpickles only after the same static checks passed, with
    inert stand-ins for every global.
    """
    if fs.verdict != "clean" or fs.format not in ("pickle-zip", "pickle-legacy"):
        return fs
    from .pickle_reader import open_pickle

    try:
        open_pickle(fs.path)
    except SdfError as err:
        msg = str(err).removeprefix(f"{fs.path}: ")
        return FileScan(fs.path, fs.format, fs.globals, (*fs.findings, f"not readable: {msg}"), None,
                        fs.n_opcodes, fs.incomplete)
    return fs


def _has_eocd(f: BinaryIO, size: int) -> bool:
    start = max(0, size - 65557)
    return b"PK\x05\x06" in _read_at(f, start, size - start)


def scan_path(path: Path | str, max_seconds: float = MAX_SECONDS) -> ScanReport:
    """Scan a file, or every model-like file of a folder (by extension or magic bytes).

    In a folder, symbolic links are followed when they stay inside the folder (or, for a
    Hugging Face cache snapshot, inside its ``models--org--name`` repository); a link that
    leaves it, dangles or loops is listed as not scanned (exit 1).

    Raises :class:`SdfError` when ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise SdfError(f"{root}: no such file or folder")
    if not root.is_dir():
        return ScanReport(root, (scan_file(root, max_seconds),))
    from .diffusers_reader import confinement_root

    allowed = confinement_root(root.resolve())
    files = []
    for p in sorted(_folder_entries(root)):
        if p.is_symlink():
            try:
                target = p.resolve(strict=True)
            except (OSError, RuntimeError) as err:
                files.append(FileScan(p, "unknown", incomplete=(f"symbolic link that dangles or loops ({err}); "
                                                                "not scanned",)))
                continue
            if not target.is_relative_to(allowed):
                files.append(FileScan(p, "unknown", incomplete=(f"symbolic link to {target}, outside {allowed}; "
                                                                "not scanned",)))
                continue
            if target.is_dir():
                continue
        if not p.is_file():
            continue
        if p.suffix.lower() in PICKLE_SUFFIXES or _sniff_path(p) in ("zip", "torch-tar", "pickle-binary"):
            files.append(scan_file(p, max_seconds))
    return ScanReport(root, tuple(files))


def _folder_entries(root: Path) -> Iterator[Path]:
    """Every file and link under ``root`` (links to folders are not descended into)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            yield base / name
        for name in dirnames:
            if (base / name).is_symlink():
                yield base / name


def _sniff_path(p: Path) -> str:
    """Like :func:`sniff`, but text files that merely start like protocol-0 pickles do not count."""
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unknown"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle-binary"
    return sniff(head, p.stat().st_size)


# ------------------------------------------------------------------------------------- render


def _esc(s: str) -> str:
    r"""Escape control, bidi, invisible and other non-printable characters for terminals and logs.

    >>> _esc("a\u202eb\u200bc\x1b")
    'a\\u202eb\\u200bc\\x1b'
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def render_scan_text(report: ScanReport) -> str:
    """A terminal summary: one block per file, dangerous globals first."""
    lines = []
    order = {DANGEROUS: 0, SUSPICIOUS: 1, SAFE: 2}
    for fs in report.files:
        lines.append(f"{_esc(str(fs.path))}: {fs.verdict.upper()} ({fs.format})")
        for g in sorted(fs.globals, key=lambda g: order[g.verdict]):
            where = f"  [{_esc(g.member)}]" if g.member else ""
            lines.append(f"  {g.verdict:<10} {_esc(g.qualname)}{where}")
        lines += [f"  finding    {_esc(t)}" for t in fs.findings]
        lines += [f"  incomplete {_esc(t)}" for t in fs.incomplete]
        if fs.error:
            lines.append(f"  error      {_esc(fs.error)}")
        if fs.verdict == SUSPICIOUS:
            lines.append("  not shown safe: exit 1 (see the lines above)")
        if fs.format == "safetensors":
            lines.append("  not a pickle: safetensors holds no code")
    n_d = sum(f.verdict == DANGEROUS for f in report.files)
    lines.append(f"{len(report.files)} file(s) scanned, {n_d} dangerous; verdict: {report.verdict}")
    if not report.files:
        lines.append("no model file found: nothing was scanned")
    return "\n".join(lines)


def scan_to_json(report: ScanReport) -> dict[str, Any]:
    """A JSON-ready dict (``"schema": "sdforensics.scan/1"``)."""
    return {
        "schema": "sdforensics.scan/1",
        "path": str(report.root),
        "verdict": report.verdict,
        "exit_code": exit_code(report),
        "files": [{
            "path": str(fs.path), "format": fs.format, "verdict": fs.verdict, "error": fs.error,
            "findings": list(fs.findings), "incomplete": list(fs.incomplete), "opcodes": fs.n_opcodes,
            "globals": [{"module": g.module, "name": g.name, "verdict": g.verdict, "member": g.member}
                        for g in fs.globals],
        } for fs in report.files],
    }
