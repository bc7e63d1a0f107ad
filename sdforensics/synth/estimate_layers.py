"""Small synthetic model families to exercise and demo the recipe estimator.

A family is a base (random weights per layer, one 2-D weight and one bias per SuperMerger block),
fine-tunes (base + structured delta: a shared low-rank direction, an own low-rank part and dense
noise, about 3% of the weight's norm) and children of fine-tunes (parent + a smaller delta).
Fingerprints are made here with an explicit two-sided Gaussian sketch ``G^T W R`` (k x k, with
``E||G^T W R||^2 = ||W||^2``), biases kept exact, and exact values at fixed sample coordinates:
the same contract as :class:`sdforensics.recipe.estimate.LayerData`. Widths are a quarter of SD1.5's so
a family of ten models fits in about 100 MB and a second.

>>> fam = make_family({"A": None, "B": None}, seed=0)
>>> layers = fingerprint(fam, lambda i, t: 0.5 * t["A"][i] + 0.5 * t["B"][i])
>>> len(layers), layers[0].refs.shape[0]
(54, 3)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from sdforensics.recipe.estimate import LayerData, supermerger_blocks

_CHANNELS = {  # SD1.5 UNet width per block, divided by 4
    "BASE": 192,
    "IN00": 80,
    "IN01": 80,
    "IN02": 80,
    "IN03": 80,
    "IN04": 160,
    "IN05": 160,
    "IN06": 160,
    "IN07": 320,
    "IN08": 320,
    "IN09": 320,
    "IN10": 320,
    "IN11": 320,
    "M00": 320,
    "OUT00": 320,
    "OUT01": 320,
    "OUT02": 320,
    "OUT03": 320,
    "OUT04": 320,
    "OUT05": 320,
    "OUT06": 160,
    "OUT07": 160,
    "OUT08": 160,
    "OUT09": 80,
    "OUT10": 80,
    "OUT11": 80,
    "VAE": 128,
}


@dataclass(frozen=True)
class LayerSpec:
    key: str
    block: str
    component: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Family:
    """Reference tensors (float32) per model, with their fingerprints precomputed."""

    specs: tuple[LayerSpec, ...]
    names: tuple[str, ...]  # library order, base first
    tensors: Mapping[str, list[np.ndarray]]  # every model made, library or not
    sketch_g: tuple[np.ndarray | None, ...]
    sketch_r: tuple[np.ndarray | None, ...]
    sample_idx: tuple[np.ndarray, ...]
    k: int
    cache: dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> (ref sketches, ref samples)


def layer_specs(narrow: int = 1) -> tuple[LayerSpec, ...]:
    """One 2-D weight (c x 2c) and one bias per SuperMerger block of SD1.5, plus the VAE.

    ``c`` is a quarter of SD1.5's width, divided further by ``narrow``."""
    out = []
    for blk in (*supermerger_blocks(["IN11"]), "VAE"):
        comp = "text_encoder" if blk == "BASE" else "vae" if blk == "VAE" else "unet"
        c = _CHANNELS[blk] // narrow
        out.append(LayerSpec(f"{blk.lower()}.proj.weight", blk, comp, (c, 2 * c)))
        out.append(LayerSpec(f"{blk.lower()}.proj.bias", blk, comp, (c,)))
    return tuple(out)


def _norm(x: np.ndarray) -> float:
    """L2 norm without BLAS (tiny BLAS calls crawl when the thread pool is contended)."""
    return float(np.sqrt(np.square(x, dtype=np.float64).sum()))


def _delta(rng: np.random.Generator, w: np.ndarray, shared: np.ndarray, size: float) -> np.ndarray:
    if w.ndim == 1:
        d = rng.standard_normal(w.shape) + shared
    else:
        r = 6
        own = rng.standard_normal((w.shape[0], r)) @ rng.standard_normal((r, w.shape[1]))
        noise = rng.standard_normal(w.shape)
        own *= _norm(noise) / _norm(own)
        d = (own + noise) / np.sqrt(2.0) + shared
    return np.asarray(d / _norm(d) * size * _norm(w))


