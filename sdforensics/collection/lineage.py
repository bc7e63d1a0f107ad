"""The lineage of a collection, decided from numbers (pure: arrays and recipes in, values out, no I/O).

:mod:`sdforensics.collection.mapping` reads the library and fits every model's recipe from the
others (leave-one-out, through :func:`sdforensics.api.recipe_among`); this module turns those
numbers into a graph:

* **duplicates**: :func:`union_groups` joins byte-identical files and re-saves (same weights in
  another container or precision) into one group, represented by one member;
* **merges**: a leave-one-out fit that explains a model (``unexplained`` below
  :data:`MERGE_UNEXPLAINED`) from two or more others is a merge only when its weights are
  plausible (:func:`implausible`): no ingredient beyond ``[-1, 1]`` (a parent fitted from its own
  merge child needs ``1/w > 1``), and an add difference ``A + m (B - C)`` moves away from the base
  (its change is larger than ``A``'s). :func:`accept_merges` keeps the merges in an order that leaves
  the graph acyclic;
* **fine-tunes** (everything else): the parent is the nearest model, in change-from-base distance,
  among those closer to the base (smaller change norm) that are not its descendants, as MoTHer
  (ICLR 2025) orients edges: the child adds its own change to its parent's (:func:`finetune_parent`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MERGE_UNEXPLAINED = 0.08
"""A leave-one-out fit leaving less than this share of a model's change is an exact merge."""
WEIGHT_TOL = 0.05
"""How far beyond [-1, 1] a plausible merge weight may go (fit noise)."""
NEAREST = 10
"""Candidate parents per fine-tune (its nearest models with a smaller change), besides the base."""
MERGE_PARENT = 0.6
"""A merge is taken as a fine-tune's parent only when it is this much closer than the other candidates."""
MIN_WEIGHT = 0.02
"""Ingredients with a smaller |weight| are left out of a merge's edges."""

NODE_KINDS = ("base", "root", "finetune", "lora", "merge", "copy", "swap")
EDGE_KINDS = ("finetune", "lora", "merge", "copy", "component")


@dataclass(frozen=True)
class MapEdge:
    """``source -> target``: the target derives from the source. ``weight``: the source's affine weight
    in a merge (1.0 for the other kinds); ``confidence`` in [0, 1]."""

    source: str
    target: str
    kind: str
    weight: float
    confidence: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "target": self.target, "kind": self.kind,
                               "weight": round(self.weight, 4), "confidence": round(self.confidence, 3)}
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class MapNode:
    """One model of the collection (one file; byte copies of one reference are nodes of their own)."""

    name: str
    family: str | None
    kind: str
    """One of :data:`NODE_KINDS`: ``root`` is a model no other explains (its whole change unexplained)."""
    unexplained: float | None
    """Share of its change from the base no parent or ingredient accounts for (None: the base, a copy)."""
    group: str
    """The representative of its duplicate group (itself when it has no copy)."""
    generation: int
    """Longest path from a root (layout layer)."""
    recipe: str
    """The recipe in words: ``0.30 A + 0.70 B``, ``fine-tune of A``, ``copy of A``."""
    dtype: str = ""
    sha256: str | None = None
    paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "kind": self.kind,
                "unexplained": None if self.unexplained is None else round(self.unexplained, 4),
                "group": self.group, "generation": self.generation, "recipe": self.recipe, "dtype": self.dtype,
                "sha256": self.sha256, "paths": list(self.paths)}


@dataclass(frozen=True)
class DuplicateGroup:
    """Models that are the same: ``how`` = ``bytes`` (byte-identical files), ``weights`` (the same
    weights in another container or precision), or ``component:<name>`` (only that component shared)."""

    how: str
    names: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"how": self.how, "names": list(self.names)}


