"""One file of ``sdf index``: a picklable task in, a picklable result out (run by any engine).

The worker never writes the library; it decides what the file is and, when it is new, fingerprints
it. In order of cost:

1. a path the catalog knows whose size is unchanged but whose mtime moved: hash it; the same
   SHA-256 means the same content (``same``), nothing else to do;
2. a file of the same size as catalogued files: its quick signature (first and last MiB), and
   when that matches one of theirs, its SHA-256; a match is a moved, renamed or copied file
   (``known``), recorded without fingerprinting;
3. a pickle (``.ckpt``/``.pt``...) must pass the ``sdf scan`` gate (every global allowlisted, the
   walk complete) before it is opened at all;
4. otherwise it is fingerprinted (``fingerprinted``); any error is a one-line reason (``skipped``).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdforensics.core.errors import SdfError
from sdforensics.core.safetext import printable
from sdforensics.fingerprinting.fingerprint import Fingerprint, scheme_from_json
from sdforensics.library.manifest import quick_signature, sha256_file
from sdforensics.readers.remote import as_location, is_url


@dataclass(frozen=True)
class FileTask:
    path: str
    size: int
    mtime_ns: int
    is_dir: bool = False
    recorded_sha256: str | None = None
    """The catalog's SHA-256 for this path, when its size is unchanged but its mtime moved."""
    peers: tuple[tuple[str, str], ...] = ()
    """``(quick signature, sha256)`` of catalogued files of the same size (move/copy candidates)."""
    scheme: dict[str, Any] | None = None
    """The library's fingerprint scheme (None: today's default)."""
    device: str = "cpu"
    threads: int | None = None
    """torch CPU threads the worker may use (its share of the cores when several run at once)."""


@dataclass(frozen=True)
class FileResult:
    path: str
    size: int
    mtime_ns: int
    status: str
    """``fingerprinted``, ``same`` (content unchanged), ``known`` (its SHA-256 is catalogued), ``skipped``."""
    sha256: str = ""
    quick: str | None = None
    label: str = ""
    reason: str = ""
    fingerprint: Fingerprint | None = None
    seconds: float = 0.0
    bytes_read: int = 0


def run_task(task: FileTask) -> FileResult:
    """Do one file (see the module docstring); never raises for a bad file."""
    start = time.monotonic()
    if is_url(task.path):
        return _remote_task(task, start)
    path = Path(task.path)
    try:
        quick = None
        if not task.is_dir:
            if task.recorded_sha256:
                sha = sha256_file(path)
                if sha == task.recorded_sha256:
                    return _result(task, "same", sha256=sha, seconds=time.monotonic() - start,
                                      bytes_read=task.size)  # fmt: skip
            if task.peers:
                quick = quick_signature(path, task.size)
                if any(q == quick for q, _ in task.peers):
                    sha = sha256_file(path)
                    if any(s == sha for _, s in task.peers):
                        return _result(task, "known", sha256=sha, quick=quick,
                                          seconds=time.monotonic() - start, bytes_read=task.size)  # fmt: skip
            else:
                quick = quick_signature(path, task.size)
            refusal = _scan_gate(path)
            if refusal:
                return _result(task, "skipped", reason=refusal, seconds=time.monotonic() - start)
        label, fp = _fingerprint(path, task)
        sha = str(fp.identity.get("sha256") or "") or _folder_digest(fp)
        return _result(task, "fingerprinted", sha256=sha, quick=quick, label=label, fingerprint=fp,
                          seconds=time.monotonic() - start, bytes_read=task.size)  # fmt: skip
    except SdfError as err:
        reason = str(err).removeprefix(f"{path}: ")
    except OSError as err:
        reason = f"cannot read: {err.strerror or err}"
    except MemoryError:
        reason = "out of memory while reading it"
    except Exception as err:  # a bug on one file must not stop the run: say so, go on
        reason = f"unexpected {type(err).__name__}: {err} (a bug in sdforensics)"
    return _result(task, "skipped", reason=printable(reason, 300), seconds=time.monotonic() - start)


def _remote_task(task: FileTask, start: float) -> FileResult:
    """A URL: streamed once by the remote reader (the reader's own allowlist refuses hostile pickles);
    no move detection (there is no local file to hash cheaply)."""
    try:
        label, fp = _fingerprint(as_location(task.path), task)
        size = int(fp.identity.get("bytes") or 0) or task.size
        sha = str(fp.identity.get("sha256") or "") or _folder_digest(fp)
        return FileResult(task.path, size, task.mtime_ns, "fingerprinted", sha256=sha, label=label,
                          fingerprint=fp, seconds=time.monotonic() - start, bytes_read=size)
    except SdfError as err:
        reason = str(err).removeprefix(f"{task.path}: ")
    except Exception as err:  # a bug on one file must not stop the run: say so, go on
        reason = f"unexpected {type(err).__name__}: {err} (a bug in sdforensics)"
    return _result(task, "skipped", reason=printable(reason, 300), seconds=time.monotonic() - start)


def failed_result(task: FileTask, reason: str) -> FileResult:
    """The result of a task no worker could finish (an engine's every try died)."""
    return _result(task, "skipped", reason=printable(reason, 300))


def _result(task: FileTask, status: str, **fields: Any) -> FileResult:
    return FileResult(task.path, task.size, task.mtime_ns, status, **fields)


def _fingerprint(path: Path, task: FileTask) -> tuple[str, Fingerprint]:
    from sdforensics.api import fingerprint_any

    if task.threads:
        import torch

        torch.set_num_threads(task.threads)  # a cap: the fingerprint pass never raises it
    scheme = scheme_from_json(task.scheme) if task.scheme else None
    return fingerprint_any(path, task.device, None, scheme=scheme)


def _scan_gate(path: Path) -> str | None:
    """Why a pickle may not be opened (the ``sdf scan`` verdict), or None for other formats and clean pickles."""
    from sdforensics.readers import sniff
    from sdforensics.readers.scan import scan_file

    if sniff(path) not in ("zip", "pickle"):
        return None
    scan = scan_file(path)
    if scan.verdict == "clean":
        return None
    bad = [f"{g.module}.{g.name}" for g in scan.globals if g.verdict != "safe"]
    why = bad[:3] or list(scan.findings[:1]) or list(scan.incomplete[:1]) or [scan.error or "not shown safe"]
    return printable(f"{scan.verdict} pickle, not opened: {'; '.join(why)}", 300)


def _folder_digest(fp: Fingerprint) -> str:
    """A content id for a diffusers folder (no single file to hash): its tensors' digests."""
    h = hashlib.sha256()
    for name in sorted(fp.tensors):
        h.update(f"{name}:{fp.tensors[name].digest}\n".encode())
    return "tensors:" + h.hexdigest()


def stat_key(path: Path) -> tuple[int, int, bool]:
    """``(size, mtime_ns, is_dir)``: a folder (diffusers) counts the total size and the newest mtime
    of its files."""
    st = path.stat()
    if not path.is_dir():
        return st.st_size, st.st_mtime_ns, False
    size, mtime = 0, st.st_mtime_ns
    for root, _, files in os.walk(path):
        for name in files:
            s = (Path(root) / name).stat()
            size += s.st_size
            mtime = max(mtime, s.st_mtime_ns)
    return size, mtime, True
