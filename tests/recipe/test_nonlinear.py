"""TIES / DARE / DARE-TIES detection (merges made with sd-mecha when installed) and LoRA helpers,
through the production fingerprint (tests/estimator_prints.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from estimator_prints import production_layers

from sdforensics.recipe.estimate import estimate_recipe
from sdforensics.recipe.nonlinear import (
    detect_elementwise,
    detect_lowrank,
    estimate_lora_strength,
    numerical_rank,
    top_energy_share_of_noise,
)
from sdforensics.synth.estimate_layers import Family, make_family

torch = pytest.importorskip("torch")
try:
    import sd_mecha
    from sd_mecha.extensions.builtin.merge_methods import ties as mecha_ties
except ImportError:  # pragma: no cover - sd-mecha is a dev dependency
    sd_mecha = None
    mecha_ties = None

N_CASES = 10
POOL = ("A", "B", "C", "D", "E")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors: torch's thread pool only adds contention (8x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fam() -> Family:
    # the whole family width: layers big enough to be sketched and sampled by the production fingerprint
    return make_family({n: None for n in POOL}, seed=21)


def _ties_sum(deltas: list, k: float) -> Any:
    """sd-mecha's ``ties_sum`` (top-k per delta, sign vote by count, disjoint mean)."""
    if sd_mecha is not None:
        return sd_mecha.ties_sum.__wrapped__(*deltas, k=k)
    kept = []
    for d in deltas:
        kth = max(int((1 - k) * d.numel()), 1)
        v = d.flatten().abs().float().kthvalue(kth).values
        kept.append(d * (d.abs() >= v))
    st = torch.stack(kept)
    final = torch.sign(torch.sign(st).sum(0))
    mask = (torch.sign(st) == final).float()
    return torch.nan_to_num((st * mask).sum(0) / mask.sum(0))


def _dropout(deltas: list, p: float, seed: int):
    """sd-mecha's ``dropout`` (DARE: independent drop masks, mean of survivors, / (1 - p))."""
    if mecha_ties is not None:
        return mecha_ties.dropout.__wrapped__(*deltas, probability=p, seed=seed)
    rng = np.random.default_rng(seed)
    masks = [torch.from_numpy(rng.binomial(1, 1 - p, size=tuple(deltas[0].shape))).bool() for _ in deltas]
    out = torch.zeros_like(deltas[0])
    for m, d in zip(masks, deltas, strict=True):
        out[m] += d[m]
    return out / sum(m.to(out.dtype) for m in masks).clamp(1) / (1 - p)


def _dare_ties(deltas: list, p: float, seed: int):
    if mecha_ties is None:
        pytest.skip("sd-mecha not installed")
    return mecha_ties.ties_sum_with_dropout.__wrapped__(*deltas, probability=p, k=1.0, seed=seed)


def _call_p(d: list, fn: Callable[[list, float, int], Any], p: float, seed: int) -> Any:
    return fn(d, p, seed)


def _merge(fam: Family, ings: tuple[str, ...], alpha: float, method: Callable[[list], Any]):
    def make(i, t):
        base = torch.from_numpy(t["base"][i])
        deltas = [torch.from_numpy(t[n][i]) - base for n in ings]
        return (base + alpha * method(deltas)).numpy()

    return production_layers(fam, make)


def _score(fam: Family, method_name: str) -> tuple[int, list[str]]:
    rng = np.random.default_rng({"ties": 1, "dare": 2, "dare_ties": 3}[method_name])
    hits, log = 0, []
    for case in range(N_CASES):
        ings = tuple(sorted(rng.choice(POOL, size=int(rng.integers(2, 4)), replace=False)))
        alpha = float(rng.uniform(0.5, 1.0))
        if method_name == "ties":
            k = float(rng.uniform(0.2, 0.5))
            layers = _merge(fam, ings, alpha, functools.partial(_ties_sum, k=k))
            param = k
        else:
            p = float(rng.uniform(0.7, 0.95))
            fn: Callable[[list, float, int], Any] = _dropout if method_name == "dare" else _dare_ties
            layers = _merge(fam, ings, alpha, functools.partial(_call_p, fn=fn, p=p, seed=case))
            param = p
        est = estimate_recipe(layers, list(fam.names), 0)
        ew = est.elementwise
        want_kind = "ties" if method_name == "ties" else "dare"
        assert ew is not None
        ok = est.kind == want_kind and set(ew.ingredients) == set(ings)
        got = ew.density if method_name == "ties" else ew.drop_rate
        if ok and got is not None and abs(got - param) > 0.1:
            ok = False
        hits += ok
        log.append(f"{ings} {param:.2f} -> {est.kind} {ew and ew.ingredients} {got}")
    return hits, log


