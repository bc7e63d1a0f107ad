"""Recipe estimation on synthetic families: linear merges, blocks, swaps, copies, LoRAs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from estimator_prints import production_layers, production_print

from sdforensics.recipe.estimate import estimate_recipe, recipe_to_json, summarize, supermerger_blocks
from sdforensics.recipe.text import linear_text, recipe_text
from sdforensics.synth.estimate_layers import Family, make_family

FINETUNES = {"A": None, "B": None, "C": None, "D": None, "E": None, "P": None, "Pc": "P", "U": None}


@pytest.fixture(scope="module")
def fam() -> Family:
    return make_family(FINETUNES, seed=7, held_out=("U",), own_vae=("C", "D", "U"), narrow=2)


def lin(recipe: Mapping[str, float]):
    def make(i: int, t: Mapping[str, list[np.ndarray]]) -> np.ndarray:
        return np.asarray(sum(w * t[n][i].astype(np.float64) for n, w in recipe.items()))

    return make


def run(fam: Family, make, dtype=None, base: int | None = 0, **kw):
    layers = production_layers(fam, make, dtype)
    return estimate_recipe(layers, list(fam.names), base, **kw)


def affine(recipe: Mapping[str, float]) -> dict[str, float]:
    """Add the base's implicit weight so the recipe sums to 1."""
    out = dict(recipe)
    out["base"] = out.get("base", 0.0) + 1.0 - sum(recipe.values())
    return out


def check_linear(est, recipe, tol=0.01, others=0.03, unexplained=0.02):
    truth = affine(recipe)
    for name, w in truth.items():
        assert abs(est.weight_of(name) - w) <= tol, (name, est.weight_of(name), w)
    for w in est.weights:
        if w.reference not in truth:
            assert abs(w.weight) <= others, w
    assert est.unexplained <= unexplained
    assert est.elementwise is None or est.elementwise.kind == "linear"
    assert est.loras == ()


LINEAR_CASES = [
    ({"A": 0.65, "B": 0.35}, "weighted_sum"),
    ({"A": 0.35, "B": 0.35, "C": 0.3}, "weighted_sum"),  # 0.7 x (0.5 A + 0.5 B) + 0.3 C, nested
    ({"A": 0.45, "B": 0.2, "D": 0.2, "E": 0.15}, "weighted_sum"),
    ({"A": 1.0, "B": 0.7, "base": -0.7}, "add_difference"),
    ({"A": 1.0, "B": 0.5, "C": -0.5}, "add_difference"),
    ({"A": 0.9, "D": 0.1, "B": 0.7, "C": -0.7}, "add_difference"),
]


@pytest.mark.parametrize(("recipe", "kind"), LINEAR_CASES)
def test_exact_linear_merges(fam, recipe, kind):
    est = run(fam, lin(recipe))
    check_linear(est, recipe)
    assert est.kind == kind


def test_fp16_saved_merge(fam):
    recipe = {"A": 0.65, "B": 0.35}
    est = run(fam, lin(recipe), np.float16)
    check_linear(est, recipe)
    assert est.kind == "weighted_sum"
    assert recipe_text(est) == "0.65 x A + 0.35 x B"


def test_text_notation(fam):
    est = run(fam, lin({"A": 1.0, "B": 0.7, "C": -0.7}))
    assert recipe_text(est) == "A + 0.7 x (B - C)"
    assert recipe_text(run(fam, lin({"A": 1.0, "B": 0.7, "base": -0.7}))) == "A + 0.7 x (B - base)"


def test_block_weighted(fam):
    blocks = supermerger_blocks(["IN11"])
    rng = np.random.default_rng(3)
    alpha = {b: float(rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])) for b in blocks}
    alpha["VAE"] = alpha["BASE"]

    def make(i, t):
        a = alpha[fam.specs[i].block]
        return (1 - a) * t["A"][i].astype(np.float64) + a * t["B"][i].astype(np.float64)

    est = run(fam, make)
    assert est.kind == "block_weighted"
    sm = est.supermerger
    assert sm is not None and sm.models == ("A", "B") or sm.models == ("B", "A")
    assert len(sm.alphas) == 26 and len(sm.text.split(",")) == 26
    for blk, got in zip(sm.blocks, sm.alphas, strict=True):
        want = alpha[blk] if sm.models[1] == "B" else 1 - alpha[blk]
        assert abs(got - want) <= 0.02, (blk, got, want)
    for b in est.blocks:
        if b.block == "VAE":
            continue
        w = dict((r, x) for r, x, _ in b.weights)
        assert abs(w["B"] - alpha[b.block]) <= 0.02


