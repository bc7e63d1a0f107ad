"""``analyze(path)``: everything sdforensics can tell about one checkpoint, as one value.

The flow is one-way: the file is opened and its headers interpreted (:mod:`sdforensics.model.stream`),
its tensors streamed once to the collectors, and the results assembled into an
:class:`Analysis`, which renders itself as text, JSON or HTML and in Jupyter.

>>> from sdforensics import analyze                      # doctest: +SKIP
>>> a = analyze("model.safetensors")                     # doctest: +SKIP
>>> a.architecture.family, a.hashes.autov2               # doctest: +SKIP
('sd1', '6ce0161689')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdforensics.core.safetext import printable
from sdforensics.fingerprinting.similarity import Similarity
from sdforensics.library.registry import RegistryMatch
from sdforensics.lora.description import LoraDescription
from sdforensics.model.architecture import architecture
from sdforensics.model.detect import ArchitectureReport
from sdforensics.model.embedding import Embedding
from sdforensics.model.hashing import FileHashes
from sdforensics.model.identity import Identity, IdentityCollector, build_identity, identity_problems
from sdforensics.model.metadata import Metadata, decode
from sdforensics.model.problems import Problem, problem
from sdforensics.model.stream import Layout, Progress, identity_pass, read_layout, stream
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.remote import as_location
from sdforensics.readers.safetensors_reader import SafetensorsCheckpoint
from sdforensics.recipe.results import RecipeEstimate


@dataclass(frozen=True)
class LibrarySearch:
    """Which library folders were searched and what they held for the target's family."""

    searched: tuple[Path, ...]
    references: int
    """Model references compared."""
    loras: int
    skipped: tuple[str, ...]
    """References left out (another width or fingerprint scheme)."""
    changed: tuple[str, ...] = ()
    """References left out because their fingerprint file no longer matches the library's manifest."""


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`, one typed field per stage. Fields a stage did not compute are None.

    Identity stage: ``path`` .. ``problems``. Later stages: ``registry`` (known-hash matches),
    ``library`` (what was searched), ``identical`` (components equal to a reference's),
    ``similarity``, ``recipe`` (the estimate), ``summary`` (the lines a user reads first), and
    ``lora`` for a LoRA file (:class:`~sdforensics.lora.description.LoraDescription`), ``embedding``
    for a textual-inversion embedding. Rendering lives in :mod:`sdforensics.report`.
    """

    path: Path
    layout: Layout
    hashes: FileHashes | None
    identity: Identity
    metadata: Metadata
    problems: tuple[Problem, ...]
    registry: tuple[RegistryMatch, ...] | None = None
    library: LibrarySearch | None = None
    identical: dict[str, str | None] | None = None
    similarity: Similarity | None = None
    recipe: RecipeEstimate | None = None
    summary: tuple[str, ...] | None = None
    lora: LoraDescription | None = None
    embedding: Embedding | None = None

    @property
    def architecture(self) -> ArchitectureReport:
        return self.layout.architecture

    def __repr__(self) -> str:
        """One line (the full analysis is in :func:`sdforensics.report.render_json.analysis_to_json`)."""
        arch = self.layout.architecture
        recipe = f", recipe {self.recipe.kind!r}" if self.recipe is not None else ""
        return (f"Analysis({str(self.path)!r}, {arch.label!r}, {self.identity.n_tensors} tensors"
                f"{recipe}, {len(self.problems)} problems)")


def junk_keys(layout: Layout) -> list[str]:
    arch = layout.architecture
    if arch.name is None:
        return []
    spec = architecture(arch.name)
    known = set(spec.keys) | set(spec.optional_keys)
    return [i.name for i in layout.infos if i.name not in known and spec.component_of(i.name) is None]


def collect(path: Path, ckpt: Checkpoint, progress: Progress | None = None) -> Analysis:
    """Read the open checkpoint ``ckpt`` (at ``path``) once: its identity :class:`Analysis`, no comparison."""
    return collect_with(path, ckpt, [], progress)[0]


def collect_with(
    path: Path, ckpt: Checkpoint, consumers: list[Any], progress: Progress | None = None
) -> tuple[Analysis, dict[str, bytes]]:
    """Like :func:`collect`, with every tensor also handed to ``consumers`` (the fingerprinter) in the
    same read; returns the identity :class:`Analysis` and each tensor's content digest."""
    layout = read_layout(ckpt)
    collector: Any
    hashes: FileHashes | None
    if isinstance(ckpt, SafetensorsCheckpoint):  # identity from raw bytes, on a hashing thread
        hashes, collector = identity_pass(ckpt, layout, consumers, progress)
        ident = build_identity(
            layout.architecture, collector.digests, collector.dtypes, collector.n_tensors,
            collector.n_params, collector.nonfinite, collector.position_ids,
        )
    else:
        # A consumer that counts NaN/Inf itself (the fingerprinter) saves the identity pass a reduction.
        counting = [c for c in consumers if hasattr(c, "nonfinite_issues")]
        collector = IdentityCollector(check_finite=not counting)
        hashes = stream(ckpt, layout, [collector, *consumers], progress)
        issues = [issue for c in counting for issue in c.nonfinite_issues()]
        ident = collector.result(layout.architecture, issues)
    return _assemble(path, layout, hashes, ident), collector.digests


def _assemble(path: Path, layout: Layout, hashes: FileHashes | None, ident: Identity) -> Analysis:
    meta = decode(layout.format.metadata)
    junk = junk_keys(layout)
    problems = identity_problems(layout.architecture, ident, len(junk), junk)
    for note in layout.format.findings:
        problems.append(problem("container", "warning", printable(note, 300)))
    for name in layout.duplicates[:3]:
        problems.append(
            problem("duplicate_key", "warning", f"two stored names map to {printable(name, 120)}")
        )
    for text in meta.problems:
        problems.append(problem("metadata", "info", text))
    return Analysis(
        path=as_location(path),
        layout=layout,
        hashes=hashes,
        identity=ident,
        metadata=meta,
        problems=tuple(problems),
    )
