"""Least-squares machinery behind the recipe estimate.

Everything works on per-layer normal equations in *delta space* around a pivot reference:
for layer ``l`` with target delta ``y_l`` (rows of the sketch) and candidate columns ``X_l``
(one column per reference delta, or per LoRA delta), we keep ``X_l^T X_l``, ``X_l^T y_l`` and
``y_l^T y_l``. Sums of these give the whole-model fit, sums over a block give the block fit, and
leaving one layer out gives the jackknife. No I/O, no printing, deterministic.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> xs = [rng.normal(size=(50, 3)) for _ in range(4)]
>>> ys = [x @ np.array([0.5, 0.0, 0.25]) for x in xs]
>>> g = build_grams(ys, xs)
>>> forward_select(g, range(3))
(0, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_RIDGE = 1e-12


@dataclass(frozen=True)
class Grams:
    """Per-layer normal equations: ``gram[l] = X_l^T X_l``, ``cross[l] = X_l^T y_l``."""

    gram: np.ndarray  # (L, p, p)
    cross: np.ndarray  # (L, p)
    yy: np.ndarray  # (L,)
    rows: np.ndarray  # (L,) sketch rows per layer

    def subset(self, mask: np.ndarray) -> Grams:
        """The layers selected by a boolean mask."""
        return Grams(self.gram[mask], self.cross[mask], self.yy[mask], self.rows[mask])


@dataclass(frozen=True)
class Fit:
    """Least-squares fit on a set of columns, with a 95%-interval-ready covariance."""

    columns: tuple[int, ...]
    coef: np.ndarray  # (s,)
    cov: np.ndarray  # (s, s)
    rss: float
    yy: float

    @property
    def unexplained(self) -> float:
        """||residual|| / ||y||; 0 when y is 0."""
        return float(np.sqrt(self.rss / self.yy)) if self.yy > 0 else 0.0


def build_grams(ys: Sequence[np.ndarray], xs: Iterable[np.ndarray]) -> Grams:
    """Normal equations of each layer; ``xs`` yields (rows, p) per layer, ``ys[l]`` is (rows,).

    ``xs`` may be a generator, so a whole model's design never sits in memory at once.
    """
    n = len(ys)
    gram_l, cross_l = [], []
    yy = np.zeros(n)
    rows = np.zeros(n)
    for i, (y, x) in enumerate(zip(ys, xs, strict=True)):
        gram_l.append(x.T @ x)
        cross_l.append(x.T @ y)
        yy[i] = float(y @ y)
        rows[i] = y.shape[0]
    p = gram_l[0].shape[0] if gram_l else 0
    gram = np.stack(gram_l) if gram_l else np.zeros((0, p, p))
    cross = np.stack(cross_l) if cross_l else np.zeros((0, p))
    return Grams(gram, cross, yy, rows)


def _solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Solve ``gram @ w = cross`` (batched), with a tiny ridge so absent columns give 0."""
    diag = np.diagonal(gram, axis1=-2, axis2=-1)
    scale = np.maximum(diag.max(axis=-1, keepdims=True), 1e-300)
    ridge = _RIDGE * scale[..., None] * np.eye(gram.shape[-1])
    return np.linalg.solve(gram + ridge, cross[..., None])[..., 0]


def _rss(gram: np.ndarray, cross: np.ndarray, yy: float, coef: np.ndarray) -> float:
    return float(max(yy - 2.0 * coef @ cross + coef @ gram @ coef, 0.0))


