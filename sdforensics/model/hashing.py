"""Every hash users meet, computed in one read of the file, plus content hashes.

File hashes (all over the file's bytes as stored):

* ``sha256`` -- the hash Hugging Face and Civitai list; ``autov2`` is its first 10 hex digits;
* ``autov1`` -- A1111's legacy "model hash": SHA-256 of the 64 KiB at offset 1 MiB, first 8
  hex digits (``None`` for files too small to have that window, as Civitai does);
* ``autov3`` -- SHA-256 of a safetensors file after the 8-byte length and the JSON header
  (kohya's ``addnet_hash_safetensors``), so metadata edits do not change it;
* ``blake3`` and ``crc32``.

Content hashes are over tensor *values* cast to float16 with their names and shapes, per tensor
and per component, independent of file order, container and float width, so an fp32 -> fp16
re-save or a header edit of the same weights is recognised.

The digester runs the hash functions on two worker threads (hashlib, blake3, the CRC and numpy
release the GIL on large buffers), fed 1 MiB slices so that each slice is still in the core's cache
when a worker's second and third functions read it; hashing overlaps reading and fingerprinting.

>>> d = FileDigester(autov3_start=None)
>>> d.update(b"abc")
>>> d.finish().sha256[:12]
'ba7816bf8f01'
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

try:  # ISA-L's CRC32 is ~6x faster than zlib's; same polynomial and results.
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency, but zlib is always there
    from zlib import crc32 as _crc32

from sdforensics.core.errors import CorruptFileError

if TYPE_CHECKING:
    import torch

AUTOV1_OFFSET = 0x100000
AUTOV1_SIZE = 0x10000
CHUNK = 16 << 20
SLICE = 1 << 20
"""Bytes handed to the workers at a time: small enough to stay in a core's 2 MiB L2 cache."""
_IN_FLIGHT_CAP = 256 << 20


@dataclass(frozen=True)
class FileHashes:
    bytes: int
    sha256: str
    autov1: str | None
    autov2: str
    autov3: str | None
    blake3: str
    crc32: str
    """8 hex digits, as zip tools and ComfyUI-Manager print it."""


