"""Issue 19 item 4: precision variants seen in the wild (recipe/precision.py), through the CLI.

A library model re-saved in fp8 (e4m3fn) or bf16 is a copy of it, proven by the exact coordinate
samples; a weighted sum saved in fp8 keeps its weights and its unexplained share leaves the format's
rounding noise out; a model that merely resembles a library model (a child of it saved in fp8) is
never called a copy. All at 1/16 width against the session library (base official, ft1..ft6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import sdf
from safetensors.torch import load_file, save_file

from sdforensics.synth.specs import FineTune, Merge, write_safetensors

FORMATS = {"fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "bf16": torch.bfloat16}
NAMED = {"fp8": "fp8 e4m3fn", "fp8_e5m2": "fp8 e5m2", "bf16": "bf16"}


def _analyze(path: Path, library: Path) -> dict[str, Any]:
    res = sdf("analyze", path, "--library", library, "-f", "json")
    assert res.exit_code == 0, res.stderr
    recipe: dict[str, Any] = json.loads(res.stdout)["recipe"]
    return recipe


def _resave(source: Path, out: Path, dtype: torch.dtype) -> Path:
    """``source`` loaded and saved again with its float tensors in ``dtype`` (what a user's convert
    script does)."""
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(str(source)).items()}
    save_file(sd, str(out))
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_resave_of_a_library_model_is_a_copy_of_it(
    fmt: str, family: dict[str, Path], library: Path, tmp_path: Path
) -> None:
    """Was 'block-weighted: ft3', 88% unexplained, for an e4m3 re-save."""
    path = _resave(family["ft3"], tmp_path / f"ft3_{fmt}.safetensors", FORMATS[fmt])
    recipe = _analyze(path, library)
    assert recipe["kind"] == "copy", recipe["summary"]
    assert recipe["copy_of"] == "ft3"
    assert recipe["unexplained"] == 0.0
    assert f"re-save of ft3 in {NAMED[fmt]}" in " ".join(recipe["notes"])


@pytest.mark.parametrize("fmt", ["fp8", "fp8_e5m2"])
def test_a_weighted_sum_saved_in_fp8_keeps_its_weights(
    fmt: str, family_specs_sd1: dict, library: Path, tmp_path: Path
) -> None:
    s = family_specs_sd1
    truth = {"ft2": 0.6, "ft4": 0.4}
    spec = Merge(tuple((w, s[n]) for n, w in truth.items()))
    path = write_safetensors(spec, tmp_path / f"mix_{fmt}.safetensors", dtype=FORMATS[fmt])
    recipe = _analyze(path, library)
    assert recipe["kind"] != "copy"
    found = {c["reference"]: c["weight"] for c in recipe["components"]}
    assert set(found) == set(truth), recipe["summary"]
    for name, w in truth.items():
        assert found[name] == pytest.approx(w, abs=0.02), recipe["text"]
    assert recipe["unexplained"] < 0.1, recipe["text"]  # the fp8 rounding noise is left out
    assert f"stored in {NAMED[fmt]}" in " ".join(recipe["notes"])


def test_a_child_saved_in_fp8_is_not_called_a_copy(family_specs_sd1: dict, library: Path, tmp_path: Path) -> None:
    """A light fine-tune of ft3 saved in e4m3 resembles ft3's re-save closely (delta cosine ~0.85 for
    both), but rounding ft3 to e4m3 does not reproduce its exact values."""
    child = FineTune(family_specs_sd1["ft3"], seed=9191, scale=0.05)
    path = write_safetensors(child, tmp_path / "child_fp8.safetensors", dtype=torch.float8_e4m3fn)
    recipe = _analyze(path, library)
    assert recipe["kind"] != "copy", recipe["summary"]
    assert recipe["copy_of"] is None
    assert "re-save of" not in " ".join(recipe["notes"])
    assert "ft3" in {c["reference"] for c in recipe["components"]}


def test_a_checkpoint_with_ema_weights_is_read_by_its_own_weights_and_says_so(
    family: dict, library: Path, tmp_path: Path
) -> None:
    """A full (unpruned) checkpoint carries the EMA copy of the UNet (``model_ema.*``, dots dropped from
    the names) beside the model. The model's own weights are analysed: the full checkpoint of ft3 is
    ft3, and the report says the EMA set was left out. The pruned file (EMA dropped) is the same model."""
    sd = load_file(str(family["ft3"]))
    gen = torch.Generator().manual_seed(1)
    full = dict(sd)
    for k, v in sd.items():
        if k.startswith("model.diffusion_model.") and v.is_floating_point():  # EMA differs from the model
            noise = 0.05 * v.float().std() * torch.randn(v.shape, generator=gen) if v.numel() > 1 else 0.0
            full["model_ema." + k[len("model."):].replace(".", "")] = (v.float() + noise).to(v.dtype)
    full["model_ema.decay"] = torch.tensor(0.9999)
    full["model_ema.num_updates"] = torch.tensor(10000)
    save_file(full, str(tmp_path / "ft3-full-ema.safetensors"))
    res = sdf("analyze", tmp_path / "ft3-full-ema.safetensors", "--library", library, "-f", "json")
    doc = json.loads(res.stdout)
    assert doc["recipe"]["kind"] == "copy" and doc["recipe"]["copy_of"] == "ft3", doc["recipe"]["summary"]
    ema = [p for p in doc["problems"] if p["code"] == "ema_present"]
    assert ema and "EMA set is left out" in ema[0]["message"]
    text = sdf("analyze", tmp_path / "ft3-full-ema.safetensors", "--library", library).stdout
    assert "the EMA set is left out" in text
    # the same model's pruned copy: the content hashes agree (the EMA set is in neither), the recipe is ft3 again
    pruned = json.loads(sdf("analyze", family["ft3"], "--library", library, "-f", "json").stdout)
    assert pruned["content_hashes"] == doc["content_hashes"]
    assert pruned["recipe"]["kind"] == "copy" and pruned["recipe"]["copy_of"] == "ft3"
