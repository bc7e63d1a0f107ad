"""Which zip member ``torch.load`` unpickles, resolved exactly as torch's reader does.

``torch.load`` opens a zip checkpoint with ``PyTorchStreamReader`` (caffe2/serialize/
inline_container.cc, on miniz). Checked against torch 2.13 with hand-built archives
(see ``tests/readers/test_scan_gate.py``):

* the archive folder is the name of the *first* central-directory entry up to its first ``/``
  (an entry without ``/`` and torch refuses the file);
* records are found with ``mz_zip_reader_locate_file`` without the case-sensitive flag, so
  ``archive/DATA.PKL`` *is* ``archive/data.pkl`` to torch; when two entries differ only in
  case (or are exact duplicates), which one torch reads depends on miniz's sorted binary
  search, so we refuse to pick: the file is reported as ambiguous;
* torch 2.13 also requires every entry to sit in that folder (older versions do not), which
  we report but do not rely on.

>>> from sdforensics.readers.zip_archive import ZipMember
>>> ms = [ZipMember(n, i, 0, 0, 0, 0, 0, 0, 0) for i, n in enumerate(["a/version", "a/DATA.pkl"])]
>>> resolve_main_pickle(ms).member.name
'a/DATA.pkl'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sdforensics.readers.zip_archive import ZipMember


@dataclass(frozen=True)
class MainPickle:
    """The member torch would unpickle, or why there is none / why we cannot tell."""

    member: ZipMember | None
    prefix: str
    """The archive folder with its trailing ``/`` (``""`` when torch would refuse the zip)."""
    candidates: tuple[ZipMember, ...]
    """Every entry torch's case-insensitive lookup could return for ``<folder>/data.pkl``."""
    problem: str | None
    """Set when torch would refuse the zip, or when several entries match (ambiguous)."""

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1


def archive_prefix(members: Sequence[ZipMember]) -> str | None:
    """The folder torch reads records from (first entry's name up to ``/``), or None."""
    if not members:
        return None
    first = min(members, key=lambda m: m.index).name
    if "/" not in first:
        return None
    return first[: first.index("/") + 1]


def find_record(members: Sequence[ZipMember], name: str) -> list[ZipMember]:
    """Every entry torch's (case-insensitive) lookup of ``name`` could return."""
    want = name.lower()
    return [m for m in members if m.name.lower() == want]


def resolve_main_pickle(members: Sequence[ZipMember]) -> MainPickle:
    """The ``data.pkl`` torch would unpickle (see module docs)."""
    prefix = archive_prefix(members)
    if prefix is None:
        return MainPickle(None, "", (), "the first zip entry is not in a folder (torch refuses such an archive)")
    found = tuple(sorted(find_record(members, prefix + "data.pkl"), key=lambda m: m.index))
    if not found:
        return MainPickle(None, prefix, (), f"no {prefix}data.pkl record")
    if len(found) > 1:
        names = ", ".join(repr(m.name) for m in found[:4])
        return MainPickle(None, prefix, found, f"{len(found)} entries match {prefix}data.pkl ({names}); torch "
                                               "picks one by a case-insensitive binary search: ambiguous")
    return MainPickle(found[0], prefix, found, None)
