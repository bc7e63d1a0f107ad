"""The library API the CLI and notebooks call: analyze, fingerprint, compare.

Each function reads its input once (:mod:`sdforensics.model.stream`), then hands arrays to the math
modules (:mod:`sdforensics.fingerprinting.similarity`, :mod:`sdforensics.recipe.estimate`) and returns values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sdforensics.analysis import Analysis, LibrarySearch, collect, collect_with
from sdforensics.core.errors import SdfError
from sdforensics.core.runtime import blas_threads, torch_threads
from sdforensics.fingerprinting.fingerprint import (
    Fingerprint,
    Fingerprinter,
    Scheme,
    coordinate_samples,
    resolve_device,
)
from sdforensics.fingerprinting.similarity import Similarity, identical_components, select_references, similarity
from sdforensics.library.refcheck import changed_references, empty_library_summary
from sdforensics.library.registry import RegistryMatch
from sdforensics.library.search import compare_with_library, search_library
from sdforensics.library.store import (
    Library,
    RefEntry,
    Reference,
    common_scheme,
    is_library,
    load_reference,
    search_path,
)
from sdforensics.lora.files import describe_lora, is_lora, lora_from_checkpoint
from sdforensics.model.architecture import architecture, block_map_of
from sdforensics.model.embedding import Embedding, detect_embedding
from sdforensics.model.stream import Progress
from sdforensics.readers import open_checkpoint
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.remote import as_location
from sdforensics.recipe.precision import apply_precision, dominant_dtype
from sdforensics.recipe.results import BLOCK_CONVENTION, RecipeEstimate
from sdforensics.recipe.text import summarize


def _identity(a: Analysis) -> dict[str, Any]:
    arch = a.architecture
    h = a.hashes
    return {
        "family": arch.family,
        "arch": arch.name,
        "width_factor": arch.width_factor,
        "components": list(arch.components),
        "sha256": h.sha256 if h else None,
        "autov2": h.autov2 if h else None,
        "autov1": h.autov1 if h else None,
        "component_hashes": a.identity.component_hashes,
        "source_file": a.path.name,
    }


def fingerprint_model(
    path: Path, device: str = "auto", progress: Progress | None = None, scheme: Scheme | None = None
) -> tuple[Analysis, Fingerprint]:
    """Read ``path`` once: its identity analysis and its fingerprint."""
    fper = Fingerprinter(scheme, resolve_device(device))
    with open_checkpoint(as_location(path)) as ckpt:
        return _fingerprint_open(as_location(path), ckpt, fper, progress)


def _fingerprint_open(
    path: Path, ckpt: Checkpoint, fper: Fingerprinter, progress: Progress | None
) -> tuple[Analysis, Fingerprint]:
    # On the CPU, leave one core to the hashing threads: torch's pool would only spin-wait for it.
    threads = max(1, (os.cpu_count() or 2) - 2) if fper.device.type == "cpu" else 1 << 10
    with torch_threads(threads):
        analysis, digests = collect_with(path, ckpt, [fper], progress)
    return analysis, fper.result(_identity(analysis), digests)


def _registry_matches(a: Analysis, registry_dirs: list[Path] | None) -> tuple[RegistryMatch, ...]:
    """Known-hash registry entries matching the file or one of its components."""
    from sdforensics.library.registry import load_registry, shipped_registry

    reg = load_registry(registry_dirs) if registry_dirs else shipped_registry()
    out: list[RegistryMatch] = []
    if a.hashes is not None:
        out.extend(reg.match_file(a.hashes.sha256, a.hashes.autov2, a.hashes.autov1))
    for comp, h in a.identity.component_hashes.items():
        out.extend(reg.match_component(comp, h))
    return tuple(out)


def pick_base(refs: list[Reference], family: str | None) -> int | None:
    """Index of the family's official base among ``refs`` (None: there is none)."""
    for i, r in enumerate(refs):
        if r.entry.official and r.entry.family == family:
            return i
    return None


def _entry(entries: list[RefEntry], name: str) -> RefEntry:
    return next(e for e in entries if e.name == name)


