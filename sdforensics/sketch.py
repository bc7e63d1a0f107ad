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


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) a tensor is sketched as: first dimension x everything else."""
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    return rows, cols
