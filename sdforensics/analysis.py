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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdforensics.core.safetext import printable
from sdforensics.model.architecture import architecture
from sdforensics.model.detect import ArchitectureReport
from sdforensics.model.hashing import FileHashes
from sdforensics.model.identity import Identity, IdentityCollector, build_identity, identity_problems
from sdforensics.model.metadata import Metadata, decode
from sdforensics.model.problems import Problem, problem
from sdforensics.model.stream import Layout, Progress, identity_pass, open_and_layout, read_layout, stream
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.safetensors_reader import SafetensorsCheckpoint


@dataclass(frozen=True)
class Analysis:
    """The result of :func:`analyze`. Fields not computed are None."""

    path: Path
    layout: Layout
    hashes: FileHashes | None
    identity: Identity
    metadata: Metadata
    problems: tuple[Problem, ...]
    extras: dict[str, Any] = field(default_factory=dict)
    """Results of later stages (registry matches, similarity, recipe), keyed by JSON field."""

    @property
    def architecture(self) -> ArchitectureReport:
        return self.layout.architecture

    def to_json(self) -> dict[str, Any]:
        from sdforensics.report.render_json import analysis_to_json

        return analysis_to_json(self)

    def to_text(self) -> str:
        from sdforensics.report.render_text import analysis_to_text

        return analysis_to_text(self)

    def to_html(self, fragment: bool = False) -> str:
        """The self-contained HTML report (``fragment``: a <div> for embedding)."""
        from sdforensics.report.render_html import analysis_to_html

        return analysis_to_html(self, fragment=fragment)

    def _repr_html_(self) -> str:
        return self.to_html(fragment=True)

    # pandas views and matplotlib figures for notebooks (see sdforensics.report.frames / sdforensics.report.plots)

    def similarity_frame(self) -> Any:
        from sdforensics.report.frames import similarity_frame

        return similarity_frame(self)

    def block_similarity_frame(self) -> Any:
        from sdforensics.report.frames import block_similarity_frame

        return block_similarity_frame(self)

    def recipe_frame(self) -> Any:
        from sdforensics.report.frames import recipe_frame

        return recipe_frame(self)

    def blocks_frame(self) -> Any:
        from sdforensics.report.frames import blocks_frame

        return blocks_frame(self)

    def layers_frame(self) -> Any:
        from sdforensics.report.frames import layers_frame

        return layers_frame(self)

    def plot_recipe(self) -> Any:
        from sdforensics.report.plots import recipe_figure

        return recipe_figure(self)

    def plot_blocks(self) -> Any:
        from sdforensics.report.plots import blocks_figure

        return blocks_figure(self)

    def plot_similarity(self) -> Any:
        from sdforensics.report.plots import similarity_figure

        return similarity_figure(self)

    def plot_unexplained(self) -> Any:
        from sdforensics.report.plots import unexplained_figure

        return unexplained_figure(self)


def junk_keys(layout: Layout) -> list[str]:
    arch = layout.architecture
    if arch.name is None:
        return []
    spec = architecture(arch.name)
    known = set(spec.keys) | set(spec.optional_keys)
    return [i.name for i in layout.infos if i.name not in known and spec.component_of(i.name) is None]


def collect(
    path: Path,
    consumers: list[Any] | None = None,
    progress: Progress | None = None,
    keep_collector: list[Any] | None = None,
    opened: Checkpoint | None = None,
) -> Analysis:
    """Read ``path`` once and return its identity :class:`Analysis` (no reference comparison).
    ``opened``: ``path`` already opened (headers validated); it is closed here."""
    if opened is None:
        ckpt, layout = open_and_layout(Path(path))
    else:
        ckpt = opened
        try:
            layout = read_layout(ckpt)
        except BaseException:
            ckpt.close()
            raise
    consumers = consumers or []
    collector: Any
    hashes: FileHashes | None
    try:
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
    finally:
        ckpt.close()
    if keep_collector is not None:
        keep_collector.append(collector)
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
        path=Path(path),
        layout=layout,
        hashes=hashes,
        identity=ident,
        metadata=meta,
        problems=tuple(problems),
    )
