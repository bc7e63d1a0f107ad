"""A model's fingerprint against a reference library, a few references at a time.

Every cosine of a reference depends only on the target, the family's base and that reference
(:class:`sdforensics.fingerprinting.similarity.LayerTerms`), so the library is read in batches of :data:`BATCH`:
each batch is loaded, compared and let go, keeping only the base and the references that point
the target's way (the recipe fit's candidates). Memory is that of a batch whatever the library's
size, and no memory is taken afresh per reference (on a 2-core VM, page faults on 50 references
held at once cost more than comparing them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sdforensics.fingerprinting.fingerprint import Fingerprint
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
from sdforensics.model.architecture import Architecture, BlockMap
from sdforensics.model.stream import Progress

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