@pytest.mark.parametrize("method_name", ["ties", "dare", "dare_ties"])
def test_elementwise_merges_detected(fam, method_name):
    hits, log = _score(fam, method_name)
    assert hits >= 9, "\n".join(log)


def test_linear_merge_is_not_elementwise(fam):
    layers = production_layers(fam, lambda i, t: 0.5 * t["A"][i] + 0.5 * t["B"][i], np.float16)
    est = estimate_recipe(layers, list(fam.names), 0)
    assert est.elementwise is not None and est.elementwise.kind == "linear"
    assert est.kind == "weighted_sum" and est.loras == ()


def test_detect_elementwise_linear_on_raw_samples():
    rng = np.random.default_rng(0)
    b = rng.normal(size=3000)
    a = b + 0.05 * rng.normal(size=3000)
    c = b + 0.05 * rng.normal(size=3000)
    t = (0.4 * a + 0.6 * c).astype(np.float16).astype(np.float64)
    assert detect_elementwise([t], [np.stack([b, a, c])], base=0).kind == "linear"


def test_numerical_rank_and_lowrank():
    rng = np.random.default_rng(2)
    low = rng.normal(size=(32, 6)) @ rng.normal(size=(6, 32))
    full = rng.normal(size=(32, 32))
    assert numerical_rank(low + 1e-5 * full) == 6
    assert numerical_rank(full) is None
    found = detect_lowrank({"a": low, "b": full, "c": 1e-9 * full})
    assert found is not None and found.rank == 6 and found.layers == ("a",)
    assert detect_lowrank({"b": full}) is None


def test_lora_strength_interval():
    rng = np.random.default_rng(3)
    lora = {str(i): rng.normal(size=(16, 16)) for i in range(6)}
    target = {k: 0.7 * v + 0.05 * rng.normal(size=v.shape) for k, v in lora.items()}
    res = estimate_lora_strength(target, lora)
    assert abs(res.strength - 0.7) < 0.01 and res.ci95[0] < 0.7 < res.ci95[1]
    assert res.n_layers == 6


def test_ties_saved_in_fp16_against_fp32_library(fam):
    ings = ("A", "C")

    def make(i, t):
        base = torch.from_numpy(t["base"][i])
        deltas = [torch.from_numpy(t[n][i]) - base for n in ings]
        return (base + 0.8 * _ties_sum(deltas, 0.3)).half().float().numpy()

    est = estimate_recipe(production_layers(fam, make), list(fam.names), 0)
    assert est.kind == "ties" and est.elementwise is not None
    assert set(est.elementwise.ingredients) == set(ings)
    assert est.elementwise.density is not None and abs(est.elementwise.density - 0.3) <= 0.1


def _dare_layers(rng: np.random.Generator, p: float, wipe: list[float], shrink: float = 1.0):
    """Raw samples of a 2-model DARE merge over several layers; ``wipe[l]`` of layer l's rows reset."""
    targets, refs = [], []
    for share in wipe:
        b = rng.normal(size=2000)
        d = 0.05 * rng.normal(size=(3, 2000))  # A, B (the ingredients) and C (not used)
        keep = rng.random(size=(2, 2000)) > p
        kept = (d[:2] * keep).sum(0) / np.maximum(keep.sum(0), 1) / (1 - p)
        kept[rng.random(2000) < share] = 0.0  # a merger that shrinks rows to nothing afterwards
        targets.append(b + shrink * kept)
        refs.append(np.vstack([b, b + d]))
    return targets, refs


