"""Merges made with sd-mecha (an independent merger), shared by ``bench/recipes.py`` and ``bench/nonlinear.py``.

Every function takes checkpoint paths and writes one safetensors file. What sd-mecha 1.1.8 calls
each operation (read from ``site-packages/sd_mecha``):

* weighted sum ``(1 - alpha) A + alpha B``: ``weighted_sum(a, b, alpha=alpha)``;
* add difference ``A + m (B - C)``: ``add_difference(a, b, c, alpha=m)`` (the public wrapper);
* SuperMerger block weights: a literal dict of the 26 ids ``BASE, IN00..IN11, M00, OUT00..OUT11``
  in the ``sd1-supermerger_blocks`` config, converted to ``sd1-ldm`` keys with ``sd_mecha.convert``
  (``convert_sd1_blocks_to_ldm``: time_embed and every non-UNet key -- text encoder *and* VAE --
  take ``BASE``; ``out.`` takes OUT11), then used as ``alpha`` of ``weighted_sum``;
* component swap: ``pick_component(x, "diffuser" | "clip_l" | "vae")`` joined with ``fallback``;
* TIES: ``add_difference(base, ties_sum(subtract(m_i, base)..., k=k), alpha=alpha)``;
* DARE: ``add_difference(base, dropout(deltas..., probability=p, seed=s), alpha=alpha)``;
* DARE-TIES: ``add_difference(base, ties_sum_with_dropout(deltas..., probability=p, k=k, seed=s), alpha)``
  (the raw merge methods of ``merge_methods.linear`` / ``.ties``; ``k`` is the share *kept*).

sd-mecha reads the model config from the keys; it does not check shapes, so reduced-width
synthetic files merge as well. When sd-mecha is missing or fails, the callers fall back to
sdforensics' own formulas (:mod:`sdforensics.synth.specs`) and say so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

SD1_BLOCKS = ("BASE", *(f"IN{i:02d}" for i in range(12)), "M00", *(f"OUT{i:02d}" for i in range(12)))

_THREADS = 1


def set_threads(n: int) -> None:
    global _THREADS
    _THREADS = max(1, int(n))


def available() -> bool:
    try:
        import sd_mecha  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means: use the fallback
        return False
    return True


class _NoBar:
    """A silent stand-in for tqdm (sd-mecha prints one progress line per key otherwise)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def update(self, *args: object, **kwargs: object) -> None:
        pass

    def set_postfix(self, *args: object, **kwargs: object) -> None:
        pass

    def close(self) -> None:
        pass


def _mecha():  # noqa: ANN202 - the module
    import sd_mecha

    logging.getLogger("sd_mecha").setLevel(logging.WARNING)
    return sd_mecha


def _write(recipe: object, out: Path, dtype: torch.dtype = torch.float16) -> Path:
    sd_mecha = _mecha()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.safetensors")
    sd_mecha.merge(recipe, output=tmp, output_dtype=dtype, threads=_THREADS, tqdm=_NoBar)
    tmp.replace(out)
    return out


def _m(path: Path | str):  # noqa: ANN202 - a recipe node
    return _mecha().model(str(path))


def weighted_sum(a: Path, b: Path, alpha: float, out: Path) -> Path:
    """``(1 - alpha) A + alpha B``."""
    return _write(_mecha().weighted_sum(_m(a), _m(b), alpha=alpha), out)


def add_difference(a: Path, b: Path, c: Path, alpha: float, out: Path) -> Path:
    """``A + alpha (B - C)``."""
    return _write(_mecha().add_difference(_m(a), _m(b), _m(c), alpha=alpha), out)


def block_alpha(blocks: Mapping[str, float]):  # noqa: ANN201 - a recipe node
    """SuperMerger's 26 block weights as an sd1-ldm alpha (sd-mecha's own conversion)."""
    sd = _mecha()
    missing = [b for b in SD1_BLOCKS if b not in blocks]
    if missing:
        raise ValueError(f"block weights missing for {missing}")
    lit = sd.literal({b: float(blocks[b]) for b in SD1_BLOCKS}, "sd1-supermerger_blocks")
    return sd.convert(lit, "sd1-ldm")


def block_weighted_sum(a: Path, b: Path, blocks: Mapping[str, float], out: Path) -> Path:
    """Per block ``(1 - alpha_b) A + alpha_b B`` (SuperMerger's "weight sum" with MBW)."""
    return _write(_mecha().weighted_sum(_m(a), _m(b), alpha=block_alpha(blocks)), out)


def component_swap(unet: Path, text_encoder: Path, vae: Path, out: Path) -> Path:
    """UNet from one file, text encoder from another, VAE from a third."""
    sd = _mecha()
    recipe = sd.fallback(
        sd.pick_component(_m(unet), "diffuser"),
        sd.fallback(sd.pick_component(_m(text_encoder), "clip_l"), sd.pick_component(_m(vae), "vae")),
    )
    return _write(recipe, out)


def resave(path: Path, out: Path, dtype: torch.dtype) -> Path:
    """The same model written again in ``dtype`` (what a user's "save as bf16" does)."""
    return _write(_m(path), out, dtype)


def _methods():  # noqa: ANN202 - (linear, ties) merge-method modules
    _mecha()
    from sd_mecha.extensions.builtin.merge_methods import linear, ties

    return linear, ties


def _deltas(models: Sequence[Path], base: Path) -> list[object]:
    linear, _ = _methods()
    b = _m(base)
    return [linear.subtract(_m(p), b) for p in models]


def _on_base(base: Path, delta: object, alpha: float) -> object:
    # the raw merge method: sd_mecha.add_difference (the wrapper) compares merge spaces and
    # fails in 1.1.8 when B is the output of a variadic delta method (its space is unsolved yet)
    linear, _ = _methods()
    return linear.add_difference(_m(base), delta, alpha=alpha)


def ties(models: Sequence[Path], base: Path, k: float, out: Path, alpha: float = 1.0) -> Path:
    """TIES: each delta keeps its top-k share, signs elected, agreeing deltas averaged."""
    _, t = _methods()
    return _write(_on_base(base, t.ties_sum(*_deltas(models, base), k=k), alpha), out)


def dare(models: Sequence[Path], base: Path, p: float, seed: int, out: Path, alpha: float = 1.0) -> Path:
    """DARE (sd-mecha's ``dropout``, aka n-supermario): drop with probability p, rescale 1/(1-p)."""
    _, t = _methods()
    return _write(_on_base(base, t.dropout(*_deltas(models, base), probability=p, seed=seed), alpha), out)


def dare_ties(
    models: Sequence[Path],
    base: Path,
    p: float,
    k: float,
    seed: int,
    out: Path,
    alpha: float = 1.0,
    apply_stock: bool = False,
) -> Path:
    """DARE-TIES (``ties_sum_with_dropout``): dropout with probability p, then TIES with top-k.

    In sd-mecha 1.1.8 the default ``apply_stock=False`` *does* multiply each row by the model-stock
    factor ``t = n cos / (1 + (n - 1) cos)`` of the kept deltas (``t = 1`` only with
    ``apply_stock=True``), so the default output is DARE-TIES with a per-row shrink."""
    _, t = _methods()
    delta = t.ties_sum_with_dropout(*_deltas(models, base), probability=p, k=k, seed=seed, apply_stock=apply_stock)
    return _write(_on_base(base, delta, alpha), out)
