"""Low-precision re-saves (fp8, bf16): proof from the exact coordinate samples, and the rounding
noise a coarse format adds (pure math, no I/O).

A model re-saved in fp8 is a copy, but its rounding noise (e4m3 keeps 3 mantissa bits: an error
of ~2% of each value) is as large as the change a fine-tune makes, so the sketch fit alone reads it
as a fine-tune or a block-weighted merge with most of it unexplained. The exact coordinate samples
settle it: rounding a reference's sampled values to the file's format reproduces the file's values
when, and only when, the file is that reference re-saved (a fine-tune moves most values by more than
half a step of the coarse format; measured at 1/16 width: 99.8% of the samples of an e4m3 re-save
match its source, at most ~60% match any other model of the family).

>>> import numpy as np
>>> ref = np.array([[0.1, -0.37, 1.3], [0.11, -0.35, 1.2]])
>>> target = to_format(ref[0], "F8_E4M3")
>>> sample_matches([target], [ref], "F8_E4M3")
(array([3., 1.]), 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from sdforensics.core.dtypes import DTYPES
from sdforensics.recipe.results import RecipeEstimate, Weight

COARSE = {"F8_E4M3": "fp8 e4m3fn", "F8_E5M2": "fp8 e5m2", "BF16": "bf16"}
"""Stored formats coarser than fp16 whose re-saves the content hashes cannot see (name shown)."""
MANTISSA_BITS = {"F8_E4M3": 3, "F8_E5M2": 2, "BF16": 7}
RESAVE_MATCH = 0.99
"""Share of sampled values a reference rounded to the file's format must reproduce exactly."""
MIN_SAMPLES = 1000


class _Layer(Protocol):
    """What this module reads of a recipe layer (:class:`sdforensics.recipe.estimate.LayerData`)."""

    @property
    def target(self) -> np.ndarray: ...
    @property
    def refs(self) -> np.ndarray: ...
    @property
    def sample_target(self) -> np.ndarray: ...
    @property
    def sample_refs(self) -> np.ndarray: ...
    @property
    def numel(self) -> int: ...


@dataclass(frozen=True)
class Resave:
    """The file is ``reference`` re-saved in ``dtype``: ``matched`` of ``n_samples`` exact values
    reproduce it; ``runner_up`` is the next best reference and its share."""

    reference: str
    dtype: str
    matched: float
    n_samples: int
    runner_up: str | None
    runner_up_matched: float
    also: tuple[str, ...] = ()
    """Other references that match as well (copies of one model in the library)."""

    @property
    def note(self) -> str:
        other = f"; the next best, {self.runner_up}, {self.runner_up_matched:.0%}" if self.runner_up else ""
        also = f"; {', '.join(self.also)} match as well (the same model)" if self.also else ""
        return (
            f"a re-save of {self.reference} in {COARSE.get(self.dtype, self.dtype)}: {self.matched:.1%} of "
            f"{self.n_samples:,} exactly sampled values are {self.reference}'s rounded to "
            f"{COARSE.get(self.dtype, self.dtype)}{other}{also}"
        )


def to_format(values: np.ndarray, code: str) -> np.ndarray:
    """``values`` rounded to float format ``code`` (round to nearest even, as torch casts), as float64."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    return t.to(DTYPES[code].torch_dtype).to(torch.float64).numpy()


def dominant_dtype(dtypes: Mapping[str, int]) -> str | None:
    """The float format holding most of a model's values (dtype code -> values)."""
    floats = {k: v for k, v in dtypes.items() if k in DTYPES and DTYPES[k].is_float}
    return max(floats, key=lambda k: floats[k]) if floats else None


def sample_matches(
    targets: Sequence[np.ndarray], refs: Sequence[np.ndarray], code: str
) -> tuple[np.ndarray, int]:
    """Per reference, how many of the target's exact values equal the reference's rounded to ``code``
    (``refs[l]``: references x values of layer ``l``), and how many values were compared."""
    hits = np.zeros(refs[0].shape[0] if refs else 0)
    total = 0
    for t, r in zip(targets, refs, strict=True):
        if not t.size:
            continue
        near = to_format(r, code)
        # a reference value that lies exactly half-way between two steps (it was rounded once already,
        # to fp16) may have gone either way when the original was rounded: both count
        other = 2.0 * r - near
        tie = (near != r) & (to_format(other, code) == other)
        hits += ((near == t[None, :]) | (tie & (other == t[None, :]))).sum(axis=1)
        total += t.size
    return hits, total