def test_dare_found_when_the_linear_fit_finds_nothing():
    """sd-mecha's default DARE-TIES shrinks rows by a model-stock factor: the linear fit then finds
    no ingredient (its prediction is zero), but the coordinates left at the base still show DARE."""
    rng = np.random.default_rng(4)
    targets, refs = _dare_layers(rng, 0.9, [0.0] * 6, shrink=0.05)
    zero = [np.zeros_like(t) for t in targets]
    found = detect_elementwise(targets, refs, base=0, predicted=zero, names=["base", "A", "B", "C"])
    assert found.kind == "dare" and set(found.ingredients) == {"A", "B"}
    assert found.drop_rate is not None and abs(found.drop_rate - 0.9) < 0.03


def test_drop_rate_from_the_least_shrunk_layers():
    """Layers whose rows were reset afterwards have more coordinates at the base; p comes from the others."""
    rng = np.random.default_rng(5)
    targets, refs = _dare_layers(rng, 0.7, [0.0, 0.0, 0.0, 0.6, 0.8, 0.8, 0.9])
    found = detect_elementwise(targets, refs, base=0, names=["base", "A", "B", "C"])
    assert found.kind == "dare" and set(found.ingredients) == {"A", "B"}
    assert found.drop_rate is not None and abs(found.drop_rate - 0.7) < 0.03
    pooled = float(np.mean(np.concatenate([t == r[0] for t, r in zip(targets, refs, strict=True)])))
    assert pooled ** 0.5 > 0.8  # what the pooled share alone would have said


def test_weak_lora_layers_listed_through_rounding_noise():
    """A rank-4 LoRA whose fp16 rounding noise blurs the spectral gap still has most of its energy in
    4 directions: listed once clear layers set the rank. A fine-tune's residual (rank 8 + dense) is not."""
    rng = np.random.default_rng(6)

    def lora(noise: float) -> np.ndarray:
        m = rng.normal(size=(32, 4)) @ np.diag([4.0, 2.0, 1.0, 0.6]) @ rng.normal(size=(4, 32))
        return m / np.linalg.norm(m) + noise * rng.normal(size=(32, 32)) / 32

    def finetune() -> np.ndarray:
        low = rng.normal(size=(32, 8)) @ rng.normal(size=(8, 32))
        return 0.7 * low / np.linalg.norm(low) + 0.7 * rng.normal(size=(32, 32)) / 32

    clear = {f"clear{i}": lora(0.001) for i in range(3)}
    weak = {f"weak{i}": lora(0.35) for i in range(6)}
    other = {f"ft{i}": finetune() for i in range(6)}
    found = detect_lowrank({**clear, **weak, **other})
    assert found is not None and found.rank == 4
    assert set(found.layers) == set(clear) | set(weak)
    assert top_energy_share_of_noise((32, 32), 4) == pytest.approx(0.38, abs=0.02)


def _ties_paper(b: np.ndarray, deltas: np.ndarray, k: float) -> np.ndarray:
    """TIES as published (and sd-mecha's ``vote_sgn=True``): trim each delta to its top-k share,
    elect each coordinate's sign by the summed kept deltas, average the kept deltas that agree."""
    thr = np.quantile(np.abs(deltas), 1 - k, axis=1, keepdims=True)
    kept = np.where(np.abs(deltas) >= thr, deltas, 0.0)
    sign = np.sign(kept.sum(axis=0))
    agree = (np.sign(kept) == sign) & (kept != 0)
    return b + (kept * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)


def test_ties_of_three_independent_fine_tunes_with_the_sign_elected_by_magnitude():
    """Three unrelated fine-tunes merged by the paper's TIES (SDXL benchmark, 1/8 width: read as
    DARE-TIES before): each delta explains only two thirds of the result's signs, so the greedy
    sign cover alone stops after one of them."""
    rng = np.random.default_rng(5)
    targets, refs = [], []
    for _ in range(30):
        b = rng.normal(size=1024)
        deltas = 0.02 * rng.normal(size=(3, 1024))
        targets.append(_ties_paper(b, deltas, 0.3).astype(np.float16).astype(np.float64))
        refs.append(np.vstack([b, b + deltas]))
    f = detect_elementwise(targets, refs, base=0, names=["base", "A", "B", "C"])
    assert (f.kind, set(f.ingredients), f.sign_vote) == ("ties", {"A", "B", "C"}, "magnitude")
    assert f.density is not None and abs(f.density - 0.3) <= 0.05
