"""Checkpoint readers: one contract (:mod:`sdforensics.readers.base`), several formats.

:func:`open_checkpoint` sniffs the first bytes (:mod:`.containers`, never the extension) and picks the reader:
safetensors, torch zip or legacy pickle (``.ckpt/.pt/.pth/.bin``), a diffusers folder, or a
sharded ``*.index.json``. Anything else is refused with one clear line.

The subpackage owns files in, tensors out: the readers, pickle walking (:mod:`.pickle_ops`, never
executing), the scanner behind ``sdf scan`` (:mod:`.scan`) and the diffusers key map
(:mod:`.diffusers_keys`). It imports only :mod:`sdforensics.core`.
"""

from __future__ import annotations

from pathlib import Path

from sdforensics.core.errors import UnsupportedFormatError
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.containers import sniff
from sdforensics.readers.safetensors_reader import open_safetensors


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
    if kind in ("safetensors", "safetensors-like"):  # the reader validates the header, or says why not
        return open_safetensors(path)
    if kind in ("zip", "pickle", "pickle-text"):
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
    if kind == "torch-tar":
        raise UnsupportedFormatError(f"{path}: a torch 0.1.x tar checkpoint, which sdforensics does not read")
    raise UnsupportedFormatError(
        f"{path}: not a checkpoint format sdforensics knows (first bytes {_hex(path)}); expected safetensors, "
        "a torch .ckpt/.pt/.bin or a diffusers folder"
    )


def _hex(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(8).hex(" ")
