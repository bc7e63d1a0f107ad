"""Checkpoint readers: one contract (:mod:`sdforensics.readers.base`), several formats.

:func:`open_checkpoint` sniffs the first bytes (never the extension) and picks the reader:
safetensors, torch zip or legacy pickle (``.ckpt/.pt/.pth/.bin``), a diffusers folder, or a
sharded ``*.index.json``. Anything else is refused with one clear line.

The subpackage owns files in, tensors out: the readers, pickle walking (:mod:`.pickle_ops`, never
executing), the scanner behind ``sdf scan`` (:mod:`.scan`) and the diffusers key map
(:mod:`.diffusers_keys`). It imports only :mod:`sdforensics.core`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sdforensics.core.errors import CorruptFileError, UnsupportedFormatError
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.safetensors_reader import looks_like_safetensors, open_safetensors

ZIP_MAGIC = b"PK\x03\x04"


def sniff(path: Path) -> str:
    """The container format of ``path`` from its first bytes: safetensors, zip, pickle, gguf, ..."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot open: {err.strerror or err}") from err
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFormatError(
            f"{path}: not a regular file (a FIFO, device or socket); refusing to read it"
        )
    if path.name.endswith(".index.json"):
        return "sharded"
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read: {err.strerror}") from err
    if not head:
        raise CorruptFileError(f"{path}: the file is empty")
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(b"GGUF"):
        return "gguf"
    if looks_like_safetensors(head):
        return "safetensors"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        return "pickle"
    if len(head) >= 8 and head[8:9] == b"{":
        return "safetensors"  # a safetensors file with a bad header length: let the reader say why
    return "unknown"


def open_checkpoint(path: Path | str) -> Checkpoint:
    """Open any supported checkpoint, validating its headers; raises :class:`SdfError` subclasses.
    A URL (``https://...``, ``s3://...``, a :class:`~sdforensics.readers.remote.RemotePath`) is read
    where it is (:mod:`sdforensics.readers.remote`)."""
    from sdforensics.readers.remote import is_url

    if is_url(path):
        from sdforensics.readers.remote import open_remote

        return open_remote(str(path))
    path = Path(path)
    kind = sniff(path)
    if kind == "safetensors":
        return open_safetensors(path)
    if kind in ("zip", "pickle"):
        from sdforensics.readers.pickle_reader import open_pickle

        return open_pickle(path)
    if kind == "directory":
        from sdforensics.readers.diffusers_reader import open_diffusers

        return open_diffusers(path)
    if kind == "sharded":
        from sdforensics.readers.diffusers_reader import open_sharded

        return open_sharded(path)
    if kind == "gguf":
        raise UnsupportedFormatError(
            f"{path}: a GGUF file (quantised weights); sdforensics reads safetensors, .ckpt/.pt and diffusers folders"
        )
    raise UnsupportedFormatError(
        f"{path}: not a checkpoint format sdforensics knows (first bytes {_hex(path)}); expected safetensors, "
        "a torch .ckpt/.pt/.bin or a diffusers folder"
    )


def _hex(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(8).hex(" ")