def fit_columns(g: Grams, columns: Sequence[int], jackknife: bool = True) -> Fit:
    """OLS on ``columns`` over all layers of ``g``; covariance = max(OLS, layer jackknife).

    The OLS covariance assumes independent sketch rows; the jackknife over layers catches a
    residual that is structured (further training, an unknown ingredient) or layers that
    disagree. The larger of the two (by trace) is kept.
    """
    cols = tuple(int(c) for c in columns)
    yy = float(g.yy.sum())
    if not cols:
        return Fit((), np.zeros(0), np.zeros((0, 0)), yy, yy)
    idx = np.array(cols)
    gram_l = g.gram[:, idx[:, None], idx[None, :]]
    cross_l = g.cross[:, idx]
    gram = gram_l.sum(axis=0)
    cross = cross_l.sum(axis=0)
    coef = _solve(gram, cross)
    rss = _rss(gram, cross, yy, coef)
    s = len(cols)
    dof = max(float(g.rows.sum()) - s, 1.0)
    inv = np.linalg.pinv(gram + _RIDGE * max(float(np.diag(gram).max()), 1e-300) * np.eye(s))
    cov = rss / dof * inv
    n_layers = gram_l.shape[0]
    if jackknife and n_layers >= 3:
        loo = _solve(gram[None] - gram_l, cross[None] - cross_l)
        dev = loo - loo.mean(axis=0)
        cov_j = (n_layers - 1) / n_layers * dev.T @ dev
        if np.trace(cov_j) > np.trace(cov):
            cov = cov_j
    return Fit(cols, coef, cov, rss, yy)


def forward_select(
    g: Grams,
    candidates: Iterable[int],
    forced: Sequence[int] = (),
    min_rel_gain: float = 0.01,
    min_abs_gain: float = 1e-4,
    max_terms: int = 8,
) -> tuple[int, ...]:
    """Stepwise (OMP-like) choice of the few columns that explain ``y``.

    A column enters when it removes at least ``min_rel_gain`` of the residual energy left and
    at least ``min_abs_gain`` of ``||y||^2``. With many sketch rows, a column unrelated to the
    target removes about 1/rows of the residual, far below the 1% threshold, while a real
    ingredient at weight 0.03 or more removes most of what is left. After the forward pass one
    backward pass drops any column whose removal costs less than the same threshold.
    """
    gram = g.gram.sum(axis=0)
    cross = g.cross.sum(axis=0)
    yy = float(g.yy.sum())
    chosen = [int(c) for c in forced]
    pool = [int(c) for c in candidates if int(c) not in chosen]
    if yy <= 0:
        return tuple(chosen)

    def rss_of(cols: list[int]) -> float:
        if not cols:
            return yy
        idx = np.array(cols)
        sub_g = gram[np.ix_(idx, idx)]
        sub_c = cross[idx]
        return _rss(sub_g, sub_c, yy, _solve(sub_g, sub_c))

    current = rss_of(chosen)
    while pool and len(chosen) < max_terms:
        trials = [(rss_of(chosen + [c]), c) for c in pool if gram[c, c] > 0]
        if not trials:
            break
        best_rss, best = min(trials)
        gain = current - best_rss
        if gain < min_rel_gain * current or gain < min_abs_gain * yy:
            break
        chosen.append(best)
        pool.remove(best)
        current = best_rss
    # backward pass: drop a column that no longer pulls its weight
    changed = True
    while changed and len(chosen) > len(forced):
        changed = False
        for c in chosen[len(forced) :]:
            rest = [x for x in chosen if x != c]
            loss = rss_of(rest) - current
            if loss < min_rel_gain * rss_of(rest) or loss < min_abs_gain * yy:
                chosen = rest
                current = rss_of(chosen)
                changed = True
                break
    return tuple(chosen)


def column_cosines(g: Grams) -> np.ndarray:
    """Cosine between every pair of columns over all layers (delta cosine of references)."""
    gram = g.gram.sum(axis=0)
    d = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    return np.asarray(gram / d[:, None] / d[None, :])


def vif(g: Grams, columns: Sequence[int]) -> np.ndarray:
    """Variance inflation factor of each column within ``columns`` (1 = orthogonal)."""
    if not columns:
        return np.zeros(0)
    idx = np.array(columns)
    gram = g.gram.sum(axis=0)[np.ix_(idx, idx)]
    inv = np.linalg.pinv(gram)
    return np.asarray(np.diag(inv) * np.diag(gram))
