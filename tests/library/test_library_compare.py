"""A library read a batch at a time gives the same similarity as all references at once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sdforensics.fingerprinting.fingerprint import Fingerprint
from sdforensics.fingerprinting.fpfile import load_fingerprint
from sdforensics.fingerprinting.similarity import similarity
from sdforensics.library import search as library_compare
from sdforensics.library.store import Library, reference_entries
from sdforensics.model.architecture import architecture, block_maps

FIELDS = ("layer_delta", "layer_raw", "block_delta", "block_raw", "overall_delta", "overall_raw")


def _noisy(fp: Fingerprint, seed: int, drop: str | None = None) -> Fingerprint:
    """``fp`` with independent noise added to every sketch (an unrelated fine-tune), less ``drop``."""
    rng = np.random.default_rng(seed)
    prints = {}
    for name, t in fp.tensors.items():
        if name == drop:
            continue
        scale = 0.01 * (np.abs(t.values).mean() + 1e-12)
        prints[name] = replace(
            t,
            values=t.values + scale * rng.standard_normal(t.values.shape),
            sample=None if t.sample is None else t.sample + scale * rng.standard_normal(t.sample.shape),
            digest="",
        )
    return Fingerprint(fp.scheme, dict(fp.identity), prints)


@pytest.mark.parametrize("drop", [None, "model.diffusion_model.out.2.weight"])
def test_batches_give_the_same_similarity_as_one_pass(
    family_prints: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: str | None
) -> None:
    """Twenty references in batches of four: the same cosines, in library order, as comparing all
    at once; with one reference lacking a layer, that layer leaves every reference's cosines, as
    it does in one pass. Only the base and the references pointing the target's way stay loaded."""
    monkeypatch.setattr(library_compare, "BATCH", 4)
    lib = Library(tmp_path / "lib")
    prints = {n: family_prints[n] for n in ("base", "ft1", "ft2", "ft3")}
    target = family_prints["ft6"]  # a child of ft1
    for i in range(20):
        if i == 7:
            name, fp = "base", prints["base"]
        elif i in (3, 12, 16):
            name = {3: "ft1", 12: "ft2", 16: "ft3"}[i]
            fp = prints[name]
        else:
            name, fp = f"other{i:02d}", _noisy(prints["base"], i, drop if i == 10 else None)
        lib.add(fp, name, official=name == "base")
    arch, blocks = architecture("sd1"), block_maps()["sd1"]
    found = library_compare.compare_with_library(
        target, reference_entries([lib.folder], "sd1"), "sd1", arch, blocks, keep=15
    )
    entries = reference_entries([lib.folder], "sd1")
    names = [e.name for e in entries]  # library order
    once = similarity(target, [load_fingerprint(e.path) for e in entries], names, names.index("base"), arch, blocks)
    assert found.similarity is not None and found.similarity.references == tuple(names)
    assert found.base == names.index("base") and [n for n, _ in found.component_hashes] == names
    dropped = "model.diffusion_model.out.2.weight"
    assert (dropped in {row.key for row in once.layers}) == (drop is None)
    assert found.similarity.layers == once.layers
    for field in FIELDS:  # equal up to summation order (BLAS blocks a 5-row stack unlike a 20-row one)
        np.testing.assert_allclose(
            getattr(found.similarity, field), getattr(once, field), rtol=1e-6, atol=1e-9, equal_nan=True
        )
    pointing = {n for j, n in enumerate(names) if abs(np.nan_to_num(once.overall_delta[j])) >= 0.02}
    assert "ft1" in pointing and set(found.loaded) == pointing | {"base"}
    seen: list[tuple[int, int]] = []
    few = library_compare.compare_with_library(
        target, entries, "sd1", arch, blocks, keep=1, progress=lambda done, total: seen.append((done, total))
    )
    assert set(few.loaded) == {"base", "ft1"}  # only the most similar stays beside the base
    total = sum(e.path.stat().st_size for e in entries)  # progress: bytes of fingerprints read, to the end
    assert len(seen) == 20 and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_bar_rate_starts_at_the_first_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar made before a long first phase (the compare bar waits for the fingerprint pass) shows
    no made-up rate: none from an instant, then bytes over the time since its first report."""
    import io

    from sdforensics.core import progress

    clock = iter([100.0, 100.05, 102.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = progress.ProgressBar("compare", enabled=True, stream=out)
    bar(10_000_000, 40_000_000)
    assert out.getvalue().endswith("25%" + " " * 13)  # no rate yet
    bar(20_000_000, 40_000_000)  # 0.05 s later: drawn at most ~10 times a second, so skipped
    bar(40_000_000, 40_000_000)
    assert out.getvalue().endswith("100%      20 MB/s")
    bar.close()
    assert out.getvalue().endswith("\r")
