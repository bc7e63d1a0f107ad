"""Estimator test layers through the production sketch (issue 16): the synthetic families of
:mod:`sdforensics.synth.estimate_layers` fingerprinted by the production
:class:`~sdforensics.fingerprinting.fingerprint.Fingerprinter` and turned into fit layers by
:func:`sdforensics.api.fit_layers`, as ``sdf analyze`` does with fingerprint files."""

from __future__ import annotations

import numpy as np

from sdforensics.synth.estimate_layers import Family

_PRINTS: dict[tuple[int, str], object] = {}
BLOCK_BUDGET = 4096
"""CountSketch buckets per block for these families. Each of their blocks holds one 13k-205k value
layer (an SD1.5 block holds millions), so the default budget would store them exactly; 4,096 keeps
every layer sketched, 3x to 50x smaller, as real layers are."""


def production_print(fam: Family, tensors: list[np.ndarray]):  # noqa: ANN202
    """The production fingerprint (:class:`~sdforensics.fingerprinting.fingerprint.Fingerprinter`:
    CountSketch, two-sided sketch, coordinate samples) of one model's layers."""
    import torch

    from sdforensics.fingerprinting.fingerprint import Fingerprinter, Scheme
    from sdforensics.readers.base import TensorInfo

    fper = Fingerprinter(Scheme(block_budget=BLOCK_BUDGET), device="cpu")
    blocks = {s.key: s.block for s in fam.specs}
    fper.prepare({s.key: s.shape for s in fam.specs}, blocks.get)
    for s, t in zip(fam.specs, tensors, strict=True):
        x = torch.from_numpy(np.ascontiguousarray(t))
        fper.consume(s.key, TensorInfo(s.key, s.shape, "F32" if x.dtype == torch.float32 else "F16", x.nbytes), x)
    return fper.result({"family": "sd1"})


def production_layers(fam: Family, make, dtype=None) -> list:  # noqa: ANN001
    """What the estimator sees of a target built by ``make``, through the production sketch and
    :func:`sdforensics.api.fit_layers` (as ``sdf analyze`` builds it from fingerprint files)."""
    from sdforensics.api import fit_layers

    refs = []
    for name in fam.names:
        key = (id(fam), name)
        if key not in _PRINTS:
            _PRINTS[key] = production_print(fam, fam.tensors[name])
        refs.append(_PRINTS[key])
    target = []
    for i in range(len(fam.specs)):
        t = np.asarray(make(i, fam.tensors))
        target.append((t.astype(dtype) if dtype is not None else t).astype(np.float32))
    rows = [(s.key, s.block, s.component) for s in fam.specs]
    return fit_layers(production_print(fam, target), refs, rows)


