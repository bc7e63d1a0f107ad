"""Static safety scan of pickle checkpoints (``sdf scan``): globals, broken pickles, zip anomalies.

Nothing is unpickled and nothing is extracted: every pickle is walked opcode by opcode
(:func:`sdforensics.readers.pickle_ops.walk`), every zip is read from its central directory with
bounds checks. A file's verdict is the worst of its globals' verdicts
(``data/pickle_allowlist.json``), raised to ``suspicious`` by any anomaly.

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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import SdfError
from .base import PickleGlobal
from .pickle_ops import DANGEROUS, SAFE, SUSPICIOUS, WalkResult, verdict, walk, walk_all, worst

MAX_PICKLE_BYTES = 64 * 1024 * 1024
MAX_ZIP_MEMBERS = 200_000
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

    def member(self, name: str) -> ZipMember | None:
        return next((m for m in self.members if m.name == name), None)


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


def read_member(f: BinaryIO, m: ZipMember, cap: int = MAX_PICKLE_BYTES) -> bytes:
    """A member's bytes (inflated when deflated, at most ``cap``); ValueError when over the cap."""
    if m.method == 0:
        if m.compressed_size > cap:
            raise ValueError(f"member {m.name!r} is {m.compressed_size:,} bytes (limit {cap:,})")
        return _read_at(f, m.data_offset, m.compressed_size)
    if m.method != 8:
        raise ValueError(f"member {m.name!r} uses compression method {m.method}, which is not read")
    raw = _read_at(f, m.data_offset, min(m.compressed_size, cap))
    out = zlib.decompressobj(-15).decompress(raw, cap + 1)
    if len(out) > cap:
        raise ValueError(f"member {m.name!r} inflates past {cap:,} bytes (zip bomb?)")
    return out


def crc_ok(data: bytes, m: ZipMember) -> bool:
    """CRC-32 check; a stored CRC of 0 means torch wrote none (``set_crc32_options(False)``)."""
    return m.crc == 0 or zlib.crc32(data) == m.crc


def main_pickle(layout: ZipLayout) -> ZipMember | None:
    """The torch ``<prefix>/data.pkl`` member (one top-level folder of any name)."""
    return next((m for m in layout.members if re.fullmatch(r"[^/]+/data\.pkl", m.name)), None)


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

    @property
    def verdict(self) -> str:
        """``dangerous`` if a global is; ``suspicious`` for unknown globals, anomalies, errors."""
        v = worst(g.verdict for g in self.globals)
        if v == SAFE and (self.findings or self.error or self.format == "unknown"):
            v = SUSPICIOUS
        return {SAFE: "clean"}.get(v, v)


@dataclass(frozen=True)
class ScanReport:
    """The scan of a file or of every candidate file of a folder."""

    root: Path
    files: tuple[FileScan, ...]

    @property
    def verdict(self) -> str:
        """``clean``, ``suspicious`` or ``dangerous``: the worst of the files."""
        order = ["clean", SUSPICIOUS, DANGEROUS]
        return max((f.verdict for f in self.files), key=order.index, default="clean")


def exit_code(report: ScanReport) -> int:
    """Like picklescan: 1 when a dangerous global is found, else 2 on a scan error, else 0.

    Suspicious-only files are listed but exit 0.
    """
    if report.verdict == DANGEROUS:
        return 1
    return 2 if any(f.error for f in report.files) else 0


def _globals(results: list[WalkResult], member: str, seen: dict[tuple[str, str, str], PickleGlobal]) -> None:
    for r in results:
        for g in r.globals:
            key = (g.module, g.name, member)
            if key not in seen:
                seen[key] = PickleGlobal(g.module, g.name, verdict(g.module, g.name), member)


def _walk_findings(results: list[WalkResult], where: str) -> list[str]:
    out = []
    for r in results:
        out += [f"{where}{n}" for n in r.notes]
        if r.error:
            out.append(f"{where}pickle is broken: {r.error}")
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


def _scan_zip(f: BinaryIO, path: Path) -> FileScan:
    try:
        layout = read_zip_layout(f)
    except ValueError as err:
        return FileScan(path, "zip", error=f"cannot read the zip: {err}")
    findings = [a.text for a in layout.anomalies]
    seen: dict[tuple[str, str, str], PickleGlobal] = {}
    n_ops = 0
    fmt = "torchscript" if is_torchscript(layout) else ("pickle-zip" if main_pickle(layout) else "zip")
    if fmt == "torchscript":
        findings.append("TorchScript archive (code/ or constants.pkl): reported, never loaded")
    for m, results, notes in member_pickles(f, layout):
        findings += notes
        n_ops += sum(r.n_opcodes for r in results)
        _globals(results, m.name, seen)
        findings += _walk_findings(results, f"{m.name}: ")
    return FileScan(path, fmt, tuple(seen.values()), tuple(findings), None, n_ops)