def fingerprint_any(
    path: Path, device: str = "auto", progress: Progress | None = None, scheme: Scheme | None = None
) -> tuple[str, Fingerprint]:
    """The fingerprint of a model, of a LoRA (its change at strength 1) or of a textual-inversion
    embedding (its vectors), and a label of what it is. ``scheme``: the library's (default: today's)."""
    path = as_location(path)
    with open_checkpoint(path) as ckpt:
        infos = ckpt.infos()
        if is_lora(infos):
            from sdforensics.lora.fingerprint import lora_fingerprint

            lora = lora_from_checkpoint(ckpt)
            if lora.family is None:
                raise SdfError(f"{path}: a LoRA for no known architecture; it cannot be a reference")
            fp = lora_fingerprint(lora, scheme, device=resolve_device(device))
            return f"LoRA for {lora.family}, rank {lora.rank}", fp
        emb = detect_embedding(infos, path)
        if emb is not None:
            label = f"embedding for {emb.family or 'an unknown family'}"
            return label, _embedding_fingerprint(ckpt, path, emb, scheme)
        analysis, fp = _fingerprint_open(path, ckpt, Fingerprinter(scheme, resolve_device(device)), progress)
    if analysis.architecture.family is None:
        raise SdfError(f"{path}: not a known architecture ({analysis.architecture.label}); cannot be a reference")
    return analysis.architecture.label, fp


def _embedding_fingerprint(ckpt: Checkpoint, path: Path, emb: Embedding, scheme: Scheme | None) -> Fingerprint:
    """An embedding's vectors, stored exactly (a few thousand values), with its file hash and tokens."""
    from sdforensics.library.manifest import sha256_file

    fper = Fingerprinter(scheme, resolve_device("cpu"))
    for info, tensor in ckpt.tensors():
        fper.consume(info.name, info, tensor)
    identity = {"kind": "embedding", "family": emb.family, "tokens": list(emb.tokens), "format": emb.format,
                "sha256": sha256_file(path), "source_file": path.name}
    return fper.result(identity)


def is_lora_file(path: Path) -> bool:
    """True when ``path`` holds a LoRA (decided from its tensor names and shapes, headers only)."""
    with open_checkpoint(as_location(path)) as ckpt:
        return is_lora(ckpt.infos())


_NOT_FOR_LORAS = {"unknown_architecture", "missing_component", "missing_keys", "junk_keys", "fp32_weights"}


def _lora_analysis(path: Path, ckpt: Checkpoint, progress: Progress | None) -> Analysis:
    """A LoRA file: hashes and metadata as for any file, plus what the LoRA targets."""
    info = describe_lora(lora_from_checkpoint(ckpt))
    analysis = collect(path, ckpt, progress)
    problems = tuple(p for p in analysis.problems if p.code not in _NOT_FOR_LORAS)
    return replace(analysis, problems=problems, lora=info)


def _embedding_analysis(path: Path, ckpt: Checkpoint, emb: Embedding, progress: Progress | None) -> Analysis:
    """A textual-inversion embedding: hashes and metadata as for any file, plus the embedding."""
    analysis = collect(path, ckpt, progress)
    problems = tuple(p for p in analysis.problems if p.code not in _NOT_FOR_LORAS)
    return replace(analysis, problems=problems, embedding=emb)


def describe_lora_file(path: Path, progress: Progress | None = None) -> Analysis:
    """A LoRA file: hashes and metadata as for any file, plus what the LoRA targets."""
    with open_checkpoint(as_location(path)) as ckpt:
        return _lora_analysis(as_location(path), ckpt, progress)


def _not_a_model(path: Path, ckpt: Checkpoint, progress: Progress | None) -> Analysis | None:
    """One look at the headers: the analysis of a LoRA or an embedding, None for a model."""
    infos = ckpt.infos()
    if is_lora(infos):
        return _lora_analysis(path, ckpt, progress)
    emb = detect_embedding(infos, path)
    return _embedding_analysis(path, ckpt, emb, progress) if emb is not None else None


def identify(path: Path, progress: Progress | None = None, registry_dirs: list[Path] | None = None) -> Analysis:
    """What the file is (format, architecture, hashes, metadata, problems, registry matches): one read,
    no fingerprint and no comparison."""
    path = as_location(path)
    with open_checkpoint(path) as ckpt:
        other = _not_a_model(path, ckpt, progress)
        if other is not None:
            return other
        analysis = collect(path, ckpt, progress)
    return replace(analysis, registry=_registry_matches(analysis, registry_dirs))