def _extra_delta(fam: Family, i: int, rng: np.random.Generator, merge_delta: np.ndarray, share: float):
    w = fam.tensors["base"][i]
    if w.ndim == 2:
        d = rng.standard_normal((w.shape[0], 5)) @ rng.standard_normal((5, w.shape[1]))
        d = d / np.linalg.norm(d) + rng.standard_normal(w.shape) / np.sqrt(w.size)
    else:
        d = rng.standard_normal(w.shape)
    return d / np.linalg.norm(d) * share * np.linalg.norm(merge_delta)


@pytest.mark.parametrize("share", [0.3, 0.5])
def test_merge_then_trained_further(fam, share):
    recipe = {"A": 0.6, "B": 0.4}
    rng = np.random.default_rng(11)

    def make(i, t):
        m = lin(recipe)(i, t)
        return m + _extra_delta(fam, i, rng, m - t["base"][i], share)

    est = run(fam, make)
    for name, w in affine(recipe).items():
        assert abs(est.weight_of(name) - w) <= 0.05, (name, est.weight_of(name))
    assert est.unexplained >= 0.2
    assert est.kind == "weighted_sum"
    assert est.loras == ()


def test_merge_with_model_outside_library(fam):
    est = run(fam, lin({"A": 0.6, "U": 0.4}))
    assert abs(est.weight_of("A") - 0.6) <= 0.05
    assert est.unexplained >= 0.3
    assert any("unknown ingredient is likely" in line for line in summarize(est))
    assert est.kind not in ("block_weighted", "ties", "dare", "lora")


def test_parent_child_reported_ambiguous(fam):
    est = run(fam, lin({"Pc": 0.5, "A": 0.5}), np.float16)
    groups = [g for g in est.ambiguous if set(g.references) == {"P", "Pc"}]
    assert len(groups) == 1
    assert abs(groups[0].weight - 0.5) <= 0.01
    assert groups[0].ci95[0] - 0.005 <= 0.5 <= groups[0].ci95[1] + 0.005
    assert abs(est.weight_of("A") - 0.5) <= 0.01
    assert any("Ambiguous" in line for line in summarize(est))


def test_component_swap(fam):
    src = {"unet": "A", "text_encoder": "B", "vae": "C"}
    est = run(fam, lambda i, t: t[src[fam.specs[i].component]][i])
    assert est.kind == "component_swap"
    assert {c.block: c.copy_of for c in est.components} == src
    assert "UNet of A" in recipe_text(est)