def member_pickles(f: BinaryIO, layout: ZipLayout) -> Iterator[tuple[ZipMember, list[WalkResult], list[str]]]:
    """Walk every pickle in a zip: ``*.pkl`` members, and pickles hidden under other names.

    Yields (member, walks, notes); a member that merely starts like a pickle (raw tensor bytes)
    is skipped unless it walks to ``STOP`` or names a global.
    """
    for m in layout.members:
        named = m.name.endswith((".pkl", ".pickle"))
        head = _read_at(f, m.data_offset, 8) if m.method == 0 else b""
        notes = []
        if head[:4] in (b"PK\x03\x04", b"7z\xbc\xaf") or head[:2] == b"\x1f\x8b":
            notes.append(f"member {m.name!r} is itself an archive")
        looks = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if not (named or looks or m.method != 0):
            if notes:
                yield m, [], notes
            continue
        try:
            data = read_member(f, m)
        except (ValueError, zlib.error) as err:
            yield m, [], [*notes, f"{err}; not scanned"]
            continue
        results = walk_all(data)
        if not named and not (results[0].stopped or results[0].globals):
            continue  # raw tensor bytes that merely start like a pickle
        if not named:
            notes.append(f"member {m.name!r} holds a pickle under a non-pickle name")
        if not crc_ok(data, m):
            notes.append(f"member {m.name!r} fails its CRC-32 check")
        yield m, results, notes


def legacy_main_results(data: bytes) -> list[WalkResult] | None:
    """The five walked pickles of a legacy (non-zip) torch file, or None when it is not one."""
    first = walk(data, 0)
    if not (first.stopped and not first.globals and _MAGIC_LEGACY_PICKLE in data[:first.end]):
        return None
    results = [first]
    while len(results) < 5 and results[-1].stopped:
        results.append(walk(data, results[-1].end))
    return results


def _scan_pickle(f: BinaryIO, path: Path, size: int) -> FileScan:
    f.seek(0)
    data = f.read(MAX_PICKLE_BYTES)
    findings = []
    legacy = legacy_main_results(data)
    results = legacy if legacy is not None else walk_all(data)
    fmt = "pickle-legacy" if legacy is not None else "pickle"
    if legacy is not None and len(legacy) < 5:
        findings.append(f"legacy torch file holds {len(legacy)} pickles, expected 5")
    if _has_eocd(f, size):
        findings.append("the file also holds a zip archive (polyglot)")
    if legacy is None and len(results) > 1:
        findings.append(f"{len(results)} consecutive pickles without the torch magic number")
    if legacy is None and results[-1].stopped and results[-1].end < size:
        findings.append(f"{size - results[-1].end:,} bytes after the last pickle")
    if size > MAX_PICKLE_BYTES and not results[-1].stopped:
        findings.append(f"only the first {MAX_PICKLE_BYTES:,} bytes were scanned")
    seen: dict[tuple[str, str, str], PickleGlobal] = {}
    _globals(results, "", seen)
    findings += _walk_findings(results, "")
    return FileScan(path, fmt, tuple(seen.values()), tuple(findings), None, sum(r.n_opcodes for r in results))


def scan_file(path: Path) -> FileScan:
    """Scan one file (format sniffed from its bytes)."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return FileScan(path, "unknown", error="not a regular file (FIFO, device or folder); not read")
        with open(path, "rb") as f:
            head = f.read(512)
            fmt = sniff(head, st.st_size)
            if fmt == "zip" or (fmt == "unknown" and _has_eocd(f, st.st_size)):
                return _check_readable(_scan_zip(f, path))
            if fmt == "pickle":
                return _check_readable(_scan_pickle(f, path, st.st_size))
            if fmt == "safetensors":
                return FileScan(path, "safetensors", findings=(), error=None)
            if fmt == "torch-tar":
                return FileScan(path, "torch-tar", findings=("torch 0.1.x tar format: not scanned",))
            return FileScan(path, "unknown", findings=("not a pickle, zip or safetensors file",))
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
                        fs.n_opcodes)
    return fs


def _has_eocd(f: BinaryIO, size: int) -> bool:
    start = max(0, size - 65557)
    return b"PK\x05\x06" in _read_at(f, start, size - start)


def scan_path(path: Path | str) -> ScanReport:
    """Scan a file, or every model-like file of a folder (by extension or magic bytes).

    Raises :class:`SdfError` when ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists() and not root.is_symlink():
        raise SdfError(f"{root}: no such file or folder")
    if not root.is_dir():
        return ScanReport(root, (scan_file(root),))
    files = []
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.is_symlink()):
        if p.suffix.lower() in PICKLE_SUFFIXES or _sniff_path(p) in ("zip", "torch-tar", "pickle-binary"):
            files.append(scan_file(p))
    return ScanReport(root, tuple(files))


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
    """Escape control and other non-printable characters for terminals and logs."""
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
        if fs.error:
            lines.append(f"  error      {_esc(fs.error)}")
        if fs.format == "safetensors":
            lines.append("  not a pickle: safetensors holds no code")
    n_d = sum(f.verdict == DANGEROUS for f in report.files)
    lines.append(f"{len(report.files)} file(s) scanned, {n_d} dangerous; verdict: {report.verdict}")
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
            "findings": list(fs.findings), "opcodes": fs.n_opcodes,
            "globals": [{"module": g.module, "name": g.name, "verdict": g.verdict, "member": g.member}
                        for g in fs.globals],
        } for fs in report.files],
    }
