"""``sdf map``: the lineage of a whole library (every model's recipe from the others).

Reads each fingerprint once (its search projection, component hashes, dtype), finds the duplicates
(byte-identical files, re-saves in another precision, component swaps), then fits every remaining
model against all the others with :func:`sdforensics.api.recipe_among` (leave-one-out; the
candidates picked by the search vectors, as ``sdf analyze`` picks them), and hands the numbers to
:mod:`sdforensics.collection.lineage`, which decides the graph. Fingerprints are re-read on demand
(a bounded cache), so memory does not grow with the library.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdforensics.api import MAX_CANDIDATES, recipe_among
from sdforensics.collection.lineage import (
    MERGE_UNEXPLAINED,
    CollectionMap,
    DuplicateGroup,
    MapEdge,
    MapNode,
    Proposal,
    accept_merges,
    cluster,
    delta_cosines,
    descendants,
    finetune_forest,
    generations,
    implausible,
    merge_confidence,
    merge_weights,
    near_pairs,
    union_groups,
)
from sdforensics.core.errors import SdfError
from sdforensics.fingerprinting.similarity import component_digests
from sdforensics.library.store import Library, RefEntry, Reference, load_reference
from sdforensics.library.vectors import Projector, resave_of, select_candidates
from sdforensics.model.architecture import architecture, block_map_of
from sdforensics.recipe.results import RecipeEstimate

PER_BLOCK = 128
"""Projection buckets per merge block for the map's distances (27 x 128 values for SD1: relative
error of a distance about 2%, enough to tell a parent from a grandparent)."""
CACHE = 48
"""Fingerprints kept in memory at once."""
ATTEMPTS = 6
"""Leave-one-out refits per model at most (each drops the ingredients that made the last implausible)."""
RESAVE_EQUAL = 0.995
"""Share of the exact coordinate samples that must round to the other model's for a re-save (a real
re-save: all of them; a LoRA baked into a few layers or a swapped VAE leaves most samples equal too)."""
PRECISION_RANK = {"F16": 0, "BF16": 1, "F32": 2, "F64": 3}

MapProgress = Callable[[str, int, int], None]
"""(stage, done, total)."""


@dataclass
class _Model:
    entry: RefEntry
    vec: np.ndarray
    digests: dict[str, str]
    dtype: str

    @property
    def name(self) -> str:
        return self.entry.name


class _Loader:
    def __init__(self, entries: dict[str, RefEntry]) -> None:
        self.entries = entries
        self.cache: OrderedDict[str, Reference] = OrderedDict()

    def __call__(self, name: str) -> Reference:
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        ref = load_reference(self.entries[name])
        self.cache[name] = ref
        if len(self.cache) > CACHE:
            self.cache.popitem(last=False)
        return ref


def _dtype(ref: Reference) -> str:
    counts: Counter[str] = Counter()
    for t in ref.fingerprint.tensors.values():
        counts[t.dtype] += t.numel
    return counts.most_common(1)[0][0] if counts else ""


def map_library_for(paths: Sequence[Path]) -> Path:
    """Where ``sdf map PATH...`` keeps the library of ``PATH...`` when no ``--library`` is given: a folder
    of the user data directory named after the paths, so a re-run reads only new or changed files."""
    import hashlib

    from sdforensics.library.store import user_library

    key = hashlib.sha256("\0".join(sorted(str(Path(p).resolve()) for p in paths)).encode()).hexdigest()[:16]
    return user_library().parent / "sdforensics-maps" / key


def map_collection(
    library: Path | str, base: str | None = None, family: str | None = None, progress: MapProgress | None = None
) -> CollectionMap:
    """The lineage map of the library folder ``library`` (see the module docstring).

    ``base``: the family's base by name (default: the reference marked official, else the model the
    others are closest to, said in ``notes``); ``family``: which family to map when the library holds
    several (default: the one with the most models; the others are listed, not compared)."""
    lib = Library(Path(library))
    entries = [e for e in lib.entries if e.kind == "model"]
    if not entries:
        raise SdfError(f"{library}: the library holds no model (index a folder with 'sdf index PATH --library "
                       f"{library}')")
    notes: list[str] = []
    fams = Counter(e.family for e in entries)
    if base is not None:
        family = lib.get(base).family
    if family is None:
        official = [e.family for e in entries if e.official]
        family = max(fams, key=lambda f: (fams[f], f in official, str(f)))
    mapped = [e for e in entries if e.family == family]
    others = [e for e in entries if e.family != family]
    if not mapped:
        raise SdfError(f"{library}: no model of family {family!r} in the library")
    if others:
        notes.append(f"{len(others)} model(s) of other families listed, not compared: "
                     + ", ".join(sorted({str(e.family) for e in others})))
    arch_name = str(mapped[0].identity.get("arch") or family)
    arch = architecture(arch_name)
    blocks = block_map_of(arch_name)
    projector = Projector(blocks, PER_BLOCK)
    load = _Loader({e.name: e for e in mapped})
    models: list[_Model] = []
    comp_of: dict[str, str | None] = {}
    for k, e in enumerate(mapped):
        ref = load(e.name)
        models.append(_Model(e, projector.vector(ref.fingerprint).raw.astype(np.float64),
                             component_digests(ref.fingerprint, arch, comp_of), _dtype(ref)))
        if progress is not None:
            progress("read", k + 1, len(mapped))
    return _map(str(library), models, others, base, arch_name, load, notes, progress)


def _map(
    library: str, models: list[_Model], others: Sequence[RefEntry], base_name: str | None, arch_name: str,
    load: _Loader, notes: list[str], progress: MapProgress | None,
) -> CollectionMap:
    n = len(models)
    names = [m.name for m in models]
    at = {m.name: i for i, m in enumerate(models)}
    family = models[0].entry.family
    edges: list[MapEdge] = []
    duplicates: list[DuplicateGroup] = []

    # ---- byte copies: other files of one reference, and references with the same sha256
    extra: dict[str, list[tuple[str, str]]] = {}  # reference -> [(copy node name, path)]
    taken = set(names) | {e.name for e in others}
    for m in models:
        srcs = list(m.entry.sources)
        if len(srcs) < 2:
            continue
        main = next((s for s in srcs if Path(s.path).stem == m.name), srcs[0])
        for s in srcs:
            if s is main:
                continue
            stem = Path(s.path).stem or m.name
            name, k = stem, 2
            while name in taken:
                name, k = f"{stem}~{k}", k + 1
            taken.add(name)
            extra.setdefault(m.name, []).append((name, s.path))
            edges.append(MapEdge(m.name, name, "copy", 1.0, 1.0, "bytes"))
    by_sha: dict[str, list[int]] = {}
    for i, m in enumerate(models):
        sha = m.entry.identity.get("sha256")
        if sha:
            by_sha.setdefault(str(sha), []).append(i)
    byte_pairs = [(g[0], j) for g in by_sha.values() for j in g[1:]]

    # ---- same weights: re-saves in another precision or container (exact samples decide)
    base_i = _pick_base(models, base_name, notes)
    base_vec = models[base_i].vec
    deltas = np.stack([m.vec - base_vec for m in models])
    norms = np.linalg.norm(deltas, axis=1)
    nil = norms <= 1e-3 * max(float(np.linalg.norm(base_vec)), 1e-30)
    weight_pairs: list[tuple[int, int]] = []
    for a, b in near_pairs(deltas, norms):
        if (a, b) in byte_pairs or models[a].entry.identity.get("sha256") == models[b].entry.identity.get("sha256"):
            continue
        same = bool(models[a].digests) and models[a].digests == models[b].digests
        if same or resave_of(load(models[a].name).fingerprint, load(models[b].name).fingerprint, RESAVE_EQUAL,
                             per_tensor=0.9):
            weight_pairs.append((a, b))
    weight_pairs += [(base_i, int(i)) for i in np.flatnonzero(nil) if i != base_i]
    dtype_count = Counter(m.dtype for m in models)
    rep_of: dict[int, int] = {}
    for g in union_groups(n, [*byte_pairs, *weight_pairs]):
        rep = base_i if base_i in g else min(
            g, key=lambda i: (-dtype_count[models[i].dtype], PRECISION_RANK.get(models[i].dtype, 9), names[i]))
        for i in g:
            rep_of[i] = rep
        if len(g) > 1:
            for i in g:
                if i == rep:
                    continue
                how = "bytes" if models[i].entry.identity.get("sha256") == models[rep].entry.identity.get("sha256") \
                    else f"resave {models[i].dtype}"
                edges.append(MapEdge(names[rep], names[i], "copy", 1.0, 1.0, how))
    reps = sorted(set(rep_of.values()))
    groups_out: dict[int, list[str]] = {}
    for i, r in rep_of.items():
        groups_out.setdefault(r, []).append(names[i])
    for members in groups_out.values():
        files = members + [c for mname in members for c, _ in extra.get(mname, [])]
        if len(files) > 1:
            shas = {models[at[x]].entry.identity.get("sha256") for x in members}
            duplicates.append(DuplicateGroup("bytes" if len(shas) == 1 else "weights", tuple(sorted(files))))

    # ---- components: a model whose every component is another model's (a swap)
    composite: dict[int, list[tuple[int, list[str]]]] = {}
    shared: list[DuplicateGroup] = []
    for comp in sorted({c for i in reps for c in models[i].digests}):
        owners: dict[str, list[int]] = {}
        for i in reps:
            h = models[i].digests.get(comp)
            if h:
                owners.setdefault(h, []).append(i)
        for g in owners.values():
            if len(g) > 1:
                shared.append(DuplicateGroup(f"component:{comp}", tuple(names[i] for i in g)))
    for t in reps:
        comps = models[t].digests
        if t == base_i or len(comps) < 2:
            continue
        src: dict[int, list[str]] = {}
        for comp, h in comps.items():
            owners_c = [i for i in reps if i != t and models[i].digests.get(comp) == h]
            if not owners_c:
                src = {}
                break
            best = max(owners_c, key=lambda i: sum(models[i].digests.get(c) == comps[c] for c in comps))
            src.setdefault(best, []).append(comp)
        if len(src) >= 2:
            composite[t] = sorted(src.items())
    for t, parts in composite.items():
        for owner, comps_l in parts:
            edges.append(MapEdge(names[owner], names[t], "component", 1.0, 1.0, ", ".join(sorted(comps_l))))

    # ---- merges: leave-one-out fits, read as merges only when plausible and acyclic
    pool = [i for i in reps if i not in composite]
    norm_of = {names[i]: float(norms[i]) for i in range(n)}
    last_fit: dict[str, RecipeEstimate | None] = {}
    children: dict[str, set[str]] = {}
    accepted: list[Proposal] = []
    pending = [i for i in pool if i != base_i and not nil[i]]
    banned: dict[int, set[str]] = {i: set() for i in pending}
    total_fits = 0
    for round_ in range(3):
        proposals = []
        for k, t in enumerate(pending):
            exclude = banned[t] | descendants(names[t], children)
            p = _loo(t, pool, base_i, exclude, names, models, deltas, norms, load, arch_name, norm_of, last_fit)
            total_fits += 1
            if p is not None:
                proposals.append(p)
            if progress is not None:
                progress(f"fit (round {round_ + 1})", k + 1, len(pending))
        ok, rejected = accept_merges(proposals, children)
        accepted += ok
        if not rejected:
            break
        pending = [at[x] for x in rejected]
        for x in rejected:
            banned[at[x]] |= descendants(x, children)
    merged = {p.target: p for p in accepted}
    for p in accepted:
        for ing, w in p.weights:
            edges.append(MapEdge(ing, p.target, "merge", w, merge_confidence(p, ing)))

    # ---- fine-tunes: the nearest model closer to the base, that does not descend from it
    unexplained: dict[str, float | None] = {names[base_i]: None}
    parent_of: dict[str, str] = {}
    tunes = [i for i in pool if i != base_i and names[i] not in merged]
    for t, (par, share, conf) in finetune_forest(tunes, deltas, norms, pool, base_i, children, names,
                                                         [at[x] for x in merged]).items():
        unexplained[names[t]] = share
        if par is None:
            continue
        est = last_fit.get(names[t])
        kind = "lora" if est is not None and any(lo.reference is None for lo in est.loras) else "finetune"
        edges.append(MapEdge(names[par], names[t], kind, 1.0, conf))
        parent_of[names[t]] = names[par]
    for t in composite:
        unexplained[names[t]] = 0.0
    for p in accepted:
        unexplained[p.target] = p.unexplained

    # ---- nodes
    gen = generations([*names, *(c for cs in extra.values() for c, _ in cs)], edges)
    nodes: list[MapNode] = []
    for i, m in enumerate(models):
        rep = rep_of[i]
        name = m.name
        if i == base_i:
            kind, recipe = "base", "the family base"
        elif rep != i:
            kind, recipe = "copy", f"copy of {names[rep]} ({next(e.note for e in edges if e.target == name)})"
        elif i in composite:
            kind = "swap"
            recipe = " + ".join(f"{', '.join(c)} of {names[s]}" for s, c in composite[i])
        elif name in merged:
            kind = "merge"
            recipe = " ".join(f"{'+' if w >= 0 and k else '-' if w < 0 else ''} {abs(w):.2f} {ing}".strip()
                              for k, (ing, w) in enumerate(merged[name].weights))
            recipe = recipe.replace("+ ", "+ ").strip()
        elif name in parent_of:
            e = next(e for e in edges if e.target == name and e.kind in ("finetune", "lora"))
            kind = e.kind
            recipe = f"{'LoRA baked into' if kind == 'lora' else 'fine-tune of'} {parent_of[name]}"
            if parent_of[name] == names[base_i]:
                kind, recipe = "root", f"its own change from {names[base_i]} (explained by no other model)"
        else:
            kind, recipe = "root", "explained by no other model"
        u = None if kind in ("base", "copy") else unexplained.get(name)
        sha = m.entry.identity.get("sha256")
        paths = tuple(s.path for s in m.entry.sources)
        nodes.append(MapNode(name, family, kind, u, names[rep], gen.get(name, 0), recipe, m.dtype,
                             str(sha) if sha else None, paths[:1] if name in extra else paths))
        for cname, path in extra.get(name, []):
            nodes.append(MapNode(cname, family, "copy", None, names[rep], gen.get(cname, 0),
                                 f"copy of {name} (bytes)", m.dtype, str(sha) if sha else None, (path,)))
    for other in others:
        nodes.append(MapNode(other.name, other.family, "root", None, other.name, 0,
                             f"family {other.family}: not compared", "", other.identity.get("sha256"),
                             tuple(src.path for src in other.sources)))

    # ---- similarity of the changes (one representative per duplicate group, the base left out)
    shown = [i for i in reps if i != base_i]
    cos = delta_cosines(deltas[shown]) if shown else np.zeros((0, 0))
    link, order = cluster(cos)
    notes.append(f"{len(reps)} distinct models of {n}; {total_fits} leave-one-out fits; merges: exact fits "
                 f"(unexplained < {MERGE_UNEXPLAINED:.0%}) with weights in [-1, 1]")
    return CollectionMap(
        library=library, base=names[base_i], nodes=tuple(nodes), edges=tuple(edges),
        duplicates=tuple(duplicates), shared_components=tuple(shared),
        names=tuple(names[i] for i in shown), cosine=cos, linkage=link, order=order, notes=tuple(notes),
    )  # fmt: skip


def _pick_base(models: Sequence[_Model], base_name: str | None, notes: list[str]) -> int:
    if base_name is not None:
        for i, m in enumerate(models):
            if m.name == base_name:
                return i
        raise SdfError(f"--base {base_name!r}: no model of that name in the mapped family")
    for i, m in enumerate(models):
        if m.entry.official:
            return i
    vecs = np.stack([m.vec for m in models])
    sq = (vecs**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * vecs @ vecs.T, 0.0))
    i = int(np.argmin(dist.sum(1)))
    notes.append(f"no official base in the library: took {models[i].name!r}, the model the others are closest "
                 "to (name one with --base, or add it with 'sdf refs add ... --official')")
    return i


def _loo(
    t: int, pool: Sequence[int], base_i: int, exclude: set[str], names: Sequence[str], models: Sequence[_Model],
    deltas: np.ndarray, norms: np.ndarray, load: _Loader, arch_name: str, norm_of: dict[str, float],
    last_fit: dict[str, RecipeEstimate | None], sparser: bool = True,
) -> Proposal | None:
    """Fit model ``t`` from the others (up to :data:`ATTEMPTS` times, dropping the ingredients of an
    implausible recipe); a :class:`Proposal` when a plausible merge explains it. A recipe of three or
    more ingredients is fitted again without each of them in turn (``sparser``): ``mix = w F + (1-w) G``
    also reads ``mix = a F + b adddiff + c F.1`` when ``adddiff = G + m (F.1 - F)`` is in the library,
    and the fewest ingredients win."""
    banned = set(exclude)
    for _ in range(ATTEMPTS):
        cands = [j for j in pool if j not in (t, base_i) and names[j] not in banned and norms[j] > 0]
        if not cands:
            return None
        sel = select_candidates(deltas[t].astype(np.float32), deltas[cands].astype(np.float32),
                                float(np.linalg.norm(models[base_i].vec)), MAX_CANDIDATES - 1)
        chosen = [cands[j] for j in sel.chosen]
        if not chosen:
            return None
        refs = [load(names[base_i]), *(load(names[j]) for j in chosen)]
        est = recipe_among(load(names[t]).fingerprint, refs, 0, arch_name)
        last_fit[names[t]] = est
        if est is None or est.unexplained >= MERGE_UNEXPLAINED:
            return None
        weights = merge_weights([(w.reference, w.weight) for w in est.weights])
        if len(weights) < 2:
            return None
        bad = implausible(names[t], weights, names[base_i], norm_of)
        if not bad:
            amb = frozenset(r for g in est.ambiguous for r in g.references)
            found = Proposal(names[t], weights, est.unexplained, amb)
            if len(weights) >= 3 and sparser:  # a merge written through a merge of its own ingredient?
                for ing, _ in weights:
                    if ing == names[base_i]:
                        continue
                    alt = _loo(t, pool, base_i, banned | {ing}, names, models, deltas, norms, load, arch_name,
                               norm_of, {}, sparser=False)
                    if alt is not None and len(alt.weights) < len(found.weights):
                        found = alt
            return found
        banned |= set(bad)
    return None
