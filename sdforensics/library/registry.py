"""The known-model registry: recognise published files by their hashes.

The shipped registry lives in ``reference_hashes/`` (see its README):

* ``known_models.json`` -- one entry per known file (name, family, kind, file name, size,
  SHA-256, AutoV2, A1111 legacy hash, source, lineage note, ``official``, optional
  ``component_hashes``), schema ``sdforensics.known_models/1``;
* ``legacy_hashes.csv`` -- ``legacy_hash,file_name`` rows from mix1009/model-keyword (MIT,
  ``LICENSE-model-keyword.txt`` travels with it): weak hints only;
* ``MANIFEST.sha256`` -- see :mod:`sdforensics.library.manifest`.

Both are *built* from ``reference_hashes/src/`` (one JSON file per family plus the CSV), so
adding an entry is one edit and one command (the rebuild tool lives outside the package)::

    python tools/registry_rebuild.py rebuild [--src DIR] [--out DIR]

Matching rules: a SHA-256 (or, when only that is known on either side, an AutoV2) match is an
identification (``strength="exact"``). A legacy-hash match is only a hint (``"weak"``) with a
warning that says how many known files share that hash: the legacy hash covers 64 KiB at
offset 1 MiB, a region a fine-tune or merge often leaves untouched, so it often names the base
a model came from.

>>> reg = Registry([KnownModel(name="Tiny", family="sd1", kind="checkpoint", file="tiny.safetensors",
...                            bytes=3, sha256="ab" * 32, autov2=None, legacy_hash="0123abcd",
...                            source="test")])
>>> [(m.entry.name, m.how, m.strength) for m in reg.match_file("ab" * 32, None, None)]
[('Tiny', 'sha256', 'exact')]
>>> reg.match_file(None, None, "0123abcd")[0].strength
'weak'
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sdforensics.core.errors import LibraryError
from sdforensics.library.shipped import shipped_registry_dir

SCHEMA = "sdforensics.known_models/1"
FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")
KINDS = ("checkpoint", "unet", "vae", "text_encoder")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
LEGACY_CSV_HEADER = ("legacy_hash", "file_name")
LEGACY_CSV_SOURCE = (
    "github:mix1009/model-keyword model-keyword.txt @ e26685b (MIT, Copyright (c) 2022 ChunKoo Park; "
    "legacy hash -> file name as seen by the extension's users)"
)
KNOWN_MODELS_JSON = "known_models.json"
LEGACY_CSV = "legacy_hashes.csv"
LEGACY_LICENSE = "LICENSE-model-keyword.txt"
SHIPPED_DIR = shipped_registry_dir()
"""The registry shipped with the source tree (``reference_hashes/``)."""

_FIELDS = ("name", "family", "kind", "file", "bytes", "sha256", "autov2", "legacy_hash", "source",
           "lineage_note", "official", "component_hashes", "hf_repo")
_REQUIRED = ("name", "family", "kind", "source")
_HEX = {"sha256": 64, "autov2": 10, "legacy_hash": 8}
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_COMPONENT_HASH = re.compile(r"^[0-9a-z][0-9a-z_.:-]{7,199}$")


@dataclass(frozen=True)
class KnownModel:
    """One known file. ``None`` means the sources do not say.

    ``family`` is one of :data:`FAMILIES`, or ``"unknown"`` for the rows of the legacy-hash
    list (they name a file and a legacy hash, nothing more). ``origin`` is the file the entry
    was loaded from.
    """

    name: str
    family: str
    kind: str
    file: str | None
    bytes: int | None
    sha256: str | None
    autov2: str | None
    legacy_hash: str | None
    source: str
    lineage_note: str | None = None
    official: bool = False
    component_hashes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    hf_repo: str | None = None
    """Hugging Face ``owner/repo`` publishing ``file``, only where ``source`` does not say it."""
    origin: str = field(default="", compare=False, repr=False)

    @property
    def autov2_or_derived(self) -> str | None:
        """AutoV2 as given, or the first 10 hex characters of the SHA-256."""
        return self.autov2 or (self.sha256[:10] if self.sha256 else None)

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in ``known_models.json`` (field order fixed)."""
        out: dict[str, Any] = {
            "name": self.name, "family": self.family, "kind": self.kind, "file": self.file,
            "bytes": self.bytes, "sha256": self.sha256, "autov2": self.autov2_or_derived,
            "legacy_hash": self.legacy_hash, "source": self.source, "lineage_note": self.lineage_note,
            "official": self.official,
        }
        if self.component_hashes:
            out["component_hashes"] = dict(sorted(self.component_hashes.items()))
        if self.hf_repo:
            out["hf_repo"] = self.hf_repo
        return out