def analyze(
    path: Path,
    library: Path | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    registry_dirs: list[Path] | None = None,
    library_progress: Progress | None = None,
) -> Analysis:
    """Fingerprint ``path``, compare it with the reference library, estimate its recipe.
    ``progress``: bytes of the model read; ``library_progress``: bytes of fingerprints compared."""
    path = as_location(path)
    with open_checkpoint(path) as ckpt:
        other = _not_a_model(path, ckpt, progress)
        if other is not None:
            return other
        index = LibraryIndex.read(search_path(library))
        fper = Fingerprinter(index.scheme(), resolve_device(device))
        analysis, fp = _fingerprint_open(path, ckpt, fper, progress)
    analysis = replace(analysis, registry=_registry_matches(analysis, registry_dirs))
    return replace(analysis, **compare_and_estimate(analysis, fp, index, library_progress))


@dataclass(frozen=True)
class LibraryIndex:
    """The library folders one analysis searches and their index entries, read once."""

    folders: tuple[Path, ...]
    entries: tuple[RefEntry, ...]
    """Every folder's entries in search order (a folder without an index holds none)."""

    @classmethod
    def read(cls, folders: list[Path]) -> LibraryIndex:
        return cls(tuple(folders), tuple(e for f in folders if is_library(f) for e in Library(f).entries))

    def scheme(self) -> Scheme | None:
        """The fingerprint scheme most references were made with (as :func:`library_scheme`)."""
        return common_scheme(self.entries)

    def of_family(self, family: str) -> list[RefEntry]:
        """The family's references, the first folder winning a name clash (as :func:`reference_entries`)."""
        seen: set[str] = set()
        out = []
        for e in self.entries:
            if e.name not in seen and e.family == family:
                seen.add(e.name)
                out.append(e)
        return out


def library_base_file(path: Path, library: Path | None = None) -> tuple[str, Path] | None:
    """The family base of the model at ``path`` as a file on this machine: the library's official
    reference of that family, at a path it was fingerprinted from, if that file is still there
    unchanged (size and modification time as recorded). None when no library holds such a file.
    Reads ``path``'s headers only."""
    from sdforensics.model.stream import read_layout

    with open_checkpoint(as_location(path)) as ckpt:
        family = read_layout(ckpt).architecture.family
    if family is None:
        return None
    for entry in LibraryIndex.read(search_path(library)).of_family(family):
        for src in entry.sources if entry.official else ():
            try:
                st = Path(src.path).stat()
            except OSError:
                continue
            if st.st_size == src.size and st.st_mtime_ns == src.mtime_ns:
                return entry.name, Path(src.path)
    return None


