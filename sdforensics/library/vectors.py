"""Compact search vectors and candidate selection (pure math: arrays in, values out, no I/O).

A reference's **search vector** is a linear projection of its fingerprint, merge block by merge
block: each block's fingerprint values (the CountSketches of its big tensors and the exact values
of its small ones) are hashed once more into :data:`PER_BLOCK` buckets with random signs (a
CountSketch of the CountSketch, seeded by the layer's name and length, so every model with that
layer uses the same projection). The projection is linear, so the vector of a merge is the merge
of the vectors, and it is taken of the *raw* fingerprint: a reference's vector does not depend on
which model is the family base, and its change from the base is ``vector - base vector``, formed
at search time (a base added after the other references needs nothing recomputed). Dot products
of these changes estimate the fingerprint's delta dot products (error about ``1/sqrt(dim)`` of
the norms), which is all the candidate selection needs: the recipe fit then reads the full
fingerprints of the few candidates.

:func:`select_candidates` picks the references worth fitting:

* **groups**: references whose change from the base points the same way as another's (delta cosine
  at least :data:`GROUP_COSINE`: a copy, an fp16/bf16 re-save, a pruned or renamed file) are one
  model; one representative enters the fit and the others are named with it. References whose
  change is within :data:`BASE_COPY` of nothing are copies of the base;
* **pursuit**: greedy orthogonal matching pursuit over the changes: each step takes the reference
  (group) that best explains what the chosen ones leave of the target's change, so a recipe's small
  ingredients are found even when a thousand references are more similar to the whole target;
* the remaining places go to the most similar references (ambiguous or block-weighted merges).

A re-save in a much lower precision (fp8: rounding moves each weight by a few percent, as much as
a fine-tune does) points only roughly the same way (delta cosine ~0.85, like a child fine-tune),
so :func:`select_candidates` also lists, per representative, the references that could be such a
re-save (:attr:`Selection.near`), and :func:`resave_of` decides from the fingerprints' exact
coordinate samples: a re-save's samples are the original's rounded to its dtype, exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sdforensics.core.dtypes import DTYPES
from sdforensics.fingerprinting.fingerprint import Fingerprint
from sdforensics.model.architecture import BlockMap

VECTOR_VERSION = 2
"""Changes whenever the projection changes (stored vectors of another version are recomputed).
2: buffers (:data:`BUFFERS`) left out."""
BUFFERS = ("position_ids",)
"""Last name parts of tensors that are buffers, not weights, left out of the vector: CLIP's
``position_ids`` are int64 in one file and float in another (sd-mecha writes them in the merge's
dtype), and as floats their 0..76 would count as a change far larger than any fine-tune's."""
PER_BLOCK = 16
"""Buckets per merge block: 27 blocks x 16 = 432 values for SD1 (1.7 KB in float32; the change
matrix of 1,000,000 references is 0.86 GB in float16)."""
GROUP_COSINE = 0.98
"""Delta cosine from which two references count as the same model (copies, fp16/bf16 re-saves)."""
BASE_COPY = 0.01
"""A change smaller than this share of the base's own vector: a copy or re-save of the base."""
MIN_PURSUIT = 0.05
"""A pursuit step stops when no reference explains at least this share (cosine) of the residual."""
NEAR_COSINE = 0.6
"""Delta cosine from which a reference may be a low-precision re-save of a representative ..."""
NEAR_SCALE = (0.7, 1.3)
"""... when its change also projects on the representative's with about the same size."""
NEAR_MAX = 32
"""Such references checked per representative at most (each costs one fingerprint read) ..."""
NEAR_TOTAL = 32
"""... and over all representatives (a library full of children and merges of one model would
otherwise cost hundreds of reads)."""
PAIR_STEPS = 4
"""Pair steps at most (each takes the pair, or the one reference when no pair does better, that
best explains what the chosen ones leave, with the chosen ones' span taken out of every vector)."""
MIN_PAIR = 0.05
"""A pair step stops when the best pair explains less than this share of the residual's square."""
POOL = 1024
"""References (the most similar to the target) among which the best-explaining pair is sought."""
RESAVE_EQUAL = 0.9
"""Share of sampled coordinates that must round exactly for a re-save (measured: fp8 and bf16
re-saves 1.0; a child fine-tune or another model ~0)."""
SWAP_COSINE = 0.9
"""Cosine over one component's blocks from which a reference is taken as that component's source
(a component swap: the text encoder or VAE copied whole from another model)."""
PART_MIN = 0.01
"""A component whose change is below this share of the target's whole change is not looked up."""
CHUNK = 65536
"""References per matrix product (bounds the float32 working copy of a float16 matrix)."""