@dataclass(frozen=True)
class RegistryMatch:
    """A registry entry that matches a file or a component.

    ``how``: ``"sha256"``, ``"autov2"``, ``"legacy_hash"`` or ``"component:<name>"``.
    ``strength``: ``"exact"`` (an identification) or ``"weak"`` (a hint, see ``warning``).
    """

    entry: KnownModel
    how: str
    strength: str
    warning: str | None = None


# --------------------------------------------------------------------------- validation


def entry_error(where: str, msg: str) -> LibraryError:
    return LibraryError(
        f"{where}: {msg}. Fix the entry in reference_hashes/src/ and run "
        "`python -m sdforensics.library.registry rebuild`."
    )


def _opt_hex(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{_HEX[key]}}}", value):
        raise entry_error(where, f"{key} must be {_HEX[key]} hex characters or null, got {value!r}")
    return value.lower()


def entry_from_dict(raw: Any, where: str) -> KnownModel:
    """Validate one JSON object and turn it into a :class:`KnownModel`.

    ``where`` names the file and entry in error messages.

    >>> entry_from_dict({"name": "X", "family": "sd1", "kind": "vae", "sha256": "0" * 64,
    ...                  "source": "test"}, "t.json entry 0").autov2_or_derived
    '0000000000'
    """
    if not isinstance(raw, dict):
        raise entry_error(where, f"an entry must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise entry_error(where, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    for key in _REQUIRED:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise entry_error(where, f"{key} must be a non-empty string, got {raw.get(key)!r}")
    if raw["family"] not in FAMILIES:
        raise entry_error(where, f"family must be one of {', '.join(FAMILIES)}, got {raw['family']!r}")
    if raw["kind"] not in KINDS:
        raise entry_error(where, f"kind must be one of {', '.join(KINDS)}, got {raw['kind']!r}")
    file = raw.get("file")
    if file is not None and (not isinstance(file, str) or not file.strip()):
        raise entry_error(where, f"file must be a non-empty string or null, got {file!r}")
    size = raw.get("bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise entry_error(where, f"bytes must be a positive integer or null, got {size!r}")
    sha256 = _opt_hex(raw, "sha256", where)
    autov2 = _opt_hex(raw, "autov2", where)
    legacy = _opt_hex(raw, "legacy_hash", where)
    if sha256 and autov2 and autov2 != sha256[:10]:
        raise entry_error(where, f"autov2 {autov2} is not the first 10 characters of sha256 {sha256}")
    note = raw.get("lineage_note")
    if note is not None and not isinstance(note, str):
        raise entry_error(where, f"lineage_note must be a string or null, got {note!r}")
    official = raw.get("official", False)
    if not isinstance(official, bool):
        raise entry_error(where, f"official must be true or false, got {official!r}")
    if official and not sha256:
        raise entry_error(where, "an official entry needs its sha256 (official files are recognised by it)")
    comps_raw = raw.get("component_hashes") or {}
    if not isinstance(comps_raw, dict):
        raise entry_error(where, f"component_hashes must be an object, got {comps_raw!r}")
    comps: dict[str, str] = {}
    for comp, value in comps_raw.items():
        if comp not in COMPONENTS:
            raise entry_error(where, f"component_hashes key must be one of {', '.join(COMPONENTS)}, got {comp!r}")
        if not isinstance(value, str) or not _COMPONENT_HASH.match(value.lower()):
            raise entry_error(where, f"component_hashes.{comp} must be a hash string (8-200 of [0-9a-z_.:-]), "
                        f"got {value!r}")
        comps[comp] = value.lower()
    hf_repo = raw.get("hf_repo")
    if hf_repo is not None and (not isinstance(hf_repo, str) or not _HF_REPO.match(hf_repo)):
        raise entry_error(where, f"hf_repo must be 'owner/repo' or null, got {hf_repo!r}")
    if not (sha256 or autov2 or legacy or comps):
        raise entry_error(where, "an entry needs at least one of sha256, autov2, legacy_hash, component_hashes")
    return KnownModel(
        name=raw["name"].strip(), family=raw["family"], kind=raw["kind"], file=file, bytes=size,
        sha256=sha256, autov2=autov2 or (sha256[:10] if sha256 else None), legacy_hash=legacy,
        source=raw["source"].strip(), lineage_note=note, official=official,
        component_hashes=MappingProxyType(comps), hf_repo=hf_repo,
    )


def read_entries_file(path: Path) -> list[KnownModel]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise LibraryError(f"{path}: registry file not found.") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LibraryError(f"{path}: not a readable JSON registry file ({err}).") from err
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise LibraryError(
            f"{path}: expected a JSON object with \"schema\": \"{SCHEMA}\", got {got!r}. "
            "A newer schema needs a newer sdforensics."
        )
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise LibraryError(f"{path}: \"entries\" must be a list.")
    entries = []
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, raw in enumerate(raw_entries):
        label = raw.get("name") if isinstance(raw, dict) else None
        entry = entry_from_dict(raw, f"{path} entry {i}" + (f" ({label!r})" if label else ""))
        entry = replace(entry, origin=str(path))
        if entry.name in names:
            raise entry_error(f"{path} entry {i}",
                        f"name {entry.name!r} is already used by entry {names[entry.name]}")
        names[entry.name] = i
        if entry.sha256:
            if entry.sha256 in hashes:
                raise entry_error(f"{path} entry {i} ({entry.name!r})",
                            f"sha256 {entry.sha256} is already used by entry {hashes[entry.sha256]}; "
                            "one entry per file: list other names in lineage_note")
            hashes[entry.sha256] = i
        entries.append(entry)
    return entries


def read_legacy_csv(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise LibraryError(f"{path}: legacy-hash list not found.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise LibraryError(f"{path}: not a readable CSV file ({err}).") from err
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or tuple(rows[0]) != LEGACY_CSV_HEADER:
        raise LibraryError(f"{path}: first line must be {','.join(LEGACY_CSV_HEADER)!r}, "
                           f"got {','.join(rows[0]) if rows else ''!r}.")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not re.fullmatch(r"[0-9a-fA-F]{8}", row[0]) or not row[1].strip():
            raise LibraryError(f"{path}: line {number} must be '<8 hex legacy hash>,<file name>', "
                               f"got {row!r}.")
        out.append((row[0].lower(), row[1].strip()))
    return out


# --------------------------------------------------------------------------- the registry


class Registry:
    """Known files plus legacy-hash rows, indexed for matching. Immutable after construction."""

    def __init__(self, entries: Iterable[KnownModel], legacy_rows: Iterable[tuple[str, str]] = ()) -> None:
        by_sha: dict[str, KnownModel] = {}
        for entry in entries:  # a later entry for the same file replaces an earlier one
            key = entry.sha256 or f"\0{id(entry)}"
            by_sha.pop(key, None)
            by_sha[key] = entry
        self._entries: tuple[KnownModel, ...] = tuple(by_sha.values())
        self._legacy_rows: tuple[tuple[str, str], ...] = tuple(sorted(set(legacy_rows)))
        self._sha: dict[str, KnownModel] = {e.sha256: e for e in self._entries if e.sha256}
        self._autov2: dict[str, list[KnownModel]] = defaultdict(list)
        self._legacy: dict[str, list[KnownModel]] = defaultdict(list)
        self._components: dict[tuple[str, str], list[KnownModel]] = defaultdict(list)
        for e in self._entries:
            if e.autov2_or_derived:
                self._autov2[e.autov2_or_derived].append(e)
            if e.legacy_hash:
                self._legacy[e.legacy_hash].append(e)
            for comp, value in e.component_hashes.items():
                self._components[(comp, value)].append(e)
        self._legacy_files: dict[str, list[str]] = defaultdict(list)
        for legacy, name in self._legacy_rows:
            self._legacy_files[legacy].append(name)

    @property
    def entries(self) -> tuple[KnownModel, ...]:
        """Every known file, in load order."""
        return self._entries

    @property
    def legacy_rows(self) -> tuple[tuple[str, str], ...]:
        """``(legacy_hash, file_name)`` rows of the legacy-hash list, sorted."""
        return self._legacy_rows

    def __len__(self) -> int:
        return len(self._entries)

    def by_name(self, name: str) -> KnownModel:
        """The entry called ``name``; :class:`LibraryError` if none."""
        for e in self._entries:
            if e.name == name:
                return e
        raise LibraryError(f"no registry entry is named {name!r}. `sdf refs list` shows the names.")

    def by_sha256(self, sha256: str) -> KnownModel | None:
        return self._sha.get(sha256.lower())

    def official_entries(self, family: str | None = None) -> list[KnownModel]:
        """Entries marked ``official`` (family bases), optionally of one family."""
        return [e for e in self._entries if e.official and (family is None or e.family == family)]

    def legacy_share_count(self, legacy_hash: str) -> int:
        """How many distinct known files (registry entries and legacy rows) carry ``legacy_hash``."""
        legacy_hash = legacy_hash.lower()
        seen: set[str] = set()
        anonymous = 0
        for e in self._legacy.get(legacy_hash, []):
            if e.file:
                seen.add(Path(e.file).name.lower())
            else:
                anonymous += 1
        seen.update(name.lower() for name in self._legacy_files.get(legacy_hash, []))
        return len(seen) + anonymous

    def match_file(self, sha256: str | None, autov2: str | None, autov1: str | None,
                   *, max_legacy_rows: int = 5) -> list[RegistryMatch]:
        """Entries matching a file's hashes; pass what you know, ``None`` for the rest.

        Exact matches (SHA-256; AutoV2 when one side only knows that) come alone. Without one,
        legacy-hash matches come as weak hints: registry entries first, then at most
        ``max_legacy_rows`` rows of the legacy-hash list (the warning gives the full count).

        >>> reg = Registry([], [("7460a6fa", "a.ckpt"), ("7460a6fa", "b.ckpt")])
        >>> print(reg.match_file(None, None, "7460a6fa")[0].warning)  # doctest: +ELLIPSIS
        legacy hash 7460a6fa is shared by 2 known files; it often points to the base ...
        """
        sha256 = sha256.lower() if sha256 else None
        autov2 = (autov2.lower() if autov2 else None) or (sha256[:10] if sha256 else None)
        exact: list[RegistryMatch] = []
        if sha256 and sha256 in self._sha:
            exact.append(RegistryMatch(self._sha[sha256], "sha256", "exact"))
        elif autov2:
            for e in self._autov2.get(autov2, []):
                if sha256 and e.sha256:
                    continue  # both full hashes known and different: not this file
                exact.append(RegistryMatch(e, "autov2", "exact"))
        if exact or not autov1:
            return exact
        return self._legacy_hints(autov1.lower(), sha256, max_legacy_rows)

    def _legacy_hints(self, legacy: str, sha256: str | None, max_rows: int) -> list[RegistryMatch]:
        entries = self._legacy.get(legacy, [])
        rows = self._legacy_files.get(legacy, [])
        if not entries and not rows:
            return []
        count = self.legacy_share_count(legacy)
        files = "1 known file" if count == 1 else f"{count} known files"
        verb = "matches" if count == 1 else "is shared by"
        base = (f"legacy hash {legacy} {verb} {files}; it often points to the base a model was derived "
                "from, not to the model itself (it covers only 64 KiB at offset 1 MiB). A hint, not an "
                "identification: compare SHA-256 to identify a file")
        out = []
        for e in entries:
            extra = ""
            if sha256 and e.sha256 and e.sha256 != sha256:
                extra = f"; this file's SHA-256 differs from {e.name!r}'s, so it is not that file"
            out.append(RegistryMatch(e, "legacy_hash", "weak", base + extra + "."))
        listed = {Path(e.file).name.lower() for e in entries if e.file}
        shown = 0
        for name in rows:
            if name.lower() in listed or shown >= max_rows:
                continue
            shown += 1
            out.append(RegistryMatch(_legacy_row_entry(legacy, name), "legacy_hash", "weak", base + "."))
        return out

    def match_component(self, component: str, content_hash: str) -> list[RegistryMatch]:
        """Entries whose ``component_hashes[component]`` equals ``content_hash`` (exact).

        >>> e = KnownModel("V", "sd1", "vae", None, None, "1" * 64, None, None, "t",
        ...                component_hashes={"vae": "deadbeefdeadbeef"})
        >>> Registry([e]).match_component("vae", "DEADBEEFDEADBEEF")[0].how
        'component:vae'
        """
        return [RegistryMatch(e, f"component:{component}", "exact")
                for e in self._components.get((component, content_hash.lower()), [])]


def _legacy_row_entry(legacy: str, file_name: str) -> KnownModel:
    return KnownModel(name=file_name, family="unknown", kind="checkpoint", file=file_name, bytes=None,
                      sha256=None, autov2=None, legacy_hash=legacy, source=LEGACY_CSV_SOURCE,
                      origin=LEGACY_CSV)


def load_registry(paths: Sequence[Path]) -> Registry:
    """Load and validate registry files into one :class:`Registry`.

    Each path is a ``known_models.json``-style file (``*.json``), a legacy-hash list
    (``*.csv``), or a folder holding ``known_models.json`` and/or ``legacy_hashes.csv``. For
    the same SHA-256 a later path's entry replaces an earlier one (a user registry can extend
    or correct the shipped one). Bad data raises :class:`LibraryError` naming file and entry.

    >>> len(load_registry([SHIPPED_DIR])) > 200
    True
    """
    entries: list[KnownModel] = []
    rows: list[tuple[str, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = False
            if (path / KNOWN_MODELS_JSON).is_file():
                entries += read_entries_file(path / KNOWN_MODELS_JSON)
                found = True
            if (path / LEGACY_CSV).is_file():
                rows += read_legacy_csv(path / LEGACY_CSV)
                found = True
            if not found:
                raise LibraryError(f"{path}: holds neither {KNOWN_MODELS_JSON} nor {LEGACY_CSV}.")
        elif path.suffix.lower() == ".csv":
            rows += read_legacy_csv(path)
        else:
            entries += read_entries_file(path)
    return Registry(entries, rows)


def shipped_registry() -> Registry:
    """The registry in ``reference_hashes/``."""
    return load_registry([SHIPPED_DIR])


# --------------------------------------------------------------------------- for the CLI

# (phrase, pattern the lineage note must contain, pattern the entry name must NOT match)
_LINEAGE_RULES: tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None], ...] = (
    ("NovelAI leak (SD 1.4-based)", re.compile(r"^Leaked NovelAI model.*based on SD 1\.4"), None),
    ("NovelAI leak",
     re.compile(r"^Subtracted model C in OrangeMix|animefull-final-pruned is described"), None),
    ("NAI-derived", re.compile(
        r"NAI (full|sfw)|merge containing NovelAI|AnythingV3\.0 (\+|x)|merge AnythingV3\.0|"
        r"base: AnythingV3|\bAOM2sfw \+|\bAOM3 (\+|with|variant)|Elysium_Anime_V2 \+|NAI and Gape"),
     re.compile(r"^NovelAI")),
    ("declared merge",
     re.compile(r"[Ss]elf-declared merge|\bv2\.2 recipe\b|\d+/\d+ merge of|^Merge of "), None),
    ("fine-tuned from SD 1.4", re.compile(r"Trained on SD v1\.4"), None),
    ("fine-tuned from SD 1.2", re.compile(r"[Ii]nitiali[sz]ed from SD v1\.2"), None),
    ("fine-tuned from SD 2.0", re.compile(r"[Ff]ine-?tuned from SD 2\.0"), None),
    ("inpainting variant", re.compile(r"9-channel"), None),
    ("same weights as the SD 1.4 VAE", re.compile(r"weights were reported equal to the SD 1\.4 VAE"), None),
)


def lineage_hint(entry: KnownModel) -> str | None:
    """A short phrase for a summary (e.g. ``"NAI-derived"``) when the lineage note supports it.

    Conservative: only phrases a rule in ``_LINEAGE_RULES`` finds in the note's own words
    (published recipes, "trained on", "initialized from"); ``None`` otherwise. Several phrases
    are joined with ``", "``.

    >>> e = KnownModel("M", "sd1", "checkpoint", None, None, "2" * 64, None, None, "t",
    ...                lineage_note="AnythingV3.0 + (NAI full - NAI sfw) x0.3 (OrangeMixs README).")
    >>> lineage_hint(e)
    'NAI-derived'
    """
    note = entry.lineage_note
    if not note:
        return None
    phrases = [phrase for phrase, pattern, not_name in _LINEAGE_RULES
               if pattern.search(note) and not (not_name and not_name.search(entry.name))]
    return ", ".join(phrases) if phrases else None


def registry_rows(registry: Registry) -> list[dict[str, Any]]:
    """One dict per registry entry for ``sdf refs list`` (JSON-ready).

    Each row has the entry's fields plus ``origin`` (the file it came from), ``lineage_hint``,
    ``fingerprint: False`` and ``status: "hash only"``; the CLI sets those two when a
    fingerprint of the same file exists.

    >>> registry_rows(shipped_registry())[0]["status"]
    'hash only'
    """
    rows = []
    for e in registry.entries:
        row = e.to_dict()
        row["component_hashes"] = dict(e.component_hashes)
        row["lineage_hint"] = lineage_hint(e)
        row["origin"] = e.origin
        row["fingerprint"] = False
        row["status"] = "hash only"
        rows.append(row)
    return rows
