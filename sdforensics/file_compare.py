"""``sdf compare A B``: exact per-layer and per-block comparison of two local checkpoints.

Both files are streamed: tensors of A are read in file order while B's are read alongside,
buffering only B's tensors that arrive before their partner in A (none when both files use the
same order, as files of one family almost always do). Cosines and differences are computed on
the full values in float64 accumulators.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdforensics.core.safetext import printable
from sdforensics.model.architecture import block_map_of
from sdforensics.model.stream import open_and_layout
from sdforensics.readers.base import Checkpoint


@dataclass(frozen=True)
class LayerDiff:
    key: str
    block: str | None
    cosine: float
    rel_diff: float
    """||A - B|| / ||A||."""
    max_abs_diff: float
    identical: bool
    dot: float
    norm_a2: float
    norm_b2: float
    diff2: float


@dataclass(frozen=True)
class PairComparison:
    a: Path
    b: Path
    family: str | None
    layers: tuple[LayerDiff, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shape_mismatch: tuple[str, ...]

    def blocks(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        acc: dict[str, list[float]] = {}
        for layer in self.layers:
            if layer.block is None:
                continue
            s = acc.setdefault(layer.block, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
            s[0] += layer.dot
            s[1] += layer.norm_a2
            s[2] += layer.norm_b2
            s[3] += layer.diff2
            s[4] += 1
            s[5] += 1 if layer.identical else 0
        order = {b: i for i, b in enumerate(block_map_of(self.family).ids)}
        for block, (dot, na, nb, d2, n, same) in sorted(acc.items(), key=lambda kv: order.get(kv[0], 99)):
            cos = dot / (na**0.5 * nb**0.5) if na > 0 and nb > 0 else float("nan")
            out[block] = {
                "cosine": cos,
                "rel_diff": (d2 / na) ** 0.5 if na > 0 else float("nan"),
                "layers": n,
                "identical_layers": same,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "sdforensics.compare/1",
            "a": str(self.a),
            "b": str(self.b),
            "family": self.family,
            "identical": not self.only_a and not self.only_b and all(x.identical for x in self.layers),
            "blocks": self.blocks(),
            "layers": [
                {
                    "key": x.key,
                    "block": x.block,
                    "cosine": x.cosine,
                    "rel_diff": x.rel_diff,
                    "max_abs_diff": x.max_abs_diff,
                    "identical": x.identical,
                }
                for x in self.layers
            ],
            "only_a": list(self.only_a),
            "only_b": list(self.only_b),
            "shape_mismatch": list(self.shape_mismatch),
        }

    def to_text(self) -> str:
        lines = [f"A {printable(str(self.a), 200)}", f"B {printable(str(self.b), 200)}"]
        same = sum(1 for x in self.layers if x.identical)
        lines.append(
            f"{len(self.layers)} common tensors, {same} identical; only in A: {len(self.only_a)}, "
            f"only in B: {len(self.only_b)}, shape differs: {len(self.shape_mismatch)}"
        )
        lines.append(f"{'block':6} {'cosine':>10} {'|A-B|/|A|':>10} identical")
        for block, s in self.blocks().items():
            lines.append(
                f"{block:6} {s['cosine']:10.6f} {s['rel_diff']:10.6f} {int(s['identical_layers'])}/{int(s['layers'])}"
            )
        return "\n".join(lines) + "\n"


def _canonical_stream(
    ckpt: Checkpoint, mapping: dict[str, str], ema: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    for info, tensor in ckpt.tensors():
        if info.name not in ema:
            yield mapping.get(info.name, info.name), tensor


def layer_diff(key: str, block: str | None, a: torch.Tensor, b: torch.Tensor) -> LayerDiff:
    x = a.double().reshape(-1)
    y = b.double().reshape(-1)
    dot = float(x @ y)
    na, nb = float(x @ x), float(y @ y)
    d = x - y
    d2 = float(d @ d)
    cos = dot / (na**0.5 * nb**0.5) if na > 0 and nb > 0 else float("nan")
    return LayerDiff(
        key,
        block,
        cos,
        (d2 / na) ** 0.5 if na > 0 else float("nan"),
        float(d.abs().max()) if d.numel() else 0.0,
        bool(torch.equal(a, b)),
        dot,
        na,
        nb,
        d2,
    )


def compare_files(path_a: Path, path_b: Path) -> PairComparison:
    ck_a, lay_a = open_and_layout(Path(path_a))
    try:
        ck_b, lay_b = open_and_layout(Path(path_b))
    except BaseException:
        ck_a.close()
        raise
    family = lay_a.architecture.family
    bmap = block_map_of(family)
    shapes_a = {i.name: i.shape for i in lay_a.infos}
    shapes_b = {i.name: i.shape for i in lay_b.infos}
    wanted = {k for k in shapes_a if k in shapes_b and shapes_a[k] == shapes_b[k]}
    layers: list[LayerDiff] = []
    try:
        stream_b = _canonical_stream(ck_b, lay_b.mapping.canonical, set(lay_b.mapping.ema))
        pending: dict[str, torch.Tensor] = {}
        for key, ta in _canonical_stream(ck_a, lay_a.mapping.canonical, set(lay_a.mapping.ema)):
            if key not in wanted:
                continue
            while key not in pending:
                kb, tb = next(stream_b)
                if kb in wanted:
                    pending[kb] = tb.clone() if kb != key else tb
            tb = pending.pop(key)
            if ta.is_floating_point() or tb.is_floating_point():
                layers.append(layer_diff(key, bmap.block_of(key), ta, tb))
            else:
                layers.append(layer_diff(key, bmap.block_of(key), ta.double(), tb.double()))
    finally:
        ck_a.close()
        ck_b.close()
    return PairComparison(
        a=Path(path_a),
        b=Path(path_b),
        family=family,
        layers=tuple(layers),
        only_a=tuple(sorted(set(shapes_a) - set(shapes_b))),
        only_b=tuple(sorted(set(shapes_b) - set(shapes_a))),
        shape_mismatch=tuple(sorted(k for k in shapes_a if k in shapes_b and shapes_a[k] != shapes_b[k])),
    )
