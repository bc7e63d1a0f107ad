"""``sdf compare A B``: exact per-layer and per-block comparison of two local checkpoints.

Both files are streamed: tensors of A are read in file order while B's are read alongside,
buffering only B's tensors that arrive before their partner in A (none when both files use the
same order, as files of one family almost always do). Cosines and differences are computed on
the full values in float64 accumulators.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sdforensics.core.errors import SdfError
from sdforensics.core.safetext import printable
from sdforensics.model.architecture import block_map_of
from sdforensics.model.stream import read_layout
from sdforensics.readers import open_checkpoint
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
    delta_cosine: float | None = None
    """Cosine of A - base and B - base (``--base``): what each changed, compared."""


@dataclass(frozen=True)
class PairComparison:
    a: Path
    b: Path
    family: str | None
    layers: tuple[LayerDiff, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    base: Path | None = None
    base_name: str | None = None
    """The library reference ``base`` was found as (None: given with ``--base``)."""
    delta_sums: tuple[tuple[str | None, float, float, float], ...] = ()
    """Per layer (block, <dA, dB>, |dA|^2, |dB|^2) with dX = X - base (when ``base``)."""

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
        delta: dict[str, list[float]] = {}
        for where, dab, daa, dbb in self.delta_sums:
            if where is not None:
                t = delta.setdefault(where, [0.0, 0.0, 0.0])
                t[0], t[1], t[2] = t[0] + dab, t[1] + daa, t[2] + dbb
        for block, (dab, daa, dbb) in delta.items():
            if block in out:
                out[block]["delta_cosine"] = dab / (daa * dbb) ** 0.5 if daa > 0 and dbb > 0 else float("nan")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "sdforensics.compare/1",
            "a": str(self.a),
            "b": str(self.b),
            "family": self.family,
            "base": str(self.base) if self.base else None,
            "base_reference": self.base_name,
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
                    "delta_cosine": x.delta_cosine,
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
        if self.base is not None:
            found = f" (the library's {printable(self.base_name, 120)})" if self.base_name else ""
            lines.append(f"base {printable(str(self.base), 200)}{found}: 'change cos' is the cosine of A - base and "
                         "B - base (1: both changed the same way, 0: unrelated changes)")
        lines.append(f"{'block':6} {'cosine':>10} {'|A-B|/|A|':>10} identical"
                     + (f" {'change cos':>10}" if self.base is not None else ""))
        for block, s in self.blocks().items():
            lines.append(
                f"{block:6} {s['cosine']:10.6f} {s['rel_diff']:10.6f} {int(s['identical_layers'])}/{int(s['layers'])}"
                + (f" {s.get('delta_cosine', float('nan')):10.4f}" if self.base is not None else "")
            )
        if self.base is None and self.layers and not all(x.identical for x in self.layers):
            lines.append("note: raw cosines of two models of one family are close to 1 everywhere and say little; "
                         "pass --base FILE (the family base both derive from), or add the official base to the "
                         "library with 'sdf refs add FILE --name NAME --official', for change-from-base cosines")
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


def _architecture_check(label_a: str, lay_a: Any, label_b: str, lay_b: Any) -> None:
    """Two files of different architectures share only incidental keys: refuse, in one line."""
    fa, fb = lay_a.architecture, lay_b.architecture
    if fa.family != fb.family or fa.family is None:
        raise SdfError(f"{label_a} is {fa.label} and {label_b} is {fb.label}: different architectures have no "
                       "comparable layers; compare two models of one family")
    wa, wb = getattr(fa, "width_factor", None), getattr(fb, "width_factor", None)
    if wa != wb:
        raise SdfError(f"{label_a} and {label_b} are {fa.label} at different widths (1/{wa} and 1/{wb})")


class _Aligned:
    """Pull tensors from a canonical stream by key, buffering those that arrive early."""

    def __init__(self, stream: Iterator[tuple[str, torch.Tensor]], wanted: set[str]) -> None:
        self.stream, self.wanted = stream, wanted
        self.pending: dict[str, torch.Tensor] = {}

    def get(self, key: str) -> torch.Tensor:
        while key not in self.pending:
            k, t = next(self.stream)
            if k in self.wanted:
                self.pending[k] = t.clone() if k != key else t
        return self.pending.pop(key)


def compare_files(
    path_a: Path, path_b: Path, base: Path | None = None, base_name: str | None = None
) -> PairComparison:
    """Compare A and B layer by layer; with ``base`` also what each changed from it (``base_name``:
    the library reference it is)."""
    with ExitStack() as opened:
        ck_a = opened.enter_context(open_checkpoint(Path(path_a)))
        ck_b = opened.enter_context(open_checkpoint(Path(path_b)))
        ck_0 = opened.enter_context(open_checkpoint(Path(base))) if base is not None else None
        return replace(_compare_open(Path(path_a), ck_a, Path(path_b), ck_b, base, ck_0), base_name=base_name)


def _compare_open(
    path_a: Path, ck_a: Checkpoint, path_b: Path, ck_b: Checkpoint, base: Path | None, ck_0: Checkpoint | None
) -> PairComparison:
    lay_a, lay_b = read_layout(ck_a), read_layout(ck_b)
    _architecture_check(str(path_a), lay_a, str(path_b), lay_b)
    lay_0 = None
    if ck_0 is not None:
        lay_0 = read_layout(ck_0)
        _architecture_check(str(path_a), lay_a, f"the base {base}", lay_0)
    family = lay_a.architecture.family
    bmap = block_map_of(family)
    shapes_a = {i.name: i.shape for i in lay_a.infos}
    shapes_b = {i.name: i.shape for i in lay_b.infos}
    wanted = {k for k in shapes_a if k in shapes_b and shapes_a[k] == shapes_b[k]}
    with_base = set()
    if lay_0 is not None:
        shapes_0 = {i.name: i.shape for i in lay_0.infos}
        with_base = {k for k in wanted if shapes_0.get(k) == shapes_a[k]}
    layers: list[LayerDiff] = []
    sums: list[tuple[str | None, float, float, float]] = []
    stream_b = _Aligned(_canonical_stream(ck_b, lay_b.mapping.canonical, set(lay_b.mapping.ema)), wanted)
    stream_0 = None
    if ck_0 is not None and lay_0 is not None:
        stream_0 = _Aligned(_canonical_stream(ck_0, lay_0.mapping.canonical, set(lay_0.mapping.ema)), with_base)
    for key, ta in _canonical_stream(ck_a, lay_a.mapping.canonical, set(lay_a.mapping.ema)):
        if key not in wanted:
            continue
        tb = stream_b.get(key)
        if not (ta.is_floating_point() or tb.is_floating_point()):
            ta, tb = ta.double(), tb.double()
        diff = layer_diff(key, bmap.block_of(key), ta, tb)
        if stream_0 is not None and key in with_base:
            t0 = stream_0.get(key).double().reshape(-1)
            da, db = ta.double().reshape(-1) - t0, tb.double().reshape(-1) - t0
            dab, daa, dbb = float(da @ db), float(da @ da), float(db @ db)
            cos = dab / (daa * dbb) ** 0.5 if daa > 0 and dbb > 0 else float("nan")
            diff = replace(diff, delta_cosine=cos)
            sums.append((diff.block, dab, daa, dbb))
        layers.append(diff)
    return PairComparison(
        a=Path(path_a),
        b=Path(path_b),
        family=family,
        layers=tuple(layers),
        only_a=tuple(sorted(set(shapes_a) - set(shapes_b))),
        only_b=tuple(sorted(set(shapes_b) - set(shapes_a))),
        shape_mismatch=tuple(sorted(k for k in shapes_a if k in shapes_b and shapes_a[k] != shapes_b[k])),
        base=Path(base) if base is not None else None,
        delta_sums=tuple(sums),
    )