class _Done:
    """Calls ``callback`` once every worker has processed every slice of one update."""

    def __init__(self, count: int, callback: Callable[[], None]) -> None:
        self._left = count
        self._lock = threading.Lock()
        self._callback = callback

    def one(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._callback()


class _Worker:
    """A thread that feeds every slice, in order, to a few update functions."""

    def __init__(self, updates: list[Callable[[Any], None]]) -> None:
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._updates = updates
        self._cond = threading.Condition()
        self._in_flight = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            view, done = item
            try:
                if self.error is None:
                    for update in self._updates:
                        update(view)
            except BaseException as err:  # surfaced by finish()
                self.error = err
            if done is not None:
                done.one()
            with self._cond:
                self._in_flight -= len(view)
                self._cond.notify_all()

    def put(self, view: memoryview, done: _Done | None) -> None:
        n = len(view)
        with self._cond:
            while self._in_flight and self._in_flight + n > _IN_FLIGHT_CAP:
                self._cond.wait()
            self._in_flight += n
        self._q.put((view, done))

    def stop(self) -> None:
        self.error = self.error or RuntimeError("stopped")
        self._q.put(None)
        self._thread.join()

    def join(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


class FileDigester:
    """Feed a file's bytes in order with :meth:`update`; :meth:`finish` returns the hashes.

    ``autov3_start`` is the offset where a safetensors file's tensor data begins (None for
    other formats: no AutoV3). ``content`` (optional) is one more function fed every byte in
    order on a worker thread (the byte-level identity pass). Buffers passed to ``update`` must
    not be modified until its ``on_done`` is called.
    """

    def __init__(
        self, autov3_start: int | None, threaded: bool = True, content: Callable[[Any], None] | None = None
    ) -> None:
        self._sha = hashlib.sha256()
        self._v3 = hashlib.sha256() if autov3_start is not None else None
        self._b3 = blake3.blake3()
        self._crc = 0
        self._v1 = bytearray()
        self._offset = 0
        self._v3_offset = 0
        self._v3_start = autov3_start or 0
        # Two workers, balanced (SHA-256 costs ~4x BLAKE3 and ~50x ISA-L's CRC32).
        extra = [content] if content is not None else []
        self._stages: list[list[Callable[[Any], None]]]
        if self._v3 is not None:
            self._stages = [[self._sha.update, self._update_crc, self._update_b3], [self._update_v3, *extra]]
        else:
            self._stages = [[self._sha.update, self._update_crc], [self._update_b3, *extra]]
        self._workers = [_Worker(stage) for stage in self._stages] if threaded else []

    def _update_b3(self, data: Any) -> None:
        self._b3.update(data)

    def _update_crc(self, data: Any) -> None:
        self._crc = _crc32(data, self._crc)

    def _update_v3(self, view: memoryview) -> None:
        start = self._v3_offset
        self._v3_offset += len(view)
        if self._v3 is not None and self._v3_offset > self._v3_start:
            self._v3.update(view[max(self._v3_start - start, 0) :])

    def update(self, data: bytes | bytearray | memoryview, on_done: Callable[[], None] | None = None) -> None:
        """Hash the next bytes of the file; ``on_done()`` runs (on a worker) once they are hashed."""
        view = memoryview(data).cast("B")
        start, end = self._offset, self._offset + len(view)
        lo, hi = max(start, AUTOV1_OFFSET), min(end, AUTOV1_OFFSET + AUTOV1_SIZE)
        if lo < hi:
            self._v1 += view[lo - start : hi - start]
        self._offset = end
        if not self._workers:
            for stage in self._stages:
                for fn in stage:
                    fn(view)
            if on_done is not None:
                on_done()
            return
        slices = [view[i : i + SLICE] for i in range(0, len(view), SLICE)] or [view]
        done = _Done(len(slices) * len(self._workers), on_done) if on_done is not None else None
        for piece in slices:
            for worker in self._workers:
                worker.put(piece, done)

    def close(self) -> None:
        """Stop the workers without a result (after an error in the caller)."""
        for w in self._workers:
            w.stop()
        self._workers = []

    def __enter__(self) -> FileDigester:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops the workers when the block ends before :meth:`finish` (an error while reading)."""
        self.close()

    def finish(self) -> FileHashes:
        for w in self._workers:
            w.join()
        self._workers = []
        sha = self._sha.hexdigest()
        v1 = hashlib.sha256(bytes(self._v1)).hexdigest()[:8] if len(self._v1) == AUTOV1_SIZE else None
        return FileHashes(
            bytes=self._offset,
            sha256=sha,
            autov1=v1,
            autov2=sha[:10],
            autov3=self._v3.hexdigest() if self._v3 is not None else None,
            blake3=self._b3.hexdigest(),
            crc32=f"{self._crc & 0xFFFFFFFF:08x}",
        )


def hash_file(path: Path, autov3_start: int | None = None) -> FileHashes:
    """Hash a whole file in one streaming read."""
    digester = FileDigester(autov3_start)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digester.update(chunk)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read: {err.strerror}") from err
    return digester.finish()


def canonical_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's values as little-endian float16 bytes (integers keep their own width)."""
    import torch

    t = tensor.detach()
    if t.is_floating_point() and t.dtype != torch.float16:
        t = t.to(torch.float16)
    t = t.contiguous().cpu().reshape(-1)
    if not t.numel():
        return memoryview(b"")
    return t.view(torch.uint8).numpy().data.cast("B")


def tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """blake3 of (name, shape, canonical values): equal for the same weights in fp32, fp16 or fp8."""
    h = digest_start(name, tuple(tensor.shape))
    h.update(canonical_bytes(tensor))
    return h.digest()


def digest_start(name: str, shape: tuple[int, ...]) -> Any:
    """A blake3 hasher primed with a tensor's name and shape; its canonical bytes come next."""
    h = blake3.blake3()
    h.update(name.encode("utf-8", "surrogatepass") + b"\0")
    h.update(",".join(str(d) for d in shape).encode() + b"\0")
    return h


def combine_digests(digests: Mapping[str, bytes]) -> str:
    """One hash for a set of named tensor digests, independent of their order."""
    h = blake3.blake3()
    for name in sorted(digests):
        h.update(name.encode("utf-8", "surrogatepass") + b"\0" + digests[name])
    return h.hexdigest()[:32]
