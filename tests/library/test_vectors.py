"""Candidate selection over search vectors (library/vectors.py): pure math on synthetic changes."""

from __future__ import annotations

import numpy as np

from sdforensics.library.vectors import select_candidates


def test_a_merge_is_found_among_many_merges_of_its_ingredients_trained_further() -> None:
    """A hub holds many models trained from merges like the target: each is more similar to the
    target than either ingredient (cosine ~0.9 against ~0.8), so a greedy pursuit took one of them
    first and then found nothing that explains its training. The pair of ingredients explains the
    target whole and both are among the candidates."""
    rng = np.random.default_rng(3)
    dim, n = 432, 3000
    refs = rng.standard_normal((n, dim)).astype(np.float32)  # unrelated fine-tunes
    a, b = 0, 1
    for i in range(2, 600):  # merges of a and b at 0.5-0.8, trained further
        w = rng.uniform(0.5, 0.8)
        refs[i] = w * refs[a] + (1 - w) * refs[b] + 0.3 * rng.standard_normal(dim)
    order = rng.permutation(n)
    refs = refs[order]
    at_a, at_b = int(np.flatnonzero(order == a)[0]), int(np.flatnonzero(order == b)[0])
    target = 0.65 * refs[at_a] + 0.35 * refs[at_b]
    sel = select_candidates(target, refs, base_norm=100.0, limit=15)
    assert {at_a, at_b} <= set(sel.chosen)