@dataclass(frozen=True)
class SearchVector:
    """One fingerprint's projection: ``raw`` (blocks x PER_BLOCK, float32) and the blocks it has."""

    raw: np.ndarray
    present: np.ndarray
    """(n_blocks,) bool: the fingerprint has at least one layer in that block."""


class Projector:
    """The projection for one block map (its layers' bucket plans are computed once and reused)."""

    def __init__(self, blocks: BlockMap, per_block: int = PER_BLOCK) -> None:
        self.blocks = blocks
        self.per_block = per_block
        self._index = {b: i for i, b in enumerate(blocks.ids)}
        self._plans: dict[tuple[str, int], tuple[np.ndarray, np.ndarray] | None] = {}

    @property
    def n_blocks(self) -> int:
        return len(self.blocks.ids)

    @property
    def dim(self) -> int:
        return self.n_blocks * self.per_block

    def _plan(self, key: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(bucket of each value, its sign) for layer ``key`` with ``n`` values; None: not in a block."""
        at = (key, n)
        if at not in self._plans:
            block = self.blocks.block_of(key)
            if block is None or block not in self._index:
                self._plans[at] = None
            else:
                seed = int.from_bytes(hashlib.blake2b(f"searchvec/{VECTOR_VERSION}/{key}/{n}".encode(),
                                                      digest_size=8).digest(), "little")
                rng = np.random.default_rng(seed)
                offset = self._index[block] * self.per_block
                buckets = offset + rng.integers(0, self.per_block, n, dtype=np.int64)
                signs = rng.integers(0, 2, n, dtype=np.int8).astype(np.float64) * 2.0 - 1.0
                self._plans[at] = (buckets, signs)
        return self._plans[at]

    def vector(self, fp: Fingerprint) -> SearchVector:
        """The search vector of ``fp`` (float tensors in a merge block; the others leave no trace)."""
        out = np.zeros(self.dim)
        present = np.zeros(self.n_blocks, bool)
        for key, t in fp.tensors.items():
            if t.dtype.startswith(("I", "U")) or t.dtype == "BOOL" or not t.values.size:
                continue
            if key.rsplit(".", 1)[-1] in BUFFERS:
                continue
            plan = self._plan(key, int(t.values.size))
            if plan is None:
                continue
            buckets, signs = plan
            out += np.bincount(buckets, weights=signs * np.asarray(t.values, np.float64), minlength=self.dim)
            present[int(buckets[0]) // self.per_block] = True
        return SearchVector(out.astype(np.float32), present)


def changes(raw: np.ndarray, present: np.ndarray, base: SearchVector, per_block: int,
            dtype: type = np.float16, inplace: bool = False) -> np.ndarray:
    """Each reference's change from ``base`` ((n, dim), float16 by default), over the blocks both
    it and the base have (a block a reference lacks, e.g. a model saved without its VAE, counts as
    unchanged rather than as the base's whole block removed). Rows are computed in float32."""
    keep = np.repeat(present & base.present[None, :], per_block, axis=1)
    out: np.ndarray = raw if inplace and raw.dtype == dtype == np.float32 else np.empty(raw.shape, dtype)
    for start in range(0, len(raw), CHUNK):
        part = raw[start : start + CHUNK].astype(np.float32) - base.raw.astype(np.float32)
        part *= keep[start : start + CHUNK]
        out[start : start + CHUNK] = part
    return out


def _matvec(matrix: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``matrix @ vec`` in float32, a chunk at a time (the matrix may be float16)."""
    v = vec.astype(np.float32)
    out = np.empty(len(matrix), np.float32)
    for start in range(0, len(matrix), CHUNK):
        out[start : start + CHUNK] = matrix[start : start + CHUNK].astype(np.float32, copy=False) @ v
    return out


def row_norms(matrix: np.ndarray) -> np.ndarray:
    out = np.empty(len(matrix), np.float32)
    for start in range(0, len(matrix), CHUNK):
        part = matrix[start : start + CHUNK].astype(np.float32, copy=False)
        out[start : start + CHUNK] = np.sqrt(np.einsum("ij,ij->i", part, part))
    return out


@dataclass(frozen=True)
class Selection:
    """What :func:`select_candidates` chose: representatives and the references named with them."""

    chosen: tuple[int, ...]
    """Representatives to fit, in the order chosen (indices into the reference rows)."""
    groups: dict[int, tuple[int, ...]]
    """Representative -> the other references that are the same model (copies, re-saves)."""
    near: dict[int, tuple[int, ...]]
    """Representative -> references that may be a low-precision re-save of it (see :func:`resave_of`)."""
    base_copies: tuple[int, ...]
    """References whose change from the base is nil: the base again."""
    cosine: np.ndarray
    """(n,) delta cosine of every reference with the target (0 where a change is nil)."""


def select_candidates(
    target: np.ndarray,
    refs: np.ndarray,
    base_norm: float,
    limit: int,
    norms: np.ndarray | None = None,
    group_cosine: float = GROUP_COSINE,
    parts: Sequence[np.ndarray] = (),
) -> Selection:
    """Up to ``limit`` representatives for the recipe fit of ``target`` (its change from the base)
    among ``refs`` (their changes, one row each). See the module docstring. ``base_norm``: norm of
    the base's own vector (what "nil" is measured against); ``norms``: the rows' norms, if known.
    ``parts``: the columns of each small component (text encoder, VAE); the rest is the UNet. After
    the pursuit (which leaves them places), the reference whose change matches the target's over
    one component (cosine >= :data:`SWAP_COSINE`) is taken: in a component swap that component is
    a small share of the whole change, and the pursuit alone can leave its source to be outranked
    by thousands of references. (Taken first, a merge's trained-further relatives took the places
    of its ingredients.)"""
    n = len(refs)
    norms = row_norms(refs) if norms is None else norms
    tnorm = float(np.linalg.norm(target))
    nil = norms <= BASE_COPY * base_norm
    safe = np.where(nil, 1.0, norms)
    taken = nil.copy()
    chosen: list[int] = []
    groups: dict[int, tuple[int, ...]] = {}
    near: dict[int, tuple[int, ...]] = {}

    tdots = _matvec(refs, target) if n else np.zeros(0, np.float32)
    cos = np.where(nil, 0.0, tdots / safe / max(tnorm, 1e-30))
    # column k: every reference's dot product with the k-th chosen one; one read of the matrix per
    # chosen reference serves its grouping and every later pursuit step (refs @ residual =
    # tdots - cols @ coef, the residual being target - chosen.T @ coef)
    cols = np.empty((n, max(limit, 0)), np.float32)

    def take(j: int) -> None:
        dots = _matvec(refs, refs[j].astype(np.float32))
        nj = max(float(norms[j]), 1e-30)
        same = dots / safe / nj
        members = np.flatnonzero((same >= group_cosine) & ~taken)
        taken[members] = True
        taken[j] = True
        if len(members) and int(members[0]) < j:  # the group's first in library order represents it
            j = int(members[0])
            dots = _matvec(refs, refs[j].astype(np.float32))
            nj = max(float(norms[j]), 1e-30)
            same = dots / safe / nj
        cols[:, len(chosen)] = dots
        chosen.append(j)
        groups[j] = tuple(int(i) for i in members if i != j)
        scale = dots / (nj * nj)
        maybe = np.flatnonzero((same >= NEAR_COSINE) & ~taken & (scale >= NEAR_SCALE[0]) & (scale <= NEAR_SCALE[1]))
        near[j] = tuple(int(i) for i in maybe[np.argsort(-same[maybe], kind="stable")][:NEAR_MAX])

    if n and tnorm > 0:
        for _ in range(PAIR_STEPS):
            coef, residual = _fit(refs, chosen, target)
            along = tdots - cols[:, : len(chosen)] @ coef.astype(np.float32) if chosen else tdots
            ranks = (cos, along / safe) if chosen else (cos,)
            pair = _best_pair(refs, chosen, residual, ranks, taken, group_cosine)
            if not pair or len(chosen) + len(pair) > limit:
                break
            for j in pair:
                if not taken[j]:
                    take(j)
        coef, residual = _fit(refs, chosen, target)
        reserve = len(parts) + 1 if parts else 0  # places left for the components' sources
        while len(chosen) < limit - reserve:
            rnorm = float(np.linalg.norm(residual))
            if rnorm <= 1e-6 * tnorm:
                break
            along = tdots - cols[:, : len(chosen)] @ coef.astype(np.float32) if chosen else tdots
            score = np.abs(along) / safe / rnorm
            score[taken] = -1.0
            j = int(np.argmax(score))
            if score[j] < MIN_PURSUIT:
                break
            take(j)
            coef, residual = _fit(refs, chosen, target)
        for dots, pnorms, tpart in _part_dots(target, refs, norms, tdots, parts):
            if tpart < PART_MIN * tnorm or len(chosen) >= limit:
                continue
            with np.errstate(invalid="ignore", divide="ignore"):
                score = np.where(pnorms > 0, dots / np.where(pnorms > 0, pnorms, 1.0) / tpart, 0.0)
            score[taken] = -1.0
            j = int(np.argmax(score))
            if score[j] >= SWAP_COSINE:
                take(j)
        for j in np.argsort(-np.abs(cos), kind="stable"):
            if len(chosen) >= limit or abs(cos[j]) < MIN_PURSUIT / 2:
                break
            if not taken[j]:
                take(int(j))
    return Selection(tuple(chosen), groups, near, tuple(int(i) for i in np.flatnonzero(nil)), cos)


def _best_pair(refs: np.ndarray, chosen: list[int], residual: np.ndarray, ranks: tuple[np.ndarray, ...],
               taken: np.ndarray, group_cosine: float) -> tuple[int, ...]:
    """The two references that together explain the most of ``residual`` (among the :data:`POOL`
    ranked first by ``ranks``, cosine with the target and with the residual; not taken, not the
    same model), or the one when no pair does better: a merge of two models is found whole, where
    the greedy pursuit takes first a model trained from something like the merge (a hub holds
    many) and then finds nothing that explains that model's own training."""
    free = np.flatnonzero(~taken)
    if len(free) < 2:
        return ()
    if len(free) > POOL:  # the most similar to the target, and to what is left of it
        share = POOL // len(ranks)
        pool = np.unique(np.concatenate([free[np.argpartition(-np.abs(r[free]), share - 1)[:share]] for r in ranks]))
    else:
        pool = free
    vecs = refs[pool].astype(np.float64)
    if chosen:  # what the chosen ones explain is no longer there to explain
        q = np.linalg.qr(refs[chosen].astype(np.float64).T)[0]
        vecs -= (vecs @ q) @ q.T
    r = residual.astype(np.float64)
    if float(np.linalg.norm(r)) <= 1e-6 * float(np.linalg.norm(refs[pool[0]])) + 1e-30:
        return ()
    gram = vecs @ vecs.T
    c = vecs @ r
    d = np.diag(gram).copy()
    ok = d > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        single = np.where(ok, c * c / np.where(ok, d, 1.0), 0.0)
        det = np.outer(d, d) - gram * gram
        distinct = (gram * gram < group_cosine**2 * np.outer(d, d)) & np.outer(ok, ok)
        both = (np.outer(d, c * c) - 2.0 * gram * np.outer(c, c) + np.outer(c * c, d)) / np.where(distinct, det, 1.0)
    both = np.where(distinct, both, -np.inf)
    np.fill_diagonal(both, -np.inf)
    i, j = np.unravel_index(int(np.argmax(both)), both.shape)
    rr = float(r @ r)
    best = int(np.argmax(single))
    if not np.isfinite(both[i, j]) or both[i, j] <= float(single[best]) * (1.0 + 1e-6):
        # no pair does better than one reference: that one (what is left is one model's change)
        return (int(pool[best]),) if single[best] >= MIN_PAIR * rr else ()
    if both[i, j] < MIN_PAIR * rr:
        return ()
    a, b = int(pool[i]), int(pool[j])
    return (a, b) if single[i] >= single[j] else (b, a)


def _fit(refs: np.ndarray, chosen: list[int], target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares weights of the chosen rows for ``target``, and what they leave of it."""
    t = target.astype(np.float64)
    if not chosen:
        return np.zeros(0), t
    basis = refs[chosen].astype(np.float64)
    coef = np.linalg.lstsq(basis.T, t, rcond=None)[0]
    return coef, t - basis.T @ coef


def _part_dots(
    target: np.ndarray, refs: np.ndarray, norms: np.ndarray, tdots: np.ndarray, parts: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per component (each of ``parts``, then the remaining columns): every row's dot product with
    the target over its columns, the rows' norms there and the target's norm there."""
    if not parts:
        return []
    out = []
    rest_dots = tdots.astype(np.float64)
    rest_sq = norms.astype(np.float64) ** 2
    rest_cols = np.ones(refs.shape[1], bool)
    t = target.astype(np.float32)
    for cols in parts:
        dots = np.empty(len(refs), np.float32)
        sq = np.empty(len(refs), np.float32)
        for start in range(0, len(refs), CHUNK):
            sub = refs[start : start + CHUNK, cols].astype(np.float32)
            dots[start : start + CHUNK] = sub @ t[cols]
            sq[start : start + CHUNK] = np.einsum("ij,ij->i", sub, sub)
        rest_dots -= dots
        rest_sq -= sq
        rest_cols[cols] = False
        out.append((dots, np.sqrt(sq), float(np.linalg.norm(t[cols]))))
    out.append((rest_dots.astype(np.float32), np.sqrt(np.maximum(rest_sq, 0.0)).astype(np.float32),
                float(np.linalg.norm(t[rest_cols]))))
    return out


def _rounds_to(src: np.ndarray, dst: np.ndarray, dtype: str) -> np.ndarray:
    """Where ``src`` rounded to the safetensors dtype ``dtype`` equals ``dst`` exactly."""
    import torch

    info = DTYPES.get(dtype)
    if info is None or not info.is_float:
        return np.zeros(len(src), bool)
    rounded = torch.from_numpy(np.asarray(src, np.float32)).to(info.torch_dtype).float().numpy()
    return np.asarray(rounded == np.asarray(dst, np.float32))


def resave_of(a: Fingerprint, b: Fingerprint, equal: float = RESAVE_EQUAL, per_tensor: float | None = None) -> bool:
    """Whether ``a`` and ``b`` hold the same weights, one a re-save of the other in another precision:
    at the exact coordinate samples, one model's values rounded to the other's dtype equal the
    other's, for at least ``equal`` (:data:`RESAVE_EQUAL`) of them (either direction). ``per_tensor``:
    also that share in every tensor (a LoRA baked into a few layers or a swapped VAE changes whole
    tensors while leaving most samples equal), small tensors stored exactly counted too."""
    hits = [0, 0]
    total = 0
    for key, ta in a.tensors.items():
        tb = b.tensors.get(key)
        if tb is None:
            continue
        sa, sb = ta.sample, tb.sample
        if per_tensor is not None and sa is None and ta.kind == "exact" and tb.kind == "exact":
            sa, sb = ta.values, tb.values
        if sa is None or sb is None or sa.shape != sb.shape or not sa.size:
            continue
        fa, fb = DTYPES.get(ta.dtype), DTYPES.get(tb.dtype)
        if fa is None or fb is None or not (fa.is_float and fb.is_float):
            continue
        total += sa.size
        h0 = int(_rounds_to(sa, sb, tb.dtype).sum())
        h1 = int(_rounds_to(sb, sa, ta.dtype).sum())
        if per_tensor is not None and max(h0, h1) < per_tensor * sa.size:
            return False
        hits[0] += h0
        hits[1] += h1
    return total > 0 and max(hits) >= equal * total
