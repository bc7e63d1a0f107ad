"""An :class:`~sdforensics.analysis.Analysis` with its views: text, JSON, HTML, frames, figures.

:func:`sdforensics.analyze` returns this class, so a notebook or REPL gets the renderers as
methods, while :mod:`sdforensics.analysis` itself imports no renderer (layer order: the report
sits above the analysis). ``repr`` stays one line; Jupyter shows the HTML report fragment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sdforensics.analysis import Analysis
from sdforensics.report import frames, plots
from sdforensics.report.render_html import analysis_to_html
from sdforensics.report.render_json import analysis_to_json
from sdforensics.report.render_text import analysis_to_text


@dataclass(frozen=True, repr=False)
class AnalysisView(Analysis):
    """The same fields as :class:`Analysis`; methods render them."""

    @classmethod
    def of(cls, a: Analysis) -> AnalysisView:
        return cls(**{f.name: getattr(a, f.name) for f in fields(a)})

    def to_json(self) -> dict[str, Any]:
        return analysis_to_json(self)

    def to_text(self) -> str:
        return analysis_to_text(self)

    def to_html(self, fragment: bool = False) -> str:
        """The self-contained HTML report (``fragment``: a <div> for embedding)."""
        return analysis_to_html(self, fragment=fragment)

    def _repr_html_(self) -> str:
        return self.to_html(fragment=True)

    def similarity_frame(self) -> Any:
        return frames.similarity_frame(self)

    def block_similarity_frame(self) -> Any:
        return frames.block_similarity_frame(self)

    def recipe_frame(self) -> Any:
        return frames.recipe_frame(self)

    def blocks_frame(self) -> Any:
        return frames.blocks_frame(self)

    def layers_frame(self) -> Any:
        return frames.layers_frame(self)

    def plot_recipe(self) -> Any:
        return plots.recipe_figure(self)

    def plot_blocks(self) -> Any:
        return plots.blocks_figure(self)

    def plot_similarity(self) -> Any:
        return plots.similarity_figure(self)

    def plot_unexplained(self) -> Any:
        return plots.unexplained_figure(self)