def make_family(
    finetunes: Mapping[str, str | None],
    seed: int = 0,
    k: int = 32,
    samples: int = 512,
    held_out: tuple[str, ...] = (),
    own_vae: tuple[str, ...] | None = None,
    delta_size: float = 0.03,
    child_size: float = 0.3,
    narrow: int = 1,
) -> Family:
    """A base plus fine-tunes (``name -> parent``; None = from the base), in that order.

    ``held_out`` models are made but left out of the library; ``own_vae`` lists the models whose
    VAE differs from their parent's (default: all).
    """
    rng = np.random.default_rng(seed)
    specs = layer_specs(narrow)
    base = []
    for s in specs:
        fan_in = s.shape[-1]
        scale = 1.0 / np.sqrt(fan_in) if len(s.shape) == 2 else 0.02
        base.append((rng.standard_normal(s.shape) * scale).astype(np.float32))
    tensors: dict[str, list[np.ndarray]] = {"base": base}
    shared = [rng.standard_normal(s.shape) * 0.4 for s in specs]
    for name, parent in finetunes.items():
        src = tensors[parent or "base"]
        size = delta_size * (child_size if parent else 1.0)
        made = []
        for i, (s, w) in enumerate(zip(specs, src, strict=True)):
            if s.component == "vae" and own_vae is not None and name not in own_vae:
                made.append(w.copy())
                continue
            sh = shared[i] * (0.0 if parent else 1.0)
            made.append((w + _delta(rng, w, sh, size)).astype(np.float32))
        tensors[name] = made
    names = ("base",) + tuple(n for n in finetunes if n not in held_out)
    gs: list[np.ndarray | None] = []
    rs: list[np.ndarray | None] = []
    idx = []
    for s in specs:
        srng = np.random.default_rng(zlib.crc32(s.key.encode()))
        if len(s.shape) == 2:
            gs.append(srng.standard_normal((s.shape[0], k)) / np.sqrt(k))
            rs.append(srng.standard_normal((s.shape[1], k)) / np.sqrt(k))
        else:
            gs.append(None)
            rs.append(None)
        n = int(np.prod(s.shape))
        idx.append(np.sort(srng.choice(n, size=min(samples, n), replace=False)))
    return Family(specs, names, tensors, tuple(gs), tuple(rs), tuple(idx), k, {})


def sketch(fam: Family, i: int, x: np.ndarray) -> np.ndarray:
    """The fingerprint sketch of layer ``i``'s tensor ``x`` (flattened)."""
    g, r = fam.sketch_g[i], fam.sketch_r[i]
    x64 = np.asarray(x, dtype=np.float64)
    if g is None or r is None:
        return x64.ravel().copy()
    return np.asarray((g.T @ x64 @ r).ravel())


def fingerprint(
    fam: Family,
    make_target: Callable[[int, Mapping[str, list[np.ndarray]]], np.ndarray],
    target_dtype: type | None = None,
) -> list[LayerData]:
    """LayerData of a target built layer by layer by ``make_target(i, tensors)``.

    ``target_dtype`` (e.g. ``np.float16``) rounds the target's full tensors before sketching,
    as a re-save would.
    """
    out = []
    for i, s in enumerate(fam.specs):
        t = np.asarray(make_target(i, fam.tensors))
        if target_dtype is not None:
            t = t.astype(target_dtype)
        t64 = t.astype(np.float64)
        idx = fam.sample_idx[i]
        if i not in fam.cache:
            fam.cache[i] = (
                np.stack([sketch(fam, i, fam.tensors[n][i]) for n in fam.names]),
                np.stack([fam.tensors[n][i].astype(np.float64).ravel()[idx] for n in fam.names]),
            )
        refs, ref_samples = fam.cache[i]
        out.append(
            LayerData(
                key=s.key,
                block=s.block,
                component=s.component,
                target=sketch(fam, i, t64),
                refs=refs,
                sample_target=t64.ravel()[idx],
                sample_refs=ref_samples,
                sketch2d=(fam.k, fam.k) if len(s.shape) == 2 else None,
                numel=int(np.prod(s.shape)),
            )
        )
    return out


def demo_layers(recipe: Mapping[str, float], seed: int = 0) -> tuple[list[LayerData], list[str]]:
    """Fingerprints of ``sum_i w_i M_i`` over a family of base + fine-tunes A, B, C."""
    fam = make_family({"A": None, "B": None, "C": None}, seed=seed)

    def target(i: int, t: Mapping[str, list[np.ndarray]]) -> np.ndarray:
        return np.asarray(sum(w * t[n][i].astype(np.float64) for n, w in recipe.items()))

    return fingerprint(fam, target), list(fam.names)
