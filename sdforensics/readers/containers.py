"""Container sniffing: which format a file is, from its first bytes (never from its name).

The one place that knows the magic bytes; :func:`sdforensics.readers.open_checkpoint`, the pickle
reader and ``sdf scan`` all ask :func:`sniff_bytes`, then decide for themselves what to do with
each kind.

>>> sniff_bytes(b"PK\\x03\\x04" + bytes(60), 64)
'zip'
>>> sniff_bytes((2).to_bytes(8, "little") + b"{}", 10)
'safetensors'
>>> sniff_bytes(b"\\x80\\x02}q\\x00.", 6), sniff_bytes(b"(lp0\\n.", 7)
('pickle', 'pickle-text')
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sdforensics.core.errors import CorruptFileError, UnsupportedFormatError

HEAD_BYTES = 512
"""Bytes read to sniff a file (a tar header's ``ustar`` magic sits at 257)."""

ZIP_LOCAL = b"PK\x03\x04"
ZIP_END = b"PK\x05\x06"
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")
PICKLE_TEXT_STARTS = b"(c]})N\x80"
"""First bytes of protocol 0/1 pickles (and of a PROTO opcode naming an unknown protocol)."""

KINDS = ("safetensors", "safetensors-like", "zip", "gguf", "torch-tar", "pickle", "pickle-text", "unknown")
"""``safetensors``: a header length the file can hold, then ``{``; ``safetensors-like``: ``{`` at byte 8
after a length it cannot (the reader says what is wrong); ``pickle``: a binary pickle (protocol 2-5);
``pickle-text``: starts like a protocol 0/1 pickle (text files can too)."""


def sniff_bytes(head: bytes, size: int) -> str:
    """The container kind (one of :data:`KINDS`) of a file of ``size`` bytes starting with ``head``."""
    brace = len(head) >= 9 and head[8:9] == b"{"
    if brace and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:4] in (ZIP_LOCAL, ZIP_END):
        return "zip"
    if head[:4] == b"GGUF":
        return "gguf"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "torch-tar"
    if head[:1] == b"\x80" and head[1:2] in PICKLE_PROTOCOLS:
        return "pickle"
    if head[:1] and head[:1] in PICKLE_TEXT_STARTS:
        return "pickle-text"
    if brace:
        return "safetensors-like"
    return "unknown"


def sniff(path: Path) -> str:
    """The kind of ``path``: ``directory``, ``sharded`` (a ``*.index.json``) or :func:`sniff_bytes`'s.

    Raises :class:`CorruptFileError` for a path that cannot be read or an empty file, and
    :class:`UnsupportedFormatError` for a FIFO, device or socket (never opened: it could block)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot open: {err.strerror or err}") from err
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFormatError(f"{path}: not a regular file (a FIFO, device or socket); refusing to read it")
    if path.name.endswith(".index.json"):
        return "sharded"
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read: {err.strerror}") from err
    if not head:
        raise CorruptFileError(f"{path}: the file is empty")
    return sniff_bytes(head, st.st_size)
