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
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..core.errors import SdfError
from ..core.safetext import terminal_safe as _esc
from .base import PickleGlobal
from .containers import HEAD_BYTES, ZIP_LOCAL, sniff_bytes
from .pickle_ops import DANGEROUS, SAFE, SUSPICIOUS, Limits, WalkResult, verdict, walk, walk_all, worst
from .zip_archive import (
    MAX_PICKLE_BYTES,
    MAX_SECONDS,
    Budget,
    is_torchscript,
    legacy_main_results,
    member_walks,
    read_at,
    read_zip_layout,
)
from .zip_members import resolve_main_pickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle", ".joblib", ".dat", ".data", ".pt2",
                   ".safetensors", ".zip", ".npy", ".th"}

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
    for m, results, notes, unread in member_walks(f, layout, budget, limits, main.candidates):
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
            head = f.read(HEAD_BYTES)
            fmt = sniff_bytes(head, st.st_size)
            parts: list[FileScan] = []
            if fmt == "safetensors":
                parts.append(_scan_safetensors(f, path, st.st_size))
            zip_start = head[:4] == ZIP_LOCAL
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
    return b"PK\x05\x06" in read_at(f, start, size - start)


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
        if p.suffix.lower() in PICKLE_SUFFIXES or _sniff_path(p) in ("zip", "torch-tar", "pickle"):
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
    """The container kind of a file found in a folder ("unknown" when it cannot be read)."""
    try:
        with open(p, "rb") as f:
            return sniff_bytes(f.read(HEAD_BYTES), os.fstat(f.fileno()).st_size)
    except OSError:
        return "unknown"


# ------------------------------------------------------------------------------------- render


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
