"""Read checkpoints where they are: ``https://`` (and ``http://``) natively, any other ``scheme://``
through fsspec (``s3://`` with s3fs, ``hf://`` with huggingface_hub), streamed once, never written
to disk.

A remote file is read through :class:`RemoteFile`, a forward-streaming file object over *bounded*
range requests:

* the first request asks for bytes ``0..HEAD_BLOCK`` (1 MiB): a safetensors header's 8-byte length
  is checked against the cap before more is asked for, and the header is validated
  (:func:`sdforensics.readers.safetensors_reader.read_header`) before any tensor byte is trusted;
* the body follows in requests of ``BLOCK`` bytes (32 MiB) on one keep-alive connection;
* a dropped connection, a timeout, a 5xx or 429 answer is retried with exponential backoff and the
  read resumes from the last byte received, not from zero (``retries`` failures in a row without a
  byte of progress give up, with one line);
* every answer is checked against the first: same total size (``Content-Range``) and same validator
  (``ETag``, else ``Last-Modified``). A change means the file was replaced while being read: the
  read stops with :class:`RemoteChangedError` and nothing is fingerprinted or stored;
* a server that ignores ``Range`` (200 with the whole body) is streamed once from byte 0 when the
  read starts there (safe: the body *is* the file, in order); anything it cannot do (resume after a
  drop, jump to a zip's central directory) is one clear line.

The three containers read remotely: safetensors (:class:`RemoteSafetensorsCheckpoint`, the local
reader over a :class:`RemoteFile`), torch ``.ckpt``/``.pt`` (zip or legacy; the zip index at the end
is found with range requests, then the file is streamed once from byte 0) and sharded
``*.safetensors.index.json`` checkpoints (shard URLs resolved next to the index, never outside it).
A diffusers folder has no index over plain HTTP: point at a component's ``.safetensors`` or its
``.index.json`` instead.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import json
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PosixPath
from typing import TYPE_CHECKING, Any, Protocol

from sdforensics.core.errors import CorruptFileError, SdfError, UnsafeFileError, UnsupportedFormatError
from sdforensics.readers.base import ByteTap, Checkpoint, ClosingCheckpoint, FormatInfo, TensorInfo
from sdforensics.readers.safetensors_reader import (
    SafetensorsCheckpoint,
    looks_like_safetensors,
    read_header,
)

if TYPE_CHECKING:
    import torch

HEAD_BLOCK = 1 << 20
"""The first range request: the 8-byte header length, and the whole header of an SD checkpoint."""
BLOCK = 32 << 20
"""Each later range request of a sequential read."""
RANDOM_BLOCK = 64 << 10
"""A read away from the stream (a zip's central directory, its ``data.pkl``)."""
JSON_CAP = 10 * 1024 * 1024
"""Largest ``*.index.json`` read (as the local diffusers reader)."""
SHARD_CAP = 1024
MAX_REDIRECTS = 5

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
             "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


class RemoteError(CorruptFileError):
    """A remote file could not be read (one line: the URL, what the server did, at which byte)."""


class RemoteChangedError(RemoteError):
    """The remote file changed (size or validator) between two requests: it was replaced."""


@dataclass(frozen=True)
class RemoteOptions:
    """How hard to try. ``timeout``: seconds a connect or a read may stall; ``retries``: failures in a
    row (without a byte of progress) before giving up; ``backoff``: first wait, doubled each time."""

    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.5
    block: int = BLOCK
    max_backoff: float = 30.0

    @classmethod
    def from_env(cls) -> RemoteOptions:
        """Defaults, changed by ``SDF_REMOTE_TIMEOUT``, ``SDF_REMOTE_RETRIES``, ``SDF_REMOTE_BACKOFF`` and
        ``SDF_REMOTE_BLOCK`` (bytes) when set."""
        d = cls()
        try:
            return cls(
                timeout=float(os.environ.get("SDF_REMOTE_TIMEOUT", d.timeout)),
                retries=int(os.environ.get("SDF_REMOTE_RETRIES", d.retries)),
                backoff=float(os.environ.get("SDF_REMOTE_BACKOFF", d.backoff)),
                block=max(4096, int(os.environ.get("SDF_REMOTE_BLOCK", d.block))),
            )
        except ValueError as err:
            raise SdfError(f"an SDF_REMOTE_* setting is not a number ({err})") from None


def is_url(text: object) -> bool:
    """True for ``scheme://...`` (and a :class:`RemotePath`); Windows drive paths (``C:\\``) are not URLs."""
    if isinstance(text, RemotePath):
        return True
    return isinstance(text, str) and _URL.match(text) is not None


class RemotePath(PosixPath):
    """A URL where the package expects a path: ``str()`` is the URL, ``name`` its last segment
    (query string left out); it is never a local file. ``Path(p)`` would lose the ``//``: keep the
    object itself (:func:`as_location`)."""

    url: str

    @classmethod
    def of(cls, url: str) -> RemotePath:
        parsed = urllib.parse.urlsplit(url)
        p = cls("/" + parsed.netloc + (parsed.path or "/"))
        p.url = url
        return p

    def __str__(self) -> str:
        return getattr(self, "url", None) or super().__str__()

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __fspath__(self) -> str:  # nothing may open a URL as a local file by accident
        raise TypeError(f"{self}: a URL, not a local path")

    def is_file(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def is_dir(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def exists(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def __hash__(self) -> int:
        return hash(str(self))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and str(other) == str(self)


def as_location(path: str | Path) -> Path:
    """``path`` as the package carries it: a :class:`RemotePath` for a URL, a :class:`Path` otherwise."""
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, str) and is_url(path):
        return RemotePath.of(path)
    return Path(path)


# ------------------------------------------------------------------------------ byte sources


class _Body(Protocol):
    def readinto(self, b: Any) -> int | None: ...

    def close(self) -> None: ...


@dataclass
class Answer:
    """One ranged answer: ``body`` holds bytes ``[start, end)`` of a file of ``size`` bytes."""

    body: _Body
    start: int
    end: int
    size: int
    validator: str | None
    whole: bool = False
    """The server ignored Range and sent the whole file (no resume, no seeking back)."""


class _Retry(Exception):
    """A failure worth retrying (dropped connection, timeout, 5xx, 429)."""

    def __init__(self, text: str, wait: float | None = None) -> None:
        super().__init__(text)
        self.wait = wait


class Source(Protocol):
    url: str

    def fetch(self, start: int, end: int) -> Answer:
        """Bytes ``[start, end)``; raises :class:`_Retry` or :class:`RemoteError`."""
        ...

    def close(self) -> None: ...


class HttpSource:
    """Ranged GETs over ``http.client`` on one keep-alive connection (redirects followed on each
    request, so a signed CDN URL that expires is fetched again from the original)."""

    def __init__(self, url: str, options: RemoteOptions) -> None:
        self.url = url
        self.options = options
        self._conn: http.client.HTTPConnection | None = None
        self._conn_key: tuple[str, str] | None = None

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if self._conn is not None and self._conn_key == (scheme, netloc):
            return self._conn
        self.close()
        if scheme == "https":
            self._conn = http.client.HTTPSConnection(netloc, timeout=self.options.timeout,
                                                     context=ssl.create_default_context())
        else:
            self._conn = http.client.HTTPConnection(netloc, timeout=self.options.timeout)
        self._conn_key = (scheme, netloc)
        return self._conn

    def fetch(self, start: int, end: int) -> Answer:
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise RemoteError(f"{self.url}: redirected to {parts.scheme}://, which is not followed")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request("GET", target, headers={
                    "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity",
                    "User-Agent": "sdforensics"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as err:
                self.close()
                raise _Retry(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__) from None
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                resp.read()
                if not location:
                    raise RemoteError(f"{self.url}: HTTP {resp.status} redirect without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            return self._answer(resp, start, end)
        raise RemoteError(f"{self.url}: more than {MAX_REDIRECTS} redirects")

    def _answer(self, resp: http.client.HTTPResponse, start: int, end: int) -> Answer:
        status = resp.status
        if status in (429, 500, 502, 503, 504) or 500 <= status < 600:
            wait = _retry_after(resp.getheader("Retry-After"))
            self.close()
            raise _Retry(f"HTTP {status} {resp.reason}", wait)
        encoding = (resp.getheader("Content-Encoding") or "identity").lower()
        validator = resp.getheader("ETag") or resp.getheader("Last-Modified")
        if status == 416:
            self.close()
            total = _content_range_total(resp.getheader("Content-Range"))
            raise RemoteChangedError(f"{self.url}: the server refused bytes {start:,}-{end - 1:,} (HTTP 416"
                                     + (f"; the file is now {total:,} bytes" if total is not None else "")
                                     + "): the file changed while being read; nothing was stored")
        if status not in (200, 206):
            self.close()
            raise RemoteError(f"{self.url}: HTTP {status} {resp.reason}")
        if encoding != "identity":
            self.close()
            raise RemoteError(f"{self.url}: the server sent a {encoding}-encoded body; expected the file's bytes")
        if status == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", (resp.getheader("Content-Range") or "").strip())
            if not m:
                self.close()
                raise RemoteError(f"{self.url}: a partial answer without a usable Content-Range "
                                  f"({resp.getheader('Content-Range')!r})")
            first, last, size = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if first != start or last < first or last >= size:
                self.close()
                raise RemoteError(f"{self.url}: asked for bytes from {start:,}, the server sent {first:,}-{last:,}")
            return Answer(resp, first, last + 1, size, validator)
        length = resp.getheader("Content-Length")
        if length is None or not length.isdigit():
            self.close()
            raise RemoteError(f"{self.url}: the server ignores Range requests and does not say the file's size "
                              "(no Content-Length); cannot read it safely")
        size = int(length)
        return Answer(resp, 0, size, size, validator, whole=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._conn_key = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    when = email.utils.parsedate_to_datetime(value) if value else None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


def _content_range_total(value: str | None) -> int | None:
    m = re.search(r"/(\d+)\s*$", value or "")
    return int(m.group(1)) if m else None


class FsspecSource:
    """Any fsspec filesystem (``s3://``, ``hf://``, ``gs://``, ``memory://`` ...): ``cat_file`` of a
    bounded range per request, the file's ``info`` (size, ETag / blob id / mtime) checked before each."""

    def __init__(self, url: str, options: RemoteOptions) -> None:
        self.url = url
        self.options = options
        scheme = url.split("://", 1)[0].lower()
        try:
            import fsspec
            from fsspec.core import url_to_fs
        except ImportError:  # pragma: no cover - fsspec comes with torch
            raise UnsupportedFormatError(f"{url}: reading {scheme}:// URLs needs fsspec: pip install fsspec") from None
        if scheme not in fsspec.available_protocols():
            raise UnsupportedFormatError(f"{url}: no reader for {scheme}:// URLs (sdforensics reads http(s):// and "
                                         "the schemes fsspec knows, e.g. s3://, hf://)")
        try:
            self.fs, self.path = url_to_fs(url)
        except ImportError as err:
            pkg = _BACKENDS.get(scheme, str(getattr(err, "name", "") or "its fsspec backend"))
            raise UnsupportedFormatError(f"{url}: reading {scheme}:// URLs needs {pkg}: pip install {pkg}") from None

    def info(self) -> tuple[int, str | None]:
        try:
            info = self.fs.info(self.path)
        except FileNotFoundError:
            raise RemoteError(f"{self.url}: no such file") from None
        except PermissionError as err:
            raise RemoteError(f"{self.url}: access denied ({err})") from None
        except OSError as err:
            raise _Retry(f"{type(err).__name__}: {err}") from None
        if info.get("type") == "directory":
            raise UnsupportedFormatError(f"{self.url}: a folder; point at a .safetensors, .ckpt or *.index.json file")
        size = info.get("size")
        if not isinstance(size, int):
            raise RemoteError(f"{self.url}: the store does not say the file's size")
        lfs = info.get("lfs")
        validator = (info.get("ETag") or info.get("etag") or info.get("blob_id") or info.get("md5")
                     or (lfs.get("sha256") if isinstance(lfs, dict) else None)
                     or info.get("LastModified") or info.get("mtime") or info.get("created"))
        return size, None if validator is None else str(validator)

    def fetch(self, start: int, end: int) -> Answer:
        size, validator = self.info()
        end = min(end, size)
        try:
            data = self.fs.cat_file(self.path, start=start, end=end)
        except (FileNotFoundError, PermissionError) as err:
            raise RemoteError(f"{self.url}: {err}") from None
        except OSError as err:
            raise _Retry(f"{type(err).__name__}: {err}") from None
        return Answer(io.BytesIO(data), start, start + len(data), size, validator)

    def close(self) -> None:
        """Nothing held between requests."""


def open_source(url: str, options: RemoteOptions | None = None) -> Source:
    options = options or RemoteOptions.from_env()
    if url.lower().startswith(("http://", "https://")):
        return HttpSource(url, options)
    return FsspecSource(url, options)


# ------------------------------------------------------------------------------ the file object


class RemoteFile(io.RawIOBase):
    """A read-only file over a :class:`Source`: reads go forward through one open answer; a jump
    (``seek``) opens a new range. Each answer is checked against the first (size, validator)."""

    def __init__(self, source: Source, where: str, options: RemoteOptions | None = None,
                 first_block: int = HEAD_BLOCK) -> None:
        super().__init__()
        self.source = source
        self.where = where
        self.options = options or RemoteOptions()
        self.block = self.options.block
        self.size = -1
        self.validator: str | None = None
        self.requests = 0
        """Range requests made (answers received), for tests and progress."""
        self.resumes = 0
        """Reads resumed after a failure."""
        self._pos = 0
        self._answer: Answer | None = None
        self._apos = 0  # next byte the open answer will give
        self._head = b""
        self._open(0, first_block)

    # -- answers
    def _open(self, start: int, want: int) -> None:
        """Open an answer starting at ``start`` (retried with backoff)."""
        self._drop()
        failures = 0
        while True:
            end = start + max(1, want) if self.size < 0 else min(self.size, start + max(1, want))
            try:
                ans = self.source.fetch(start, end)
                self._check(ans, start)
            except _Retry as err:
                failures += 1
                if failures > self.options.retries:
                    raise RemoteError(f"{self.where}: gave up at byte {start:,} after {failures} failed tries "
                                      f"(last: {err}); nothing was stored") from None
                self._sleep(failures, err.wait)
                continue
            self.requests += 1
            self._answer, self._apos = ans, ans.start
            return

    def _check(self, ans: Answer, start: int) -> None:
        if self.size < 0:
            self.size, self.validator = ans.size, ans.validator
        elif ans.size != self.size or (self.validator is not None and ans.validator != self.validator):
            ans.body.close()
            what = (f"its size went from {self.size:,} to {ans.size:,} bytes" if ans.size != self.size
                    else f"its ETag/Last-Modified went from {self.validator} to {ans.validator}")
            raise RemoteChangedError(f"{self.where}: the file changed while being read ({what}): it was replaced; "
                                     "stopped, nothing was stored. Run again once it is stable")
        if ans.whole and start != 0:
            ans.body.close()
            raise RemoteError(f"{self.where}: the server ignores Range requests, so reading cannot "
                              f"{'resume' if self._pos else 'start'} at byte {start:,}; serve the file from a "
                              "server that answers Range requests (any object store or CDN does)")

    def _sleep(self, failures: int, wait: float | None) -> None:
        delay = min(self.options.max_backoff, self.options.backoff * 2 ** (failures - 1))
        if wait is not None:
            delay = min(self.options.max_backoff, max(delay, wait))
        time.sleep(delay)

    def _drop(self) -> None:
        if self._answer is not None:
            if self._apos < self._answer.end:
                self.source.close()  # an unread body: the connection cannot be reused
            self._answer.body.close()
        self._answer = None

    # -- io API
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            offset += self.size
        if offset < 0:
            raise ValueError("negative seek position")
        self._pos = offset
        return offset

    def peek_head(self, n: int) -> bytes:
        """The first ``n`` bytes, kept: reading them again later makes no new request."""
        self.seek(0)
        self._head = b""
        self._head = self.read(n)
        self.seek(0)
        return self._head

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        got = 0
        failures = 0
        if self._pos < len(self._head) and len(view):
            n = min(len(view), len(self._head) - self._pos)
            view[:n] = self._head[self._pos: self._pos + n]
            self._pos += n
            got = n
        while got < len(view) and self._pos < self.size:
            ans = self._answer
            if ans is not None and ans.whole and self._pos < self._apos:
                raise RemoteError(f"{self.where}: the server ignores Range requests; cannot go back to byte "
                                  f"{self._pos:,}. Serve the file from a server that answers Range requests")
            if ans is None or not (ans.start <= self._apos <= self._pos < ans.end) or (
                    not ans.whole and self._pos - self._apos > RANDOM_BLOCK):
                self._open(self._pos, self.block)
                continue
            wanted = self._apos == self._pos
            if wanted:
                target = view[got: got + min(len(view) - got, ans.end - self._apos)]
            else:  # a short jump forward inside the open answer: read past it, no new request
                target = memoryview(bytearray(min(self._pos - self._apos, 1 << 20)))
            read = self._read_body(ans, target)
            if read is None:  # dropped or stalled: resume from self._pos
                failures += 1
                if ans.whole:
                    raise RemoteError(f"{self.where}: the connection dropped at byte {self._apos:,} and the server "
                                      "ignores Range requests, so the read cannot resume; nothing was stored")
                if failures > self.options.retries:
                    raise RemoteError(f"{self.where}: the connection kept dropping at byte {self._pos:,} "
                                      f"({failures} tries); nothing was stored")
                self._sleep(failures, None)
                self.resumes += 1
                self._open(self._pos, self.block)
                continue
            failures = 0
            n = read
            self._apos += n
            if wanted:
                self._pos += n
                got += n
            if self._apos >= ans.end:
                self._drop()
        return got

    def _read_body(self, ans: Answer, view: memoryview) -> int | None:
        """Bytes read into ``view`` (>0), or None when the connection dropped or stalled."""
        if not len(view):
            return 0
        try:
            n = ans.body.readinto(view)
        except (OSError, http.client.HTTPException, ValueError):
            self.source.close()
            return None
        if not n:
            self.source.close()
            return None
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buf = bytearray(min(size, max(0, self.size - self._pos)))
        n = self.readinto(buf)
        return bytes(buf[:n])

    def close(self) -> None:
        if not self.closed:
            self._drop()
            self.source.close()
        super().close()


# ------------------------------------------------------------------------------ checkpoints


class _StreamView:
    """What :meth:`SafetensorsCheckpoint.mapped` gives, for a remote file: ``len`` is the size and
    consecutive slices are read from the stream, in order (the identity pass reads it front to back)."""

    def __init__(self, fh: RemoteFile) -> None:
        self._fh = fh

    def __len__(self) -> int:
        return self._fh.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self._fh.size)
        self._fh.seek(start)
        data = self._fh.read(stop - start)
        if len(data) != stop - start:
            raise RemoteError(f"{self._fh.where}: the file ended at byte {start + len(data):,}")
        return data

    def release(self) -> None:
        """Nothing mapped."""


class _StreamMapped:
    def __init__(self, fh: RemoteFile) -> None:
        self.view = _StreamView(fh)

    def done(self, start: int, length: int) -> None:
        """Nothing to hand back: each slice is its own buffer."""


class RemoteSafetensorsCheckpoint(SafetensorsCheckpoint):
    """The local safetensors reader over a :class:`RemoteFile`: header fetched and validated from the
    first bounded range, tensors streamed in offset order, every byte tapped for the file hashes."""

    def __init__(self, path: RemotePath, fh: RemoteFile) -> None:  # noqa: D107 - no super(): no local open
        self.path = path
        self._where = str(path)
        self._fh = fh  # type: ignore[assignment]
        try:
            fh.seek(0)
            self._head_bytes, self.header = read_header(fh, fh.size, self._where)  # type: ignore[arg-type]
        except BaseException:
            fh.close()
            raise

    @contextmanager
    def mapped(self) -> Iterator[Any]:
        yield _StreamMapped(self._fh)  # type: ignore[arg-type]

    def tapped_tensors(self, tap: ByteTap) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        return self.tensors(tap=tap)


class RemotePickleCheckpoint(ClosingCheckpoint):
    """A torch zip or legacy pickle over range requests: opened (walked, never executed) by the local
    reader on a :class:`RemoteFile`, then streamed once from byte 0, each storage built as it passes."""

    def __init__(self, path: RemotePath, fh: RemoteFile) -> None:
        from sdforensics.readers.pickle_reader import open_pickle_file

        self.path: Path = path
        self._fh = fh
        fh.block = RANDOM_BLOCK  # the zip index, data.pkl: short reads
        try:
            self._inner = open_pickle_file(path, fh, fh.size)  # type: ignore[arg-type]
        except BaseException:
            fh.close()
            raise
        fh.block = BLOCK

    def format(self) -> FormatInfo:
        return self._inner.format()

    def infos(self) -> list[TensorInfo]:
        return self._inner.infos()

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        return self.tapped_tensors(None)

    def tapped_tensors(self, tap: ByteTap | None) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Tensors in file order; ``tap`` sees every byte of the file in order (one pass)."""
        inner, fh = self._inner, self._fh
        cursor = 0
        fh.seek(0)
        key: str | None = None
        base: Any = None
        for info, (_, t) in zip(inner.infos(), inner.ordered_tensors(), strict=True):
            if t.storage.key != key:
                offset, length = inner.storage_span(t.storage)
                if offset < cursor:
                    raise UnsupportedFormatError(f"{self.path}: the storages are not stored in the order the "
                                                 "pickle lists them; reading it over a URL needs one pass. "
                                                 "Download it and analyse the local file")
                cursor = _pump(fh, cursor, offset, tap)
                buf = bytearray(length)
                if _read_fully(fh, buf) != length:
                    raise CorruptFileError(f"{self.path}: storage {t.storage.key!r} is truncated")
                if tap is not None:
                    tap(memoryview(buf))
                cursor += length
                key, base = t.storage.key, inner.storage_tensor(buf, t.storage)
            yield info, inner.tensor_view(base, t)
        _pump(fh, cursor, fh.size, tap)

    def close(self) -> None:
        self._fh.close()


def _read_fully(fh: RemoteFile, buf: bytearray) -> int:
    view = memoryview(buf)
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _pump(fh: RemoteFile, start: int, stop: int, tap: ByteTap | None) -> int:
    """Read bytes ``[start, stop)`` (to the tap, or dropped); returns ``stop``."""
    fh.seek(start)
    while start < stop:
        chunk = fh.read(min(stop - start, 16 << 20))
        if not chunk:
            raise CorruptFileError(f"{fh.where}: the file ended at byte {start:,} of {stop:,}")
        if tap is not None:
            tap(chunk)
        start += len(chunk)
    return stop


class RemoteShardedCheckpoint(ClosingCheckpoint):
    """``*.safetensors.index.json`` over a URL: the index fetched (capped), every shard a
    :class:`RemoteSafetensorsCheckpoint` next to it. The file hashes, as for a local sharded
    checkpoint, are those of the index file."""

    def __init__(self, path: RemotePath, raw: bytes, options: RemoteOptions) -> None:
        from sdforensics.readers.diffusers_reader import ShardedCheckpoint

        self.path: Path = path
        self._raw = raw
        url = str(path)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise CorruptFileError(f"{url}: not valid JSON ({type(err).__name__})") from None
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not wmap or not all(isinstance(v, str) for v in wmap.values()):
            raise CorruptFileError(f"{url}: 'weight_map' is missing, empty or does not map names to shard files")
        names = sorted(set(wmap.values()))
        if len(names) > SHARD_CAP:
            raise CorruptFileError(f"{url}: {len(names):,} shards exceeds the cap of {SHARD_CAP}")
        # The local reader's checks (every tensor where weight_map says, no tensor twice) on remote shards.
        self._sharded = ShardedCheckpoint.__new__(ShardedCheckpoint)
        self._sharded.path = path
        self._sharded._files = []
        self._sharded._findings = []
        try:
            for name in names:
                shard_url = _shard_url(url, name)
                shard = open_remote(shard_url, options)
                if not isinstance(shard, RemoteSafetensorsCheckpoint):
                    shard.close()
                    raise UnsupportedFormatError(f"{url}: shard {name!r} is not a safetensors file")
                self._sharded._files.append((RemotePath.of(shard_url), shard))
            self._sharded._check(wmap, doc.get("metadata"))
        except BaseException:
            self._sharded.close()
            raise

    def format(self) -> FormatInfo:
        return self._sharded.format()

    def infos(self) -> list[TensorInfo]:
        return self._sharded.infos()

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        return self._sharded.tensors()

    def tapped_tensors(self, tap: ByteTap) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        tap(self._raw)
        return self._sharded.tensors()

    def close(self) -> None:
        self._sharded.close()


def _shard_url(index_url: str, name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ".." in parts or _URL.match(name) \
            or re.match(r"^[A-Za-z]:", name) or "?" in name or "#" in name:
        raise UnsafeFileError(f"{index_url}: weight_map names shard {name!r} outside the index's folder; refusing it")
    base, sep, query = index_url.partition("?")
    folder = base.rsplit("/", 1)[0]
    return f"{folder}/{urllib.parse.quote(name)}" + (sep + query if sep else "")


def open_remote(url: str | RemotePath, options: RemoteOptions | None = None) -> Checkpoint:
    """Open a checkpoint at a URL, validating its headers from bounded range requests (see module docs)."""
    path = url if isinstance(url, RemotePath) else RemotePath.of(url)
    text = str(path)
    options = options or RemoteOptions.from_env()
    source = open_source(text, options)
    fh = RemoteFile(source, text, options)
    try:
        if fh.size == 0:
            raise CorruptFileError(f"{text}: the file is empty")
        head = fh.peek_head(64)
        bare = urllib.parse.urlsplit(text).path
        if bare.endswith(".index.json"):
            if fh.size > JSON_CAP:
                raise CorruptFileError(f"{text}: {fh.size:,} bytes exceeds the {JSON_CAP:,}-byte cap for JSON")
            raw = fh.read(fh.size)
            fh.close()
            return RemoteShardedCheckpoint(path, raw, options)
        if looks_like_safetensors(head) or (len(head) >= 9 and head[8:9] == b"{"):
            return RemoteSafetensorsCheckpoint(path, fh)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            return RemotePickleCheckpoint(path, fh)
        if head.startswith(b"GGUF"):
            raise UnsupportedFormatError(f"{text}: a GGUF file (quantised weights); sdforensics reads safetensors, "
                                         ".ckpt/.pt and sharded safetensors")
        raise UnsupportedFormatError(f"{text}: not a checkpoint format sdforensics reads over a URL (first bytes "
                                     f"{head[:8].hex(' ')}); expected safetensors, a torch .ckpt/.pt or a "
                                     "*.safetensors.index.json")
    except BaseException:
        fh.close()
        raise


def remote_error_line(err: BaseException) -> str:
    """One line for an error met while reading a URL (SdfError text as is)."""
    return str(err) if isinstance(err, SdfError) else f"{type(err).__name__}: {err}"


ProgressFn = Callable[[int, int], None]
