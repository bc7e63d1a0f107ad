"""LoRA files end to end: described by analyze, added as references, found baked into a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import empty_library, sdf

REAL = Path(__file__).resolve().parents[3] / "shared" / "realdata"
CAT = REAL / "catundchat-stable-diffusion-v1.5-lora" / "pytorch_lora_weights.safetensors"
DISNEY = REAL / "cloneofsimo-lora" / "lora_disney.safetensors"

pytestmark = pytest.mark.skipif(not CAT.exists(), reason="../shared/realdata is not laid beside the checkout")


def test_analyze_describes_a_lora(tmp_path: Path) -> None:
    res = sdf("analyze", DISNEY, "-f", "json", "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    info = doc["lora"]
    assert info["family"] == "sd1" and info["rank"] == 1 and info["layers"] == 192
    assert set(info["components"]) == {"unet", "text_encoder"}
    assert not any(p["code"] == "unknown_architecture" for p in doc["problems"])
    text = sdf("analyze", CAT, "--library", empty_library(tmp_path)).stdout
    assert "LoRA for sd1; rank 4" in text and "128 of 128 layers mapped" in text


def test_baked_library_lora_strength_is_estimated(tmp_path: Path) -> None:
    """A real LoRA baked at 0.8 into a full-width base (only a few of its layers written, to stay fast)."""
    from sdforensics.lora.files import read_lora
    from sdforensics.synth.lora_bake import Baked
    from sdforensics.synth.specs import Base, write_safetensors

    lora = read_lora(CAT)
    keys = sorted(lora.targets())[:24]
    keep = set(keys)
    base = Base("sd1", width=1, seed=4)
    b = write_safetensors(base, tmp_path / "base.safetensors", keys=lambda k: k if k in keep else None)
    m = write_safetensors(Baked(base, lora, 0.8), tmp_path / "baked.safetensors", keys=lambda k: k if k in keep else None)
    lib = tmp_path / "lib"
    assert sdf("refs", "add", b, "--name", "base", "--official", "--library", lib).exit_code == 0
    res = sdf("refs", "add", CAT, "--name", "cat-lora", "--library", lib)
    assert res.exit_code == 0 and "LoRA for sd1" in res.stdout, res.stderr
    doc = json.loads(sdf("analyze", m, "--library", lib, "-f", "json").stdout)
    found = {x["reference"]: x for x in doc["recipe"]["loras"]}
    assert doc["recipe"]["kind"] == "lora"
    assert abs(found["cat-lora"]["strength"] - 0.8) <= 0.05