@dataclass(frozen=True)
class CollectionMap:
    """The whole collection: nodes, edges, duplicates, and the similarity of changes (``names`` x ``names``
    delta cosines, with the hierarchical clustering's ``linkage`` and leaf ``order``)."""

    library: str
    base: str | None
    nodes: tuple[MapNode, ...]
    edges: tuple[MapEdge, ...]
    duplicates: tuple[DuplicateGroup, ...]
    shared_components: tuple[DuplicateGroup, ...]
    names: tuple[str, ...]
    cosine: np.ndarray = field(repr=False)
    linkage: np.ndarray | None = field(repr=False, default=None)
    order: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    def node(self, name: str) -> MapNode:
        return next(n for n in self.nodes if n.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "sdforensics.map/1",
            "library": self.library,
            "base": self.base,
            "nodes": [n.to_json() for n in self.nodes],
            "edges": [e.to_json() for e in self.edges],
            "duplicates": [d.to_json() for d in self.duplicates],
            "shared_components": [d.to_json() for d in self.shared_components],
            "similarity": {"names": list(self.names), "order": [self.names[i] for i in self.order],
                           "delta_cosine": [[None if not np.isfinite(v) else round(float(v), 3) for v in row]
                                            for row in self.cosine]},
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- duplicates


def union_groups(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``pairs`` over ``range(n)`` (each sorted; singletons included)."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def near_pairs(deltas: np.ndarray, norms: np.ndarray, cosine: float = 0.3,
               scale: tuple[float, float] = (0.7, 1.3)) -> list[tuple[int, int]]:
    """Pairs whose changes point roughly the same way with about the same size: the only pairs that
    may be the same weights in another precision (an fp8 re-save moves each weight a few percent,
    its change keeps a delta cosine of ~0.85 with the original's)."""
    safe = np.where(norms > 0, norms, 1.0)
    unit = deltas / safe[:, None]
    cos = unit @ unit.T
    ratio = norms[:, None] / safe[None, :]
    ok = (cos >= cosine) & (ratio >= scale[0]) & (ratio <= scale[1]) & (norms[:, None] > 0) & (norms[None, :] > 0)
    a, b = np.nonzero(np.triu(ok, 1))
    return list(zip(a.tolist(), b.tolist(), strict=True))


def delta_cosines(deltas: np.ndarray) -> np.ndarray:
    """Cosine of every pair of changes from the base (NaN for a nil change)."""
    norms = np.linalg.norm(deltas, axis=1)
    safe = np.where(norms > 0, norms, np.nan)
    unit = deltas / safe[:, None]
    return np.clip(unit @ unit.T, -1.0, 1.0)


def cluster(cosine: np.ndarray) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """Average-linkage clustering on ``1 - cosine``: (scipy linkage matrix, leaf order)."""
    n = len(cosine)
    if n < 3:
        return None, tuple(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    dist = 1.0 - np.nan_to_num(cosine, nan=0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    condensed = squareform(dist, checks=False)
    link = linkage(condensed, method="average")
    if n <= 400:
        link = optimal_leaf_ordering(link, condensed)
    return link, tuple(int(i) for i in leaves_list(link))


# --------------------------------------------------------------------------- merges


@dataclass(frozen=True)
class Proposal:
    """A leave-one-out fit read as a merge: ``target = sum weight_i ingredient_i``."""

    target: str
    weights: tuple[tuple[str, float], ...]
    unexplained: float
    ambiguous: frozenset[str] = frozenset()

    @property
    def ingredients(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.weights)


def merge_weights(weights: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """The ingredients worth an edge (|weight| >= :data:`MIN_WEIGHT`)."""
    return tuple((n, w) for n, w in weights if abs(w) >= MIN_WEIGHT)


def implausible(target: str, weights: Sequence[tuple[str, float]], base: str | None,
                norm: Mapping[str, float]) -> list[str]:
    """The ingredients that make ``weights`` an implausible recipe for ``target`` (empty: plausible).

    * a weight beyond ``[-1 - tol, 1 + tol]``: the fit runs backwards (a parent written as its merge
      child minus the other ingredients needs ``1/w``); the non-base such ingredients are returned;
    * an add difference ``A + m (B - C)`` (a weight ~1 and a negative one) whose change is smaller than
      ``A``'s: adding a difference adds change, so the target is ``A``'s parent, not its child (``A``
      is returned)."""
    bad = [n for n, w in weights if abs(w) > 1 + WEIGHT_TOL and n != base]
    if bad:
        return bad
    if any(abs(w) > 1 + WEIGHT_TOL for _, w in weights):  # only the base is out of range
        return [n for n, _ in weights if n != base][:1]
    ones = [n for n, w in weights if abs(w - 1.0) <= WEIGHT_TOL and n != base]
    if ones and any(w < -MIN_WEIGHT for _, w in weights):
        a = ones[0]
        if norm.get(target, 0.0) < norm.get(a, 0.0):
            return [a]
    return []


def descendants(node: str, children: Mapping[str, set[str]]) -> set[str]:
    """Every node reachable from ``node`` along ``children``."""
    out: set[str] = set()
    stack = [node]
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in out:
                out.add(c)
                stack.append(c)
    return out


def accept_merges(proposals: Sequence[Proposal], children: dict[str, set[str]]) -> tuple[list[Proposal], list[str]]:
    """Accept proposals, the simplest first (fewest ingredients, then smallest largest |weight|, then
    least unexplained), each only if its edges keep the graph ``children`` acyclic (updated in
    place). Returns (accepted, targets rejected for a cycle)."""
    order = sorted(proposals, key=lambda p: (len(p.weights), max(abs(w) for _, w in p.weights), p.unexplained,
                                             p.target))
    accepted: list[Proposal] = []
    rejected: list[str] = []
    for p in order:
        below = descendants(p.target, children)
        if any(i in below or i == p.target for i in p.ingredients):
            rejected.append(p.target)
            continue
        for i in p.ingredients:
            children.setdefault(i, set()).add(p.target)
        accepted.append(p)
    return accepted, rejected


def merge_confidence(p: Proposal, ingredient: str) -> float:
    """1 for an exact fit, falling to 0 at :data:`MERGE_UNEXPLAINED`; lower for an ingredient whose
    share the fit could not split from a collinear one (x 0.7)."""
    c = max(0.0, 1.0 - p.unexplained / MERGE_UNEXPLAINED)
    return c * (0.7 if ingredient in p.ambiguous else 1.0)


# --------------------------------------------------------------------------- fine-tunes


def finetune_forest(
    targets: Sequence[int], deltas: np.ndarray, norms: np.ndarray, allowed: Sequence[int], base: int | None,
    children: dict[str, set[str]], names: Sequence[str], merges: Iterable[int] = (), k: int = NEAREST,
) -> dict[int, tuple[int | None, float, float]]:
    """Parents of the fine-tunes ``targets``, decided together: every (child, parent) pair where the
    parent is one of the child's ``k`` nearest (L2 between changes) among ``allowed`` with a smaller
    change, or the base (distance = the child's own change), taken shortest first (as a minimum
    spanning arborescence is built, MoTHer), each child one parent, no pair that closes a cycle in
    ``children`` (merge edges included; updated in place). Deciding the shortest edges first keeps a
    model from being hung under a merge of its own child (a merge sits close to each ingredient).
    A merge (``merges``) is a candidate at :data:`MERGE_PARENT` times its distance: a merge with a
    small share of ``t``'s child can sit as close to ``t`` as that child, while a real fine-tune of a
    merge is much closer to it than to any of its ingredients.

    Returns child -> (parent or None, unexplained share = distance / own change, confidence: 1 when
    the next candidate is at least twice as far, 0 when as near)."""
    pairs: list[tuple[float, int, int]] = []
    ranked: dict[int, list[tuple[float, int]]] = {}
    pool = np.asarray([j for j in allowed], dtype=np.int64)
    penalty = np.ones(len(norms))
    penalty[list(merges)] = 1.0 / MERGE_PARENT
    for t in targets:
        own = float(norms[t])
        cand = pool[(pool != t) & (norms[pool] < own)] if len(pool) else pool
        d = np.linalg.norm(deltas[cand] - deltas[t], axis=1) * penalty[cand] if len(cand) else np.zeros(0)
        best = np.argsort(d, kind="stable")[:k]
        lst = [(float(d[i]), int(cand[i])) for i in best if int(cand[i]) != base]
        if base is not None and base != t:
            lst.append((own, base))
        lst.sort()
        ranked[t] = lst
        pairs += [(dist, t, j) for dist, j in lst]
    pairs.sort()
    out: dict[int, tuple[int | None, float, float]] = {}
    for dist, t, j in pairs:
        if t in out:
            continue
        if names[j] in descendants(names[t], children):
            continue
        own = float(norms[t])
        later = [d for d, p in ranked[t] if d >= dist and p != j]
        d2 = later[0] if later else 2 * dist
        conf = 1.0 if d2 <= 0 else float(np.clip((d2 - dist) / (0.5 * d2), 0.0, 1.0))
        true = dist / penalty[j]
        out[t] = (j, min(1.0, true / own) if own > 0 else 0.0, conf)
        children.setdefault(names[j], set()).add(names[t])
    for t in targets:
        out.setdefault(t, (None, 1.0, 1.0))
    return out


def generations(names: Sequence[str], edges: Sequence[MapEdge]) -> dict[str, int]:
    """Longest path from a root to each node (edges form a DAG; a cycle, if any, is cut)."""
    parents: dict[str, list[str]] = {n: [] for n in names}
    for e in edges:
        if e.target in parents and e.source in parents:
            parents[e.target].append(e.source)
    gen: dict[str, int] = {}
    visiting: set[str] = set()

    def depth(n: str) -> int:
        if n in gen:
            return gen[n]
        if n in visiting:
            return 0
        visiting.add(n)
        d = 1 + max((depth(p) for p in parents[n]), default=-1)
        visiting.discard(n)
        gen[n] = d
        return d

    for n in names:
        depth(n)
    return gen
