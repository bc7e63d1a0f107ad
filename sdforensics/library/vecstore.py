"""Search vectors on disk: one append-only file per block map in the library's ``vectors/`` folder.

``vectors/<blockmap>-p<per_block>-v<version>.vec`` starts with a 4096-byte header (format name,
version, dimensions) followed by fixed-size records: a 32-byte key, the raw vector (float32) and
one byte per block (present or not). The key is the SHA-256 of the fingerprint file's path in the
library, size and modification time, so a fingerprint that is replaced or edited simply has no
vector until one is computed again; the last record of a key wins. A record is written with one
``write`` on a file opened for appending, and a reader ignores a trailing partial record, so a
killed writer or a concurrent reader never sees half a vector. The file is a cache derived from
the fingerprints: it is left out of the library's manifest, and deleting it only costs one full
read of the library on the next search.

Vectors are written by :meth:`sdforensics.library.store.Library.add` (:func:`record_vector`) and,
for libraries made before them, computed on the first search (:meth:`VectorFile.vectors`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sdforensics.fingerprinting.fingerprint import Fingerprint
from sdforensics.library.vectors import PER_BLOCK, VECTOR_VERSION, Projector, SearchVector
from sdforensics.model.architecture import BlockMap, block_map_of

FOLDER = "vectors"
FORMAT = b"sdforensics.searchvec"
HEADER = 4096  # bytes before the first record: format line, layout JSON line, padding (an SDXL or SD1 layout
# needs ~300 bytes; the 256 bytes of the first files cut the layout short, so no stored vector was ever
# read back and every search re-read every fingerprint. Such files fail the header check and are rewritten)


CHUNK = 65536
"""Records read at a time by :meth:`VectorFile.lookup` (117 MB for SD1)."""


def _words(keys: np.ndarray) -> np.ndarray:
    """``S32`` keys as an (n, 4) uint64 array of their zero-padded bytes."""
    return np.frombuffer(np.ascontiguousarray(keys, dtype="S32").tobytes(), "<u8").reshape(-1, 4)


def entry_key(library: Path, file: str) -> bytes | None:
    """The cache key of the fingerprint file ``file`` (relative to ``library``); None if it is gone."""
    try:
        st = (Path(library) / file).stat()
    except OSError:
        return None
    return hashlib.sha256(f"{file}\0{st.st_size}\0{st.st_mtime_ns}".encode()).digest()


_PROJECTORS: dict[tuple[object, ...], Projector] = {}


def projector(blocks: BlockMap, per_block: int = PER_BLOCK) -> Projector:
    """One :class:`Projector` per block map in a process, so its bucket plans are drawn once: a new one
    per stored fingerprint redrew them every time (115 of the 149 ms of each ``Library.add``, which
    bounds how many files a second the one writer of ``sdf index`` commits; bench/driver_commit.py)."""
    key = (blocks.name, tuple(blocks.ids), tuple((r.pattern, b) for r, b in blocks.rules), per_block)
    if key not in _PROJECTORS:
        _PROJECTORS[key] = Projector(blocks, per_block)
    return _PROJECTORS[key]


class VectorFile:
    """The vectors of one library folder for one block map."""

    def __init__(self, library: Path, blocks: BlockMap, per_block: int = PER_BLOCK) -> None:
        self.library = Path(library)
        self.projector = projector(blocks, per_block)
        self.path = self.library / FOLDER / f"{blocks.name}-p{per_block}-v{VECTOR_VERSION}.vec"
        n, d = self.projector.n_blocks, self.projector.dim
        self.record = np.dtype([("key", "S32"), ("raw", "<f4", (d,)), ("present", "u1", (n,))])
        layout = json.dumps({"blocks": list(blocks.ids), "per_block": per_block, "version": VECTOR_VERSION})
        head = FORMAT + b"\n" + layout.encode() + b"\n"
        if len(head) > HEADER:
            raise ValueError(f"search-vector layout of {blocks.name!r} is {len(head)} bytes, over {HEADER}")
        self.head = head.ljust(HEADER, b" ")

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(raw, present, found)`` for the cache keys ``keys`` (an ``S32`` array): the stored vector of
        each, the last record of a key winning; ``found`` says which have one. One pass over the file
        in chunks of :data:`CHUNK` records, each chunk's keys looked up among the sorted query keys, so
        a million records cost no Python object each and no memory beyond the result and one chunk."""
        n = len(keys)
        raw = np.zeros((n, self.projector.dim), np.float32)
        present = np.zeros((n, self.projector.n_blocks), bool)
        found = np.zeros(n, bool)
        if n == 0:
            return raw, present, found
        words = _words(keys)  # the 32 key bytes as 4 uint64 (zero-padded: a key ending in 0 bytes stays whole)
        order = np.argsort(words[:, 0], kind="stable")
        first = words[order, 0]
        buf = np.empty(CHUNK * self.record.itemsize, np.uint8)
        try:
            with open(self.path, "rb") as fh:
                if fh.read(HEADER) != self.head:
                    return raw, present, found  # another layout: recomputed (and the file rewritten) on the next write
                while True:
                    got = fh.readinto(buf.data) or 0
                    rows = buf[: got // self.record.itemsize * self.record.itemsize].view(self.record)
                    if not len(rows):
                        break  # the end, or a trailing partial record (a writer killed mid-write)
                    stored = _words(rows["key"])
                    at = np.searchsorted(first, stored[:, 0]).clip(0, n - 1)
                    hit = order[at]
                    same = (first[at] == stored[:, 0]) & (words[hit] == stored).all(axis=1)
                    raw[hit[same]] = rows["raw"][same]  # a later record of a key overwrites: the newest wins
                    present[hit[same]] = rows["present"][same].astype(bool)
                    found[hit[same]] = True
                    if got < len(buf):
                        break
        except OSError:
            return np.zeros_like(raw), np.zeros_like(present), np.zeros_like(found)
        return raw, present, found

    def append(self, items: Sequence[tuple[bytes, SearchVector]]) -> bool:
        """Append records; False when the folder cannot be written (a shipped, read-only library)."""
        if not items:
            return True
        rows = np.zeros(len(items), self.record)
        for i, (key, vec) in enumerate(items):
            rows[i] = (key, vec.raw, vec.present.astype(np.uint8))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists() or not self._header_ok()
            if fresh:
                tmp = self.path.with_suffix(".part")
                tmp.write_bytes(self.head)
                tmp.replace(self.path)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, rows.tobytes())
            finally:
                os.close(fd)
        except OSError:
            return False
        return True

    def _header_ok(self) -> bool:
        with contextlib.suppress(OSError), open(self.path, "rb") as fh:
            return fh.read(HEADER) == self.head
        return False

    def vectors(
        self, files: Sequence[str], load: Callable[[int], Fingerprint | None]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``(raw (n, dim) float32, present (n, blocks) bool, rows computed now)`` for the fingerprint
        files ``files``; a file without a stored vector is read with ``load(i)`` (None: unusable,
        its row stays zero and absent) and its vector stored."""
        found_keys = [entry_key(self.library, file) for file in files]
        raw, present, found = self.lookup(np.array([k or b"" for k in found_keys], dtype="S32"))
        new: list[tuple[bytes, SearchVector]] = []
        computed: list[int] = []
        for i in np.flatnonzero(~found).tolist():
            fp = load(i)
            if fp is None:
                continue
            vec = self.projector.vector(fp)
            raw[i], present[i] = vec.raw, vec.present
            computed.append(i)
            key = found_keys[i]
            if key is not None:
                new.append((key, vec))
                if len(new) >= 256:
                    self.append(new)
                    new = []
        self.append(new)
        return raw, present, computed


def record_vector(library: Path, file: str, fp: Fingerprint) -> None:
    """Store the search vector of ``fp``, just saved as ``library/file`` (LoRAs have none)."""
    if fp.identity.get("kind") == "lora":
        return
    key = entry_key(library, file)
    if key is None:
        return
    vf = VectorFile(library, block_map_of(fp.identity.get("arch") or fp.family))
    vf.append([(key, vf.projector.vector(fp))])
