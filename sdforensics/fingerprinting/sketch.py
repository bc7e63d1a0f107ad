"""Deterministic linear sketches: the projections every fingerprint is made with (pure math).

A 2-D weight W (a conv kernel is flattened to out x in*kh*kw) is summarised by the two-sided
sketch ``S(W) = G^T W R / sqrt(k1 k2)`` with G (out x k1) and R (cols x k2) random signs.
S is linear, so the sketch of a merge is the merge of the sketches, and E||S(W)||^2 = ||W||^2,
so sketch dot products estimate true dot products. The sketch is a k1 x k2 matrix, so a
low-rank change (a baked LoRA) stays low-rank in it.

The signs come from SHAKE-256 of the dimension and side, not from a framework RNG, so every
machine, framework version and device builds the same matrices. Coordinate samples use
positions drawn the same way from the tensor's shape.

>>> signs(5, 2, "rows").tolist()
[[-1.0, 1.0], [-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

import hashlib

import numpy as np

SCHEME = "sdf-sign-sketch"


def signs(n: int, k: int, side: str) -> np.ndarray:
    """An n x k matrix of +-1 (float32), a pure function of (n, k, side)."""
    nbits = n * k
    raw = hashlib.shake_256(f"{SCHEME}:{side}:{n}:{k}".encode()).digest((nbits + 7) // 8)
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:nbits]
    return (1.0 - 2.0 * bits.astype(np.float32)).reshape(n, k)


def sample_positions(shape: tuple[int, ...], m: int) -> np.ndarray:
    """``m`` distinct flat indices into a tensor of ``shape`` (sorted), a pure function of the shape."""
    numel = int(np.prod(shape)) if shape else 1
    if numel <= m:
        return np.arange(numel, dtype=np.int64)
    want = m
    count = 2 * m
    while True:
        raw = hashlib.shake_256(f"{SCHEME}:positions:{','.join(map(str, shape))}".encode()).digest(8 * count)
        draws = np.frombuffer(raw, dtype="<u8") % np.uint64(numel)
        _, first = np.unique(draws, return_index=True)
        if len(first) >= want:
            chosen = draws[np.sort(first)[:want]]
            return np.sort(chosen).astype(np.int64)
        count *= 2


def _raw(tag: str, n: int) -> np.ndarray:
    """n uint64 from PCG64 seeded by SHAKE-256(tag): the raw bit stream, stable across numpy versions."""
    seed = int.from_bytes(hashlib.shake_256(f"{SCHEME}:{tag}".encode()).digest(16), "little")
    return np.random.PCG64(seed).random_raw(n)


def count_sketch_plan(shape: tuple[int, ...], m: int, oversample: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, buckets, signs) of the sampled CountSketch of a tensor of ``shape`` into ``m`` buckets.

    ``s = min(numel, oversample * m)`` positions are drawn with replacement (all positions, in
    order, when s reaches numel); position i goes to bucket ``i % m`` (random, since positions
    are) -- or a random bucket when every position is used -- with a random sign. The first
    positions double as the coordinate sample. Pure function of (shape, m, oversample).
    """
    numel = int(np.prod(shape)) if shape else 1
    s = oversample * m
    key = ",".join(map(str, shape))
    if s >= numel:
        positions = np.arange(numel, dtype=np.int64)
        raw = _raw(f"cs-full:{key}:{m}", numel)
        buckets = (raw % np.uint64(m)).astype(np.int64)
    else:
        raw = _raw(f"cs-pos:{key}", s)
        positions = (raw % np.uint64(numel)).astype(np.int64)
        buckets = np.arange(s, dtype=np.int64) % m
    bits = np.unpackbits(np.frombuffer(_raw(f"cs-sign:{key}", (len(positions) + 63) // 64).tobytes(), np.uint8))
    signs = 1.0 - 2.0 * bits[: len(positions)].astype(np.float32)
    return positions, buckets, signs


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) a tensor is sketched as: first dimension x everything else."""
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols
