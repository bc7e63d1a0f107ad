"""A ``MANIFEST.sha256`` for a folder: write it, verify it.

The manifest lists every file under the folder (subfolders included, the manifest itself
left out) as ``<sha256>  <relative path>`` lines, sorted by path, ``/`` as separator. It is
the format ``sha256sum`` writes, so ``cd FOLDER && sha256sum -c MANIFEST.sha256`` checks it
too. Used for the shipped registry (``reference_hashes/``) and for fingerprint libraries.

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "a.txt").write_text("hello")
>>> write_manifest(folder).name
'MANIFEST.sha256'
>>> verify_manifest(folder)
[]
>>> _ = (folder / "a.txt").write_text("changed")
>>> verify_manifest(folder)[0].startswith("modified: a.txt")
True
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from sdforensics.core.errors import LibraryError

MANIFEST_NAME = "MANIFEST.sha256"
CHUNK = 16 * 1024 * 1024

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    """SHA-256 of a file, read in ``chunk``-byte pieces (16 MiB by default).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:10]
    'ba7816bf8f'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


QUICK_BYTES = 1 << 20


def quick_signature(path: Path, size: int) -> str:
    """SHA-256 of the size and the first and last MiB: files that differ almost always differ here,
    so a moved file is found among same-size candidates before its whole content is hashed."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(QUICK_BYTES))
        if size > 2 * QUICK_BYTES:
            fh.seek(size - QUICK_BYTES)
        h.update(fh.read(QUICK_BYTES))
    return h.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder`` except the manifest, sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            full = Path(root) / name
            rel = full.relative_to(folder).as_posix()
            if rel == MANIFEST_NAME:
                continue
            found.append(rel)
    return sorted(found)


def write_manifest(folder: Path) -> Path:
    """Write ``folder/MANIFEST.sha256`` listing every file under ``folder``; return its path.

    The file is written to a temporary name and renamed, so a reader never sees half of it.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "b.json").write_text("{}")
    >>> print(write_manifest(folder).read_text(), end="")
    44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a  b.json
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LibraryError(f"{folder}: not a folder, so no manifest can be written for it.")
    lines = []
    for rel in _listed_files(folder):
        if "\n" in rel or "\r" in rel or "\\" in rel:
            raise LibraryError(
                f"{folder / rel}: file name contains a newline or backslash, which a manifest line "
                "cannot hold. Rename the file."
            )
        lines.append(f"{sha256_file(folder / rel)}  {rel}\n")
    target = folder / MANIFEST_NAME
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text("".join(lines), encoding="utf-8", newline="\n")
    os.replace(tmp, target)
    return target


def read_manifest(folder: Path) -> dict[str, str]:
    """The manifest's ``{relative path: sha256}``; :class:`LibraryError` if absent or malformed."""
    path = Path(folder) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise LibraryError(
            f"{path}: no manifest. Write one with sdforensics.library.manifest.write_manifest."
        ) from err
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if not match:
            raise LibraryError(f"{path}: line {number} is not '<sha256>  <path>': {line[:80]!r}")
        digest, rel = match.groups()
        if rel.startswith("/") or ".." in rel.split("/"):
            raise LibraryError(f"{path}: line {number} names a path outside the folder: {rel!r}")
        if rel in listed:
            raise LibraryError(f"{path}: line {number} lists {rel!r} a second time")
        listed[rel] = digest
    return listed


def verify_manifest(folder: Path) -> list[str]:
    """Problems between ``folder`` and its manifest; an empty list when they agree.

    Each problem is one line starting with ``modified:``, ``missing:``, ``unlisted:`` or
    ``manifest:`` (the manifest itself is absent or malformed) and naming the file.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> verify_manifest(folder)[0].startswith("manifest:")
    True
    """
    folder = Path(folder)
    try:
        listed = read_manifest(folder)
    except LibraryError as err:
        return [f"manifest: {err}"]
    present = set(_listed_files(folder))
    problems: list[str] = []
    for rel in sorted(set(listed) | present):
        if rel not in present:
            problems.append(f"missing: {rel} is listed in {MANIFEST_NAME} but not in {folder}")
        elif rel not in listed:
            problems.append(f"unlisted: {rel} is in {folder} but not in {MANIFEST_NAME}")
        else:
            got = sha256_file(folder / rel)
            if got != listed[rel]:
                problems.append(f"modified: {rel} (expected sha256 {listed[rel]}, got {got})")
    return problems