def compare_and_estimate(
    analysis: Analysis, fp: Fingerprint, index: LibraryIndex, progress: Progress | None = None
) -> dict[str, Any]:
    """The library stages of :func:`analyze`: search, similarity, recipe and summary, as Analysis fields."""
    family = analysis.architecture.family
    folders = list(index.folders)
    entries = index.of_family(family) if family else []
    changed: list[str] = []
    found = None
    arch_name = analysis.architecture.name or family or ""
    if len(entries) > MAX_CANDIDATES:  # rank by search vectors, read only the candidates
        arch = architecture(arch_name)
        blocks = block_map_of(arch_name)
        with blas_threads(1):
            found = search_library(fp, entries, family, arch, blocks, MAX_CANDIDATES - 1, progress,
                                   check=changed_references)
        changed = found.changed
    else:
        entries, changed = changed_references(entries)
        if entries:
            arch = architecture(arch_name)
            blocks = block_map_of(arch_name)
            with blas_threads(1):
                found = compare_with_library(fp, entries, family, arch, blocks, MAX_CANDIDATES - 1, progress)
    skipped = found.skipped if found else []
    out: dict[str, Any] = {
        "library": LibrarySearch(
            searched=tuple(folders),
            references=(found.searched if found.searched is not None else len(found.component_hashes))
            if found else 0,
            loras=len(found.loras) if found else 0,
            skipped=tuple(skipped),
            changed=tuple(changed),
        )
    }
    summary: list[str] | None = None
    if found is not None and found.similarity is not None:
        sim = out["similarity"] = found.similarity
        out["identical"] = identical_components(analysis.identity.component_hashes, found.component_hashes)
        base = found.base
        chosen = candidates(sim, base)
        names = [sim.references[i] for i in chosen]  # loaded unless a library mixes layouts: then read again
        refs = [found.loaded.get(n) or load_reference(_entry(entries, n)) for n in names]
        if len(chosen) < len(sim.references):
            sim = select_references(sim, fp, [r.fingerprint for r in refs], chosen, base, arch, blocks)
            base = chosen.index(base) if base is not None else None
        est = estimate(fp, refs, base, sim, found.loras, blocks.recipe_convention)
        if est is not None and found.groups:
            named = [w.reference for w in est.weights] + ([est.copy_of] if est.copy_of else [])
            est = replace(est, groups=tuple((n, found.groups[n]) for n in dict.fromkeys(named) if n in found.groups))
        if est is not None:
            out["recipe"] = est
            summary = summarize(est)
    else:
        summary = empty_library_summary(folders, family, analysis.architecture.label)
    if skipped:
        shown = ", ".join(skipped[:8]) + (f" and {len(skipped) - 8} more" if len(skipped) > 8 else "")
        summary = [
            *(summary or []),
            f"{len(skipped)} reference{'s were' if len(skipped) != 1 else ' was'} left out ({shown}): made at "
            "another width or with another fingerprint scheme; re-add them with 'sdf refs add'",
        ]
    if changed:
        summary = [*(summary or []), *(f"left out {line}" for line in changed)]
    if summary is not None:
        out["summary"] = tuple(summary)
    return out


def recipe_among(
    fp: Fingerprint, refs: list[Reference], base: int | None, arch_name: str, loras: list[Reference] | None = None
) -> RecipeEstimate | None:
    """The recipe of ``fp`` from the loaded references ``refs`` (``base``: index of the family base
    among them), exactly as :func:`analyze` fits it once it has its candidates: similarity, the
    candidates worth fitting (:func:`candidates`), then :func:`estimate`. ``sdf map`` calls this for
    every model of a collection against the others (leave-one-out). None: no common layer."""
    if not refs:
        return None
    arch = architecture(arch_name)
    blocks = block_map_of(arch_name)
    with blas_threads(1):
        sim = similarity(fp, [r.fingerprint for r in refs], [r.name for r in refs], base, arch, blocks)
        chosen = candidates(sim, base)
        if len(chosen) < len(refs):
            refs = [refs[i] for i in chosen]
            sim = select_references(sim, fp, [r.fingerprint for r in refs], chosen, base, arch, blocks)
            base = chosen.index(base) if base is not None else None
        return estimate(fp, refs, base, sim, loras, blocks.recipe_convention)


def layer_vector(values: np.ndarray, structure: np.ndarray | None) -> np.ndarray:
    """What the fit sees of one layer: the CountSketch, then the two-sided sketch when there is one.

    Both estimate the layer's norm, so together they are scaled by 1/sqrt(2) to keep each layer's
    weight in the fit equal to its true size. Always float64 (file fingerprints hold float32)."""
    if structure is None:
        return np.asarray(values, np.float64)
    return np.concatenate([values, structure], dtype=np.float64) / np.sqrt(2.0)


