"""Issue 19: merge methods named, honest answers (finetune, DARE's unexplained share, unknown_method).

Every case is a small-width checkpoint analysed through the CLI (``sdf analyze --format json``)
against the session library (base official, ft1..ft6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import sdf
from safetensors.torch import load_file, save_file

from sdforensics.synth.specs import FineTune, Merge, write_safetensors


def _analyze(path: Path, library: Path) -> tuple[dict[str, Any], str]:
    doc = json.loads(sdf("analyze", path, "--library", library, "-f", "json").stdout)
    return doc["recipe"], "\n".join(doc["recipe"]["summary"])


def _formula(family: dict[str, Path], out: Path, fn: Any, *names: str) -> Path:
    """A merge written tensor by tensor with ``fn(*tensors)`` (float64), saved in fp16."""
    models = [load_file(str(family[n])) for n in names]
    res = {}
    for key, first in models[0].items():
        if not first.is_floating_point():
            res[key] = first
            continue
        res[key] = fn(*(m[key].double() for m in models)).to(torch.float16)
    save_file(res, str(out))
    return out


def test_a_child_of_a_library_model_is_a_finetune_of_that_parent(
    family_specs_sd1: dict, library: Path, tmp_path: Path
) -> None:
    path = write_safetensors(FineTune(family_specs_sd1["ft3"], seed=4242, scale=0.05), tmp_path / "child.safetensors")
    recipe, text = _analyze(path, library)
    assert recipe["kind"] == "finetune"
    assert [c["reference"] for c in recipe["components"]] == ["ft3"]
    assert "merge" not in recipe["summary"][0]
    assert "parent is sure" in recipe["confidence"]["reason"]


def test_a_finetune_whose_parent_is_not_in_the_library_is_not_called_sure(
    family_specs_sd1: dict, library: Path, tmp_path: Path
) -> None:
    """Was 'How sure: high confidence (weights +-0.01)' beside 'Unexplained: 100%'."""
    stranger = FineTune(family_specs_sd1["base"], seed=5151, scale=0.05)
    path = write_safetensors(FineTune(stranger, seed=5152, scale=0.03), tmp_path / "grandchild.safetensors")
    recipe, text = _analyze(path, library)
    assert recipe["unexplained"] > 0.9
    assert recipe["confidence"]["level"] == "low"
    assert "high confidence" not in text


def test_a_dare_merge_is_explained_by_dare_not_left_98_percent_unexplained(library: Path, family: dict, tmp_path: Path):
    """Issue 15 item 11: the unexplained share is measured under the element-wise model recognised."""
    torch.manual_seed(0)

    def dare(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ma = torch.rand(base.shape) > 0.9
        mb = torch.rand(base.shape) > 0.9
        cnt = (ma.double() + mb.double()).clamp(min=1)
        return base + ((a - base) * ma + (b - base) * mb) / cnt / 0.1

    path = _formula(family, tmp_path / "dare.safetensors", dare, "base", "ft2", "ft4")
    recipe, text = _analyze(path, library)
    assert recipe["kind"] == "dare"
    assert sorted(recipe["elementwise"]["ingredients"]) == ["ft2", "ft4"]
    assert recipe["unexplained"] < 0.02  # re-save noise (fp16), was 0.95 under the linear fit
    assert recipe["linear_unexplained"] > 0.5
    assert recipe["method"]["parameters"]["drop"] == pytest.approx(0.9, abs=0.05)
    assert recipe["method"]["name"] == "dare"  # a magnitude-blind drop is not taken for DELLA
    assert "unknown ingredient is likely" not in text


def test_della_is_told_from_dare_with_its_drop(library: Path, family: dict, tmp_path: Path) -> None:
    """DELLA (sd-mecha ``ties_sum_with_dropout(della_eps=0.3)``): a DARE drop whose keep probability
    rises with the magnitude rank, then a TIES sign vote by count. Was reported as plain DARE."""
    torch.manual_seed(1)

    def keep(d: torch.Tensor, p: float, eps: float) -> torch.Tensor:
        rank = (torch.argsort(torch.argsort(d.abs().flatten())).double() + 1) / d.numel()
        prob = (1 - p + eps * (rank - (d.numel() + 1) / (2 * d.numel()))).clamp(0, 1)
        return d * torch.bernoulli(prob).reshape(d.shape)

    def della(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ds = torch.stack([keep(a - base, 0.7, 0.3), keep(b - base, 0.7, 0.3)])
        signs = torch.sign(ds)
        agree = (signs == torch.sign(signs.sum(dim=0))).double()
        merged = torch.nan_to_num((ds * agree).sum(dim=0) / agree.sum(dim=0))
        return base + merged / 0.3

    path = _formula(family, tmp_path / "della.safetensors", della, "base", "ft2", "ft4")
    recipe, text = _analyze(path, library)
    assert recipe["kind"] == "dare"
    assert recipe["method"]["name"] == "della" and recipe["method"]["family"] == "dare"
    assert sorted(recipe["elementwise"]["ingredients"]) == ["ft2", "ft4"]
    assert recipe["method"]["parameters"]["drop"] == pytest.approx(0.7, abs=0.05)
    assert recipe["method"]["parameters"]["eps"] == pytest.approx(0.3, abs=0.1)
    assert recipe["unexplained"] < 0.05


def test_slerp_reads_as_the_weighted_sum_it_is_close_to_with_its_t(library: Path, family: dict, tmp_path: Path):
    def slerp(a: torch.Tensor, b: torch.Tensor, t: float = 0.3) -> torch.Tensor:
        an, bn = a / a.norm(), b / b.norm()
        om = torch.arccos((an * bn).sum().clamp(-1, 1))
        if om.abs() < 1e-12:
            return torch.lerp(a, b, t)
        res = (an * torch.sin((1 - t) * om) + bn * torch.sin(t * om)) / torch.sin(om)
        return res * torch.lerp(a.norm(), b.norm(), t)

    recipe, text = _analyze(_formula(family, tmp_path / "slerp.safetensors", slerp, "ft2", "ft4"), library)
    assert recipe["kind"] == "weighted_sum"
    assert recipe["method"]["family"] == "interpolation" and "slerp" in recipe["method"]["alternatives"]
    assert recipe["method"]["parameters"]["t"] == pytest.approx(0.3, abs=0.05)
    assert "slerp (t = 0.30)" in text


def test_train_difference_is_named_with_its_alpha(library: Path, family: dict, tmp_path: Path) -> None:
    """SuperMerger's trainDifference: A + 1.8 alpha (B - C) |B - A| / (|B - A| + |B - C|)."""

    def train_difference(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        dba, dbc = (b - a).abs(), (b - c).abs()
        s = dba + dbc
        scale = torch.where(s != 0, dba / s, torch.zeros_like(s))
        return a + torch.sign(b - c) * scale * (b - c).abs() * alpha * 1.8

    path = _formula(family, tmp_path / "td.safetensors", train_difference, "ft2", "ft3", "base")
    recipe, text = _analyze(path, library)
    assert recipe["method"]["name"] == "train_difference"
    assert recipe["method"]["ingredients"] == ["ft2", "ft3", "sd15"]
    assert recipe["method"]["parameters"]["alpha"] == pytest.approx(0.5, abs=0.05)
    assert recipe["unexplained"] < 0.05


def test_an_unrecognised_method_on_known_ingredients_is_unknown_method(library: Path, family: dict, tmp_path: Path):
    """sd-mecha's add_strict_opposite_mask as add difference's alpha: no method sdforensics knows."""

    def strict_opposite(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        thr = torch.maximum((a - c).abs(), (b - c).abs())
        mask = torch.clamp(torch.nan_to_num((c - a) * (b - c) / thr**2, nan=0), 0) * 2
        return a + mask * (b - c)

    path = _formula(family, tmp_path / "odd.safetensors", strict_opposite, "ft2", "ft3", "base")
    recipe, text = _analyze(path, library)
    assert recipe["kind"] == "unknown_method"
    assert sorted(recipe["method"]["ingredients"]) == ["ft2", "ft3"]
    assert recipe["confidence"]["level"] != "high"
    assert "unknown ingredient is likely" not in text


def test_a_three_model_weighted_sum_names_sum_twice_and_triple_sum(family_specs_sd1: dict, library: Path, tmp_path):
    s = family_specs_sd1
    spec = Merge(((0.7 * 0.6, s["ft2"]), (0.7 * 0.4, s["ft3"]), (0.3, s["ft4"])))  # sum twice a=0.4, b=0.3
    recipe, text = _analyze(write_safetensors(spec, tmp_path / "twice.safetensors"), library)
    assert recipe["method"]["family"] == "sum_twice/triple_sum"
    p = recipe["method"]["parameters"]
    assert p["triple_alpha"] == pytest.approx(0.3, abs=0.02) and p["triple_beta"] == pytest.approx(0.28, abs=0.02)
    assert "triple sum" in text and "sum twice" in text


def test_model_stock_ratio(family_specs_sd1: dict, library: Path, tmp_path: Path) -> None:
    s = family_specs_sd1
    spec = Merge(((0.3, s["base"]), (0.35, s["ft2"]), (0.35, s["ft5"])))  # base + 0.7 * mean(deltas)
    recipe, _ = _analyze(write_safetensors(spec, tmp_path / "stock.safetensors"), library)
    assert recipe["method"]["name"] == "model_stock"
    assert recipe["method"]["parameters"]["ratio"] == pytest.approx(0.7, abs=0.05)


def test_a_supermerger_cosine_merge_is_named_from_its_per_element_factor(
    library: Path, family: dict, tmp_path: Path
) -> None:
    """SuperMerger cosineA/B: ``B (1 - k) + A k`` with k from a cosine similarity per column, clamped to
    [0, 1]; was read as a block-weighted merge with 27% unexplained."""

    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() == 0:
            return a
        sim = torch.nn.functional.cosine_similarity(a - a.mean(), b - b.mean(), dim=0)
        k = ((sim - sim.min()) / (sim.max() - sim.min() + 1e-12) - 0.3).clamp(0, 1)
        return b * (1 - k) + a * k

    path = _formula(family, tmp_path / "cosine.safetensors", cosine, "ft2", "ft3")
    recipe, text = _analyze(path, library)
    assert recipe["method"]["name"] == "cosine", text
    assert sorted(recipe["method"]["ingredients"]) == ["ft2", "ft3"]
    assert "cosineA" in recipe["method"]["alternatives"]
    assert recipe["unexplained"] < 0.05  # nothing lies outside the segment between the two models


def test_model_stock_vector_by_vector_is_found_by_the_robust_refit(library: Path, family: dict, tmp_path: Path):
    """sd-mecha's model_stock takes t = n cos / (1 + (n - 1) cos) along the last axis: row by row, and
    3-vector by 3-vector on conv kernels, where it blows up; a least-squares fit then read ft6 alone."""

    ts: list[torch.Tensor] = []  # the t each coordinate was merged with

    def stock(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        da, db = a - base, b - base
        if base.dim() == 0:
            return base
        cos = torch.nn.functional.cosine_similarity(da, db, dim=-1, eps=1e-6)
        t = (2 * cos / (1 + cos)).unsqueeze(-1)
        ts.append(t.expand_as(da).reshape(-1))
        return base + torch.nan_to_num(t * (da + db) / 2)

    path = _formula(family, tmp_path / "stock.safetensors", stock, "base", "ft1", "ft6")
    recipe, text = _analyze(path, library)
    assert recipe["method"]["name"] == "model_stock", text
    assert sorted(recipe["method"]["ingredients"]) == ["ft1", "ft6"]
    # The weights are model stock's, not the least-squares fit's (which read ft6 0.81 + base 0.19), and
    # what is left is measured against model stock (was 95%, the blown-up vectors swamping the fit).
    true_t = float(torch.cat(ts).nan_to_num(posinf=1e9, neginf=-1e9).median())
    w = {r["reference"]: r["weight"] for r in recipe["components"]}
    assert w["ft1"] == pytest.approx(true_t / 2, abs=0.03) and w["ft6"] == pytest.approx(true_t / 2, abs=0.03), text
    assert recipe["method"]["parameters"]["ratio"] == pytest.approx(true_t, abs=0.05)
    assert recipe["unexplained"] < 0.15 and recipe["confidence"]["level"] != "high", text
    assert "A linear fit alone leaves" in text


def test_model_stock_whose_blown_up_vectors_swamp_the_fit_is_not_a_lora(library: Path, family: dict, tmp_path: Path):
    """At full size sd-mecha's model stock blows up enough vectors (t = 2 cos / (1 + cos) as cos nears -1,
    still finite in fp16) that the least-squares fit finds no ingredient at all, and each blown-up row,
    a rank-1 change, made the file read as 'base + unknown LoRA (rank 1, 53 layers)', 100% unexplained.
    Here a few rows of every 3x3 kernel are blown up the way it does (t = -500)."""

    def stock(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        da, db = a - base, b - base
        if base.dim() == 0:
            return base
        cos = torch.nn.functional.cosine_similarity(da, db, dim=-1, eps=1e-6)
        t = (2 * cos / (1 + cos)).clamp(-500.0, 1.0)
        if base.dim() == 4 and base.shape[-1] == 3:
            t.view(-1)[::40] = -500.0
        return base + t.unsqueeze(-1) * (da + db) / 2

    path = _formula(family, tmp_path / "stock.safetensors", stock, "base", "ft1", "ft6")
    recipe, text = _analyze(path, library)
    assert recipe["kind"] == "weighted_sum" and recipe["method"]["name"] == "model_stock", text
    assert not recipe["loras"], text
    w = {r["reference"]: r["weight"] for r in recipe["components"]}
    assert set(w) >= {"ft1", "ft6"} and abs(w["ft1"] - w["ft6"]) < 0.05, text
    assert recipe["unexplained"] < 0.2, text


def test_layers_with_inf_are_left_out_of_the_fit_not_read_as_a_change(
    library: Path, family: dict, tmp_path: Path
) -> None:
    """A full-size model-stock merge holds Inf in its 1x1 kernels (t = 2 cos / (1 + cos) at cos = -1); the
    fingerprint keeps 0 in their place, which read as a change of minus the base (full size: kind
    'lora', no ingredient; here, a weighted sum with 56% unexplained)."""
    hit: list[int] = []

    def blown(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = 0.6 * a + 0.4 * b
        if out.dim() == 4 and out.shape[-1] == 1 and len(hit) < 30:  # 1x1 kernels, as model stock blows up
            hit.append(1)
            out.view(-1)[::97] = float("inf")
        return out

    path = _formula(family, tmp_path / "blown.safetensors", blown, "ft2", "ft3")
    recipe, text = _analyze(path, library)
    w = {r["reference"]: r["weight"] for r in recipe["components"]}
    assert recipe["kind"] == "weighted_sum", text
    assert w["ft2"] == pytest.approx(0.6, abs=0.02) and w["ft3"] == pytest.approx(0.4, abs=0.02)
    assert recipe["unexplained"] < 0.05, text
    assert any("NaN/Inf" in n and "left out of the recipe fit" in n for n in recipe["notes"]), recipe["notes"]
    assert "Left out: 30 of" in text


def test_a_block_merge_of_low_rank_fine_tunes_is_block_weighted_not_a_lora(tmp_path: Path) -> None:
    """Full-size SDXL, 20 block weights: read as 'weighted_sum' because what the global weights
    leave, (w_block - w) x (ft1 - ft2), is low rank where the fine-tunes are, and was taken for an
    unknown LoRA. Fine-tunes that are mostly low rank show it at 1/16 width."""
    from sdforensics import Library, fingerprint
    from sdforensics.model.architecture import block_map_of
    from sdforensics.synth.specs import Base

    base = Base("sd1", width=16, seed=71)
    ft1, ft2 = (FineTune(base, seed=s, scale=0.05, rank=2, noise=0.01) for s in (7101, 7102))
    lib = Library(tmp_path / "library")
    for name, spec in (("base", base), ("ft1", ft1), ("ft2", ft2)):
        path = write_safetensors(spec, tmp_path / f"{name}.safetensors")
        lib.add(fingerprint(path, device="cpu"), name, official=name == "base")
    ids = [b for b in block_map_of("sd1").ids if b != "VAE"]
    alphas = {b: 0.1 + 0.8 * ((i * 7) % len(ids)) / (len(ids) - 1) for i, b in enumerate(ids)}
    blocks = {b: (1 - a, a) for b, a in alphas.items()} | {"VAE": (1 - alphas["BASE"], alphas["BASE"])}
    path = write_safetensors(Merge(((0.5, ft1), (0.5, ft2)), blocks=blocks), tmp_path / "mbw.safetensors")
    recipe, text = _analyze(path, lib.folder)
    assert recipe["kind"] == "block_weighted", text
    assert not recipe["loras"], text
    sm = recipe["supermerger_weights"]
    assert sm["models"] == ["ft1", "ft2"], text
    found = dict(zip(sm["blocks"], sm["alphas"], strict=True))
    assert max(abs(found[b] - a) for b, a in alphas.items()) <= 0.02, sm["text"]


def test_the_inpainting_version_of_a_model_is_an_add_difference_across_the_inpainting_model(
    family: dict, family_prints: dict, tmp_path: Path
) -> None:
    """The usual "inpainting version of X" = inpaint + (X - base): the UNet's conv_in has 9 input
    channels (latent, mask, masked latent), X's change added to the first 4. With the inpainting model
    in the library, the recipe names X, the inpainting model and the base, weights 1, 1, -1."""
    from sdforensics import Library

    key = "model.diffusion_model.input_blocks.0.0.weight"
    base, ft2 = load_file(str(family["base"])), load_file(str(family["ft2"]))
    gen = torch.Generator().manual_seed(5)
    inpaint = {}
    for k, v in base.items():  # the official inpainting model: the base trained further, conv_in widened
        if not v.is_floating_point() or v.numel() < 2:
            inpaint[k] = v
            continue
        inpaint[k] = (v.float() + 0.02 * v.float().std() * torch.randn(v.shape, generator=gen)).to(v.dtype)
    c = inpaint[key]
    inpaint[key] = torch.cat([c.float(), 0.05 * torch.randn((c.shape[0], 5, *c.shape[2:]), generator=gen)], 1).half()
    save_file(inpaint, str(tmp_path / "inpaint.safetensors"))
    out = {}
    for k, v in inpaint.items():
        if not v.is_floating_point():
            out[k] = v
        elif k == key:
            t = v.float().clone()
            t[:, :4] += ft2[k].float() - base[k].float()
            out[k] = t.half()
        else:
            out[k] = (v.float() + ft2[k].float() - base[k].float()).to(v.dtype)
    path = tmp_path / "ft2-inpainting.safetensors"
    save_file(out, str(path))
    lib = Library(tmp_path / "library")
    for name, fp in family_prints.items():
        lib.add(fp, "sd15" if name == "base" else name, official=name == "base")
    assert sdf("refs", "add", tmp_path / "inpaint.safetensors", "--name", "sd15-inpainting",
               "--library", lib.folder).exit_code == 0
    doc = json.loads(sdf("analyze", path, "--library", lib.folder, "-f", "json").stdout)
    recipe, text = doc["recipe"], "\n".join(doc["recipe"]["summary"])
    assert doc["architecture"]["variant"] == "inpainting"
    assert recipe["kind"] == "add_difference", text
    w = {r["reference"]: r["weight"] for r in recipe["components"]}
    assert set(w) == {"ft2", "sd15-inpainting", "sd15"}, text
    assert w["ft2"] == pytest.approx(1.0, abs=0.02) and w["sd15-inpainting"] == pytest.approx(1.0, abs=0.02)
    assert w["sd15"] == pytest.approx(-1.0, abs=0.02) and recipe["unexplained"] < 0.05
