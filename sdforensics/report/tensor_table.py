"""One row per tensor of an analysis (file order, canonical names), shared by every renderer.

The JSON document lists every tensor (``tensors.list``); the HTML report shows a summary per
component and the first :data:`HTML_TENSOR_ROWS` rows, folded, so a report stays small to share;
``layers_frame`` gives the same rows as a DataFrame.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdforensics.model.architecture import architecture, block_map_of

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis


@dataclass(frozen=True)
class TensorRow:
    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    nbytes: int
    component: str | None
    block: str | None

    @property
    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.shape) or "scalar"


@dataclass(frozen=True)
class ComponentRow:
    """Tensors of one component (``None``: keys outside the architecture's layout)."""

    component: str | None
    tensors: int
    values: int
    dtypes: tuple[tuple[str, int], ...]
    """(dtype, tensors), most tensors first."""


def tensor_rows(a: Analysis) -> list[TensorRow]:
    """Every tensor of the analysed file, in file order."""
    family = a.architecture.family
    bmap = block_map_of(a.architecture.name or family) if family else None
    arch = None
    if a.architecture.name:
        try:
            arch = architecture(a.architecture.name)
        except KeyError:
            arch = None
    return [
        TensorRow(
            name=info.name,
            shape=tuple(info.shape),
            dtype=info.dtype,
            numel=info.numel,
            nbytes=info.nbytes,
            component=arch.component_of(info.name) if arch else None,
            block=bmap.block_of(info.name) if bmap else None,
        )
        for info in a.layout.infos
    ]


def component_rows(rows: list[TensorRow]) -> list[ComponentRow]:
    """Tensor and value counts per component, in order of first appearance."""
    order: list[str | None] = []
    counts: dict[str | None, list[int]] = {}
    dtypes: dict[str | None, Counter[str]] = {}
    for r in rows:
        if r.component not in counts:
            order.append(r.component)
            counts[r.component] = [0, 0]
            dtypes[r.component] = Counter()
        counts[r.component][0] += 1
        counts[r.component][1] += r.numel
        dtypes[r.component][r.dtype] += 1
    return [
        ComponentRow(c, counts[c][0], counts[c][1], tuple(dtypes[c].most_common()))
        for c in order
    ]
