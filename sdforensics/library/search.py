"""A model's fingerprint against a reference library: every reference in small batches
(:func:`compare_with_library`, small libraries), or by search vectors (:func:`search_library`).

Every cosine of a reference depends only on the target, the family's base and that reference
(:class:`sdforensics.fingerprinting.similarity.LayerTerms`), so the library is read in batches of :data:`BATCH`:
each batch is loaded, compared and let go, keeping only the base and the references that point
the target's way (the recipe fit's candidates). Memory is that of a batch whatever the library's
size, and no memory is taken afresh per reference (on a 2-core VM, page faults on 50 references
held at once cost more than comparing them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sdforensics.core.errors import SdfError
from sdforensics.fingerprinting.fingerprint import Fingerprint, scheme_from_json
from sdforensics.fingerprinting.similarity import (
    LayerTerms,
    Similarity,
    common_layers,
    component_digests,
    join_terms,
    layer_terms,
    overall_delta,
    similarity,
    similarity_from_terms,
)
from sdforensics.library.store import RefEntry, Reference, load_reference
from sdforensics.library.vecstore import VectorFile
from sdforensics.library.vecstore import projector as block_projector
from sdforensics.library.vectors import (
    BASE_COPY,
    NEAR_TOTAL,
    PER_BLOCK,
    SearchVector,
    Selection,
    changes,
    resave_of,
    row_norms,
    select_candidates,
)
from sdforensics.model.architecture import Architecture, BlockMap
from sdforensics.model.stream import Progress

BASE_RESAVE = 0.1
"""References whose change is at most this share of the base's vector (and more than a copy's) may
be the base re-saved in a low precision (fp8 rounding: ~0.04; a fine-tune's change: ~0.05) ..."""
BASE_RESAVE_MAX = 8
"""... the smallest this many are checked with :func:`resave_of` (each costs a fingerprint read)."""
BATCH = 16
"""References loaded at once."""
POINTING = 0.02
"""|delta cosine| from which a reference counts as pointing the target's way (a fit candidate)."""


@dataclass(frozen=True)
class LibraryComparison:
    """What comparing a target with the library found."""

    similarity: Similarity | None
    """Against every usable model reference, in library order (None: there is none)."""
    base: int | None
    """Index of the family base in ``similarity.references``."""
    component_hashes: list[tuple[str, dict[str, str]]]
    """Each model reference's content hash per component, in the same order."""
    loaded: dict[str, Reference]
    """Fingerprints still in memory, by name: the base and the references pointing the target's
    way (the most similar first, at most ``keep`` besides the base)."""
    loras: list[Reference]
    skipped: list[str]
    """References made with another scheme or width (not comparable)."""
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Reference -> the other references that are the same model (copies, re-saves), by name."""
    searched: int | None = None
    """Usable model references searched (None: every one is in ``similarity``)."""
    changed: list[str] = field(default_factory=list)
    """Candidates left out because their fingerprint no longer matches the manifest (one line each)."""


def usable(target: Fingerprint, ref: Fingerprint) -> bool:
    """Made with the same scheme and width as the target (LoRAs are full width)."""
    return ref.scheme == target.scheme and ref.identity.get("width_factor", 1) == target.identity.get("width_factor")


def is_lora(ref: Reference) -> bool:
    return ref.fingerprint.identity.get("kind") == "lora"


def compare_with_library(
    target: Fingerprint,
    entries: Sequence[RefEntry],
    family: str | None,
    arch: Architecture,
    blocks: BlockMap,
    keep: int,
    progress: Progress | None = None,
) -> LibraryComparison:
    """Compare ``target`` with the references ``entries`` (see the module docstring).
    ``progress(done, total)``: bytes of fingerprint files read so far."""
    sizes = {e.name: _size(e) for e in entries}
    total, done = sum(sizes.values()), 0

    def read(entry: RefEntry) -> Reference:
        nonlocal done
        ref = load_reference(entry)
        done = min(total, done + sizes[entry.name])
        if progress is not None:
            progress(done, total)
        return ref

    comp_of: dict[str, str | None] = {}
    skipped: list[str] = []
    loras: list[Reference] = []
    base: Reference | None = None
    for entry in entries:  # the family base first: every batch is compared against it
        if entry.official and entry.family == family:
            ref = read(entry)
            if usable(target, ref.fingerprint) and not is_lora(ref):
                base = ref
                break
    order: list[str] = []  # usable model references, library order
    hashes: dict[str, dict[str, str]] = {}
    parts: list[tuple[LayerTerms, list[str]]] = []
    loaded: dict[str, Reference] = {}
    pointing: dict[str, float] = {}
    if base is not None:
        loaded[base.name] = base
    pending = [e for e in entries if base is None or e.name != base.name]
    for start in range(0, len(pending), BATCH):
        batch: list[Reference] = []
        for entry in pending[start : start + BATCH]:
            ref = read(entry)
            if not usable(target, ref.fingerprint):
                skipped.append(entry.name)
            elif is_lora(ref):
                loras.append(ref)
            else:
                batch.append(ref)
        for ref in batch:
            hashes[ref.name] = component_digests(ref.fingerprint, arch, comp_of)
        if base is None:  # raw cosines only, and every reference is a candidate: keep them all
            loaded.update((r.name, r) for r in batch)
            continue
        if not batch:
            continue
        refs = [base, *batch]
        prints = [r.fingerprint for r in refs]
        terms = layer_terms(target, prints, 0, common_layers(target, prints, arch, blocks))
        parts.append((terms, [r.name for r in refs]))
        cos = np.nan_to_num(overall_delta(terms), nan=0.0)
        for j, ref in enumerate(batch, start=1):
            if abs(cos[j]) >= POINTING:
                loaded[ref.name] = ref
                pointing[ref.name] = abs(float(cos[j]))
        _trim(loaded, pointing, keep)
    if base is not None:
        hashes[base.name] = component_digests(base.fingerprint, arch, comp_of)
    for entry in entries:
        if entry.name in hashes:
            order.append(entry.name)
    if not order:
        return LibraryComparison(None, None, [], loaded, loras, skipped)
    if base is None:
        refs = [loaded[n] for n in order]
        sim = similarity(target, [r.fingerprint for r in refs], order, None, arch, blocks)
        return LibraryComparison(sim, None, [(n, hashes[n]) for n in order], loaded, loras, skipped)
    if not parts:  # the base alone
        terms = layer_terms(target, [base.fingerprint], 0, common_layers(target, [base.fingerprint], arch, blocks))
        parts.append((terms, [base.name]))
    shared = set.intersection(*({row.key for row in terms.layers} for terms, _ in parts))
    layers = [row for row in parts[0][0].layers if row.key in shared]
    base_at = order.index(base.name)
    sim = similarity_from_terms(join_terms(parts, layers, order), order, base_at, blocks)
    return LibraryComparison(sim, base_at, [(n, hashes[n]) for n in order], loaded, loras, skipped)


def _size(entry: RefEntry) -> int:
    try:
        return entry.path.stat().st_size
    except OSError:  # reading it will say what is wrong
        return 0


def _trim(loaded: dict[str, Reference], pointing: dict[str, float], keep: int) -> None:
    """At most ``keep`` pointing references stay loaded: the most similar."""
    if len(pointing) <= keep:
        return
    for name in sorted(pointing, key=lambda n: pointing[n])[: len(pointing) - keep]:
        del pointing[name]
        loaded.pop(name, None)


Check = Callable[[Sequence[RefEntry]], tuple[list[RefEntry], list[str]]]
"""Entries about to be loaded -> (those still intact, one line per entry left out)."""


def _usable_entry(target: Fingerprint, entry: RefEntry) -> bool | None:
    """Whether ``entry`` was made with the target's scheme and width, from the index alone (None:
    the index does not say)."""
    raw = entry.identity.get("scheme")
    if not isinstance(raw, dict):
        return None
    try:
        same = scheme_from_json(raw) == target.scheme
    except (KeyError, TypeError, ValueError):
        return None
    return same and entry.identity.get("width_factor", 1) == target.identity.get("width_factor")


def search_library(
    target: Fingerprint,
    entries: Sequence[RefEntry],
    family: str | None,
    arch: Architecture,
    blocks: BlockMap,
    keep: int,
    progress: Progress | None = None,
    check: Check | None = None,
) -> LibraryComparison:
    """Compare ``target`` with the library by search vectors (:mod:`sdforensics.library.vectors`):
    every reference is ranked by its stored vector; only the family base, the ``keep`` candidates
    chosen and the library's LoRAs are read in full. Similarity covers the base and the candidates;
    ``groups`` names the references that are the same model as a candidate or as the base.
    ``check`` filters the entries to be read (a changed fingerprint is left out and named).
    ``progress(done, total)``: references whose vector had to be computed (libraries made before
    vectors existed), then candidates read. Without a usable family base, every reference is
    compared as :func:`compare_with_library` does (raw cosines need them all)."""
    check = check or (lambda es: (list(es), []))
    skipped: list[str] = []
    models = [e for e in entries if e.identity.get("kind") != "lora"]
    lora_entries = [e for e in entries if e.identity.get("kind") == "lora"]
    usable_now = {e.name: _usable_entry(target, e) for e in models}
    skipped.extend(e.name for e in models if usable_now[e.name] is False)
    models = [e for e in models if usable_now[e.name] is not False]
    base_entry = next((e for e in models if e.official and e.family == family), None)
    if base_entry is None:
        return _every_reference(target, entries, family, arch, blocks, keep, progress, check)
    projector = block_projector(blocks, PER_BLOCK)  # one per block map in a process: its plans drawn once
    by_folder: dict[Path, list[int]] = defaultdict(list)
    for i, e in enumerate(models):
        by_folder[e.library].append(i)
    raw = np.zeros((len(models), projector.dim), np.float32)
    present = np.zeros((len(models), projector.n_blocks), bool)
    unusable: set[int] = set()
    done = 0
    for folder, rows in by_folder.items():
        vf = VectorFile(folder, blocks, PER_BLOCK)

        def load(k: int, rows: list[int] = rows) -> Fingerprint | None:
            nonlocal done
            i = rows[k]
            ref = load_reference(models[i])
            done += 1
            if progress is not None:
                progress(done, len(models))
            if not usable(target, ref.fingerprint):
                unusable.add(i)
                return None
            return ref.fingerprint

        r, p, _ = vf.vectors([models[i].file for i in rows], load)
        if len(rows) == len(models):  # one folder: its arrays are the matrix (no 1.7 GB copy at 1M)
            raw, present = r, p
        else:
            raw[rows], present[rows] = r, p
    skipped.extend(models[i].name for i in sorted(unusable))
    at = models.index(base_entry)
    if at in unusable:
        return _every_reference(target, entries, family, arch, blocks, keep, progress, check)
    live = [i for i in range(len(models)) if i not in unusable]
    base_vec = _row(raw, present, at)
    tvec = projector.vector(target)
    keep_t = np.repeat(tvec.present & base_vec.present, PER_BLOCK)
    tdelta = (tvec.raw.astype(np.float32) - base_vec.raw) * keep_t
    if len(live) < len(models):
        raw, present = raw[live], present[live]
    deltas = changes(raw, present, base_vec, PER_BLOCK, np.float32, inplace=True)  # no second matrix
    del raw
    norms = row_norms(deltas)
    base_norm = float(np.linalg.norm(base_vec.raw))
    sel = select_candidates(tdelta, deltas, base_norm, keep, norms, parts=component_columns(blocks, PER_BLOCK))
    small = np.flatnonzero((norms > BASE_COPY * base_norm) & (norms <= BASE_RESAVE * base_norm))
    base_near = [live[i] for i in small[np.argsort(norms[small], kind="stable")][:BASE_RESAVE_MAX]]
    names = [models[live[j]].name for j in sel.chosen]
    groups = {models[live[j]].name: [models[live[i]].name for i in sel.groups[j]] for j in sel.chosen}
    groups[base_entry.name] = [models[live[i]].name for i in sel.base_copies if live[i] != at]
    wanted = [e for e in models if e.name in set(names) | {base_entry.name}]  # library order
    intact, changed = check([*wanted, *lora_entries])
    loaded: dict[str, Reference] = {}
    loras: list[Reference] = []
    for k, e in enumerate(intact):
        ref = load_reference(e)
        if progress is not None:
            progress(k + 1, len(intact))
        if not usable(target, ref.fingerprint):
            skipped.append(e.name)
        elif is_lora(ref):
            loras.append(ref)
        else:
            loaded[e.name] = ref
    read: dict[str, Reference] = {}  # samples read for a re-save check that the base's check reads again
    later = {models[i].name for i in base_near}
    _low_precision_resaves(sel, [models[i] for i in live], loaded, groups, read, later)
    if base_entry.name in loaded:  # the base re-saved in fp8: a change too big for a copy, checked exactly
        for i in base_near:
            name = models[i].name
            try:
                other = _read_once(models[i], loaded, read, set())
            except SdfError:
                continue
            if other.fingerprint.scheme == loaded[base_entry.name].fingerprint.scheme and resave_of(
                loaded[base_entry.name].fingerprint, other.fingerprint
            ):
                groups[base_entry.name].append(name)
                if name in loaded:  # a candidate: it leaves the fit, with its own group
                    del loaded[name]
                    groups[base_entry.name].extend(groups.pop(name, []))
    if base_entry.name not in loaded:  # the base changed since it was added: no delta to compare
        return LibraryComparison(None, None, [], {}, loras, skipped, changed=changed)
    order = [e.name for e in models if e.name in loaded]
    refs = [loaded[n] for n in order]
    sim = similarity(target, [r.fingerprint for r in refs], order, order.index(base_entry.name), arch, blocks)
    comp_of: dict[str, str | None] = {}
    hashes: list[tuple[str, dict[str, str]]] = []
    for i in live:
        e = models[i]
        if e.name in loaded:
            hashes.append((e.name, component_digests(loaded[e.name].fingerprint, arch, comp_of)))
        elif isinstance(e.identity.get("component_hashes"), dict):
            hashes.append((e.name, {str(k): str(v) for k, v in e.identity["component_hashes"].items()}))
    return LibraryComparison(
        sim, order.index(base_entry.name), hashes, loaded, loras, skipped,
        groups={k: tuple(v) for k, v in groups.items() if v}, searched=len(live), changed=changed,
    )  # fmt: skip


def _read_once(entry: RefEntry, loaded: dict[str, Reference], read: dict[str, Reference], keep: set[str]) -> Reference:
    """``entry``'s reference for a re-save check: the loaded one, one kept in ``read``, or its samples
    read now (a tenth of a full fingerprint; kept when in ``keep``, the names another check reads)."""
    ref = loaded.get(entry.name) or read.get(entry.name)
    if ref is None:
        ref = load_reference(entry, samples_only=True)
        if entry.name in keep:
            read[entry.name] = ref
    return ref


def _low_precision_resaves(
    sel: Selection, rows: Sequence[RefEntry], loaded: dict[str, Reference], groups: dict[str, list[str]],
    read: dict[str, Reference], keep: set[str],
) -> None:
    """Join to each loaded representative's group the references :func:`resave_of` finds are a
    re-save of it in another precision (read here; their vectors only said they might be). A
    candidate found to be one leaves the fit (``loaded``) and joins with its own group."""
    budget = NEAR_TOTAL
    for j in sel.chosen:
        rep = rows[j].name
        if rep not in loaded:
            continue
        for i in sel.near.get(j, ()):
            if budget <= 0:
                return
            budget -= 1
            name = rows[i].name
            if name == rep or any(name in g for g in groups.values()):
                continue
            try:
                other = _read_once(rows[i], loaded, read, keep)
            except SdfError:
                continue
            if other.fingerprint.scheme == loaded[rep].fingerprint.scheme and resave_of(
                loaded[rep].fingerprint, other.fingerprint
            ):
                groups[rep].append(name)
                if name in loaded:
                    del loaded[name]
                    groups[rep].extend(groups.pop(name, []))


SMALL_COMPONENTS = ("BASE", "VAE")
"""Merge blocks that are whole components besides the UNet (the text encoder(s), the VAE)."""


def component_columns(blocks: BlockMap, per_block: int) -> list[np.ndarray]:
    """The search-vector columns of each small component, for the swap look-up of
    :func:`sdforensics.library.vectors.select_candidates`."""
    out = []
    for b in SMALL_COMPONENTS:
        if b in blocks.ids:
            i = blocks.ids.index(b)
            out.append(np.arange(i * per_block, (i + 1) * per_block))
    return out


def _row(raw: np.ndarray, present: np.ndarray, i: int) -> SearchVector:
    return SearchVector(raw[i].astype(np.float32), present[i])


def _every_reference(
    target: Fingerprint, entries: Sequence[RefEntry], family: str | None, arch: Architecture, blocks: BlockMap,
    keep: int, progress: Progress | None, check: Check,
) -> LibraryComparison:
    intact, changed = check(entries)
    found = compare_with_library(target, intact, family, arch, blocks, keep, progress)
    return replace(found, changed=changed)