def lora_deltas(layers: list[Any], loras: list[Reference]) -> dict[str, dict[str, np.ndarray]]:
    """Library LoRAs as fit columns: per layer, the same vector a model's layer gives (see layer_vector)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for ref in loras:
        cols: dict[str, np.ndarray] = {}
        for layer in layers:
            p = ref.fingerprint.tensors.get(layer.key)
            if p is None or len(p.values) + (0 if p.structure is None else len(p.structure)) != len(layer.target):
                continue
            cols[layer.key] = layer_vector(p.values, p.structure if layer.sketch2d is not None else None)
        if cols:
            out[ref.name] = cols
    return out


MAX_CANDIDATES = 16
"""References the recipe fit considers at most: the base and the most similar others."""


def candidates(sim: Similarity, base: int | None, limit: int = MAX_CANDIDATES) -> list[int]:
    """The references worth fitting: the base, any reference whose change points the target's way
    (|delta cosine| >= 0.02 overall), the most similar first, at most ``limit``. A reference whose
    change is orthogonal to the target's takes no weight in the fit, so leaving it out keeps the
    fit's cost independent of the library's size. Without a base, every reference (raw cosines)."""
    n = len(sim.references)
    if base is None or n <= limit:
        return list(range(n))
    cos = np.nan_to_num(np.abs(sim.overall_delta), nan=0.0)
    order = [i for i in np.argsort(-cos) if i != base and cos[i] >= 0.02]
    return sorted([base, *order[: limit - 1]])


def estimate(
    fp: Fingerprint,
    refs: list[Reference],
    base: int | None,
    sim: Similarity,
    loras: list[Reference] | None = None,
    block_convention: str = BLOCK_CONVENTION,
) -> RecipeEstimate | None:
    """The recipe fit of ``fp`` over ``refs`` on the layers ``sim`` compared (None: no common layer)."""
    from sdforensics.recipe.estimate import estimate_recipe, finite_layers

    layers = fit_layers(fp, [r.fingerprint for r in refs], [(row.key, row.block, row.component) for row in sim.layers])
    if not finite_layers(layers):
        return None
    est = estimate_recipe(
        layers, [r.name for r in refs], base, lora_deltas=lora_deltas(layers, loras or []),
        block_convention=block_convention,
    )
    # fp8 / bf16 files: a re-save proven from the exact samples, else rounding noise left out
    stored: dict[str, int] = {}
    for t in fp.tensors.values():
        stored[t.dtype] = stored.get(t.dtype, 0) + t.numel
    pivot = base if base is not None else refs.index(next(r for r in refs if r.name == est.pivot))
    return apply_precision(est, layers, [r.name for r in refs], pivot, dominant_dtype(stored))


def fit_layers(fp: Fingerprint, refs: list[Fingerprint], rows: list[tuple[str, str, str]]) -> list[Any]:
    """What the recipe fit sees of each ``(key, block, component)`` row: ``fp``'s and every reference's
    sketch (:func:`layer_vector`) and coordinate samples, as :class:`~sdforensics.recipe.estimate.LayerData`."""
    from sdforensics.recipe.estimate import LayerData

    layers = []
    for key, block, component in rows:
        t = fp.tensors[key]
        rp = [r.tensors[key] for r in refs]
        samples = coordinate_samples([t, *rp], fp.scheme) or [np.zeros(0)] * (1 + len(rp))
        sample_t, sample_r = np.asarray(samples[0], np.float64), np.stack(samples[1:], dtype=np.float64)
        structured = t.structure is not None and all(p.structure is not None for p in rp)
        layers.append(
            LayerData(
                key=key,
                block=block,
                component=component,
                target=layer_vector(t.values, t.structure if structured else None),
                refs=np.stack([layer_vector(p.values, p.structure if structured else None) for p in rp]),
                sample_target=sample_t,
                sample_refs=sample_r,
                sketch2d=t.sketch_shape if structured else None,
                numel=t.numel,
                nonfinite=t.nonfinite + sum(p.nonfinite for p in rp),
            )
        )
    return layers


def build_official(
    folder: Path,
    library: Path,
    registry_dirs: list[Path] | None,
    device: str = "auto",
    progress: Progress | None = None,
) -> list[tuple[str, Path]]:
    """Fingerprint the official models in ``folder`` (recognised by SHA-256) into ``library``."""
    from sdforensics.library.official import find_official_files
    from sdforensics.library.registry import load_registry, shipped_registry
    reg = load_registry(registry_dirs) if registry_dirs else shipped_registry()
    lib = Library(library)
    added = []
    for path, entry in find_official_files(Path(folder), reg):
        _, fp = fingerprint_model(path, device, progress)
        lib.add(fp, entry.name, official=True)
        added.append((entry.name, path))
    return added


def add_reference(
    path: Path,
    library: Path,
    name: str,
    official: bool = False,
    device: str = "auto",
    progress: Progress | None = None,
) -> RefEntry:
    """Fingerprint the checkpoint or LoRA at ``path`` into the library folder ``library`` as
    ``name`` (``official``: the family's base), as ``sdf refs add`` does; returns its entry."""
    _, fp = fingerprint_any(as_location(path), device, progress)
    return Library(Path(library)).add(fp, name, official=official)