def _bf16(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("resave", ["exact", "fp16", "bf16"])
def test_copy(fam, resave):
    def make(i, t):
        x = t["B"][i]
        return _bf16(x) if resave == "bf16" else x

    est = run(fam, make, np.float16 if resave == "fp16" else None)
    assert est.kind == "copy" and est.copy_of == "B"
    assert abs(est.weight_of("B") - 1.0) <= 0.01
    assert est.loras == ()


def test_no_official_base_uses_nearest_pivot(fam):
    est = run(fam, lin({"A": 0.65, "B": 0.35}), base=None)
    assert est.pivot in ("A", "B")
    check_linear(est, {"A": 0.65, "B": 0.35, "base": 0.0})


def test_slerp_reads_as_linear(fam):
    alpha = 0.3

    def make(i, t):  # sd-mecha's slerp, per tensor
        a, b = t["A"][i].astype(np.float64), t["B"][i].astype(np.float64)
        an, bn = a / np.linalg.norm(a), b / np.linalg.norm(b)
        omega = np.arccos(np.clip((an * bn).sum(), -1, 1))
        if np.sin(omega) < 1e-12:  # identical tensors: sd-mecha falls back to lerp
            return (1 - alpha) * a + alpha * b
        res = (an * np.sin((1 - alpha) * omega) + bn * np.sin(alpha * omega)) / np.sin(omega)
        return res * ((1 - alpha) * np.linalg.norm(a) + alpha * np.linalg.norm(b))

    est = run(fam, make)
    assert est.kind == "weighted_sum"
    assert abs(est.weight_of("B") - alpha) <= 0.02 and abs(est.weight_of("A") - (1 - alpha)) <= 0.02
    assert est.unexplained <= 0.1


def _lora(fam: Family, rank: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, s in enumerate(fam.specs):
        if len(s.shape) == 2 and s.component != "vae" and i % 4 == 0:
            up = rng.standard_normal((s.shape[0], rank))
            down = rng.standard_normal((rank, s.shape[1]))
            d = up @ down
            out[i] = d / np.linalg.norm(d) * 0.03 * np.linalg.norm(fam.tensors["base"][i])
    return out


def test_known_lora_strength(fam):
    from types import SimpleNamespace

    from sdforensics.api import lora_deltas

    lora = _lora(fam, 8, 5)
    delta = production_print(fam, [lora.get(i, np.zeros(s.shape)).astype(np.float32) for i, s in enumerate(fam.specs)])
    for strength in (0.3, 1.2):
        layers = production_layers(fam, lambda i, t, s=strength: t["A"][i] + s * lora.get(i, 0.0), np.float16)
        lora_layers = [la for la in layers if la.key in {fam.specs[i].key for i in lora}]
        columns = lora_deltas(lora_layers, [SimpleNamespace(name="myLora", fingerprint=delta)])
        est = estimate_recipe(layers, list(fam.names), 0, lora_deltas=columns)
        found = [lo for lo in est.loras if lo.reference == "myLora"]
        assert len(found) == 1 and abs(found[0].strength - strength) <= 0.05
        assert est.kind == "lora"  # its rank: see test_unknown_lora_rank_and_layers
        assert abs(est.weight_of("A") - 1.0) <= 0.01
        assert "LoRA myLora" in recipe_text(est)


def test_unknown_lora_rank_and_layers(fam):
    lora = _lora(fam, 4, 9)
    layers = production_layers(fam, lambda i, t: t["base"][i] + 0.8 * lora.get(i, 0.0), np.float16)
    est = estimate_recipe(layers, list(fam.names), 0)
    assert est.kind == "lora"
    (lo,) = est.loras
    assert lo.reference is None and abs(lo.rank - 4) <= 1
    # the rank test reads the two-sided sketch: every sketched LoRA layer is found, and nothing else
    sketched = {la.key for la in layers if la.sketch2d is not None}
    baked = {fam.specs[i].key for i in lora}
    assert baked & sketched and set(lo.layers) == baked & sketched


def test_json_contract(fam):
    est = run(fam, lin({"A": 0.65, "B": 0.35}))
    doc = recipe_to_json(est)
    json.dumps(doc)
    assert doc["kind"] == "weighted_sum" and doc["text"] == "0.65 x A + 0.35 x B"
    assert {"reference", "weight", "ci95"} <= set(doc["components"][0])
    assert set(doc["blocks"]) >= {"BASE", "IN00", "M00", "OUT11"}
    assert doc["unexplained"] <= 0.02 and doc["loras"] == []
    assert "IN00" in doc["block_convention"]
    assert len(summarize(est)) <= 8


def test_linear_text_rounding():
    from sdforensics.recipe.results import Weight

    ws = [
        Weight("A", 0.9, (0.9, 0.9)),
        Weight("B", 0.7, (0.7, 0.7)),
        Weight("C", -0.7, (-0.7, -0.7)),
        Weight("D", 0.1, (0.1, 0.1)),
    ]
    assert linear_text(ws) == "0.9 x A + 0.1 x D + 0.7 x (B - C)"
    assert linear_text([Weight("A", 0.5, (0.4, 0.6)), Weight("B", 0.5, (0.4, 0.6))]) == "0.5 x A + 0.5 x B"


def test_a_finetune_of_a_library_model_reads_as_a_finetune_not_a_merge(
    family_specs_sd1: dict, library: Path, tmp_path: Path
) -> None:
    """Issue 15 item 10: was 'Recipe: ft1 (a weighted-sum merge)' beside 'Unexplained: 51%'."""
    from conftest import sdf

    from sdforensics.synth.specs import FineTune, write_safetensors

    path = write_safetensors(FineTune(family_specs_sd1["ft1"], seed=991, scale=0.03), tmp_path / "tuned.safetensors")
    doc = json.loads(sdf("analyze", path, "--library", library, "-f", "json").stdout)
    recipe = doc["recipe"]
    assert recipe["kind"] == "finetune"
    assert [c["reference"] for c in recipe["components"]] == ["ft1"]
    assert recipe["unexplained"] > 0.1
    text = sdf("analyze", path, "--library", library).stdout
    assert "ft1 + further training" in text and "weighted-sum" not in text
    assert "unknown ingredient is likely" not in text