def _exact_values(layers: Sequence[_Layer]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each layer's exactly known values: the coordinate sample, or the values of a tensor stored whole."""
    targets, refs = [], []
    for la in layers:
        if la.sample_target.size:
            targets.append(la.sample_target)
            refs.append(la.sample_refs)
        elif la.target.size == la.numel:  # stored exactly (no sketch, no structure)
            targets.append(la.target)
            refs.append(la.refs)
    return targets, refs


def find_resave(layers: Sequence[_Layer], names: Sequence[str], code: str) -> Resave | None:
    """The reference this model is a re-save of in format ``code``, proven by exact values; None
    when no reference reproduces them."""
    targets, refs = _exact_values(layers)
    if not targets:
        return None
    hits, total = sample_matches(targets, refs, code)
    if total < MIN_SAMPLES:
        return None
    share = hits / total
    order = np.argsort(-share)
    best = int(order[0])
    if share[best] < RESAVE_MATCH:
        return None
    also = tuple(names[i] for i in order[1:] if share[i] >= RESAVE_MATCH)
    rest = [int(i) for i in order[1:] if share[i] < RESAVE_MATCH]
    runner = rest[0] if rest else None
    return Resave(
        names[best], code, float(share[best]), total,
        names[runner] if runner is not None else None, float(share[runner]) if runner is not None else 0.0, also,
    )


def rounding_noise(layers: Sequence[_Layer], code: str) -> float:
    """Expected energy (sum of squares over all values) of the error rounding to ``code`` adds: per
    value a uniform error over one step, step^2 / 12, the step read off the exactly known values and
    scaled to each layer's size."""
    bits = MANTISSA_BITS.get(code)
    if bits is None:
        return 0.0
    total = 0.0
    for la in layers:
        v = la.sample_target if la.sample_target.size else (la.target if la.target.size == la.numel else None)
        if v is None or not v.size:
            continue
        a = np.abs(v[np.isfinite(v)])
        a = a[a > 0]
        if not a.size:
            continue
        step = 2.0 ** (np.floor(np.log2(a)) - bits)
        total += float(np.mean(step**2) / 12.0) * la.numel * a.size / v.size
    return total


def apply_precision(
    est: RecipeEstimate, layers: Sequence[_Layer], names: Sequence[str], pivot: int, code: str | None
) -> RecipeEstimate:
    """The estimate of a model stored in a coarse format ``code``, corrected: a proven re-save is a
    copy of its source; otherwise the unexplained share leaves out the rounding noise the format adds
    (noted with its size). Unchanged for fp16/fp32 files."""
    if code not in COARSE:
        return est
    found = find_resave(layers, names, code)
    if found is not None:
        return replace(
            est,
            kind="copy",
            copy_of=found.reference,
            weights=(Weight(found.reference, 1.0, (1.0, 1.0)),),
            unexplained=0.0,
            ambiguous=(),
            loras=(),
            elementwise=None,
            supermerger=None,
            notes=(*est.notes, found.note),
        )
    noise = rounding_noise(layers, code)
    energy = sum(float(np.sum((la.target - la.refs[pivot]) ** 2)) for la in layers)
    if noise <= 0 or energy <= 0:
        return est
    resid = est.unexplained**2 * energy
    corrected = float(np.sqrt(max(resid - noise, 0.0) / max(energy - noise, 1e-300)))
    note = (
        f"stored in {COARSE[code]}: its rounding adds noise of about {np.sqrt(noise / energy):.0%} of the change "
        f"from {names[pivot]}; the unexplained share leaves it out ({est.unexplained:.0%} with it)"
    )
    return replace(est, unexplained=min(corrected, est.unexplained), notes=(*est.notes, note))
