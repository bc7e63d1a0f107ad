"""Textual-inversion embeddings are recognised (name, vectors, width, family), not called an unknown model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import empty_library, sdf

REAL = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "fastai-diffusion-nbs" / "learned_embeds.bin"


def _a1111(path: Path) -> Path:
    """stable-diffusion-webui's save format (textual_inversion.py: Embedding.save)."""
    vec = torch.randn(2, 768, requires_grad=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": 1500,
                "sd_checkpoint": "cc6cb27103", "sd_checkpoint_name": "v1-5-pruned-emaonly"}, path)
    return path


def _files(tmp: Path) -> dict[str, tuple[Path, dict]]:
    save_file({"emb_params": torch.randn(4, 1024)}, tmp / "wide-style.safetensors")
    save_file({"clip_l": torch.randn(3, 768), "clip_g": torch.randn(3, 1280)}, tmp / "xl-style.safetensors")
    save_file({"<cat-toy>": torch.randn(768)}, tmp / "learned_embeds.safetensors")
    return {
        "a1111": (_a1111(tmp / "my-style.pt"),
                  {"format": "a1111", "family": "sd1", "vectors": 2, "tokens": ["my-style"], "widths": {"clip_l": 768}}),
        "emb_params": (tmp / "wide-style.safetensors",
                       {"format": "safetensors-emb_params", "family": "sd2", "vectors": 4,
                        "widths": {"open_clip_h": 1024}}),
        "sdxl": (tmp / "xl-style.safetensors",
                 {"format": "sdxl", "family": "sdxl", "vectors": 3, "widths": {"clip_l": 768, "clip_g": 1280}}),
        "diffusers": (tmp / "learned_embeds.safetensors",
                      {"format": "diffusers", "family": "sd1", "vectors": 1, "tokens": ["<cat-toy>"]}),
    }


@pytest.mark.parametrize("kind", ["a1111", "emb_params", "sdxl", "diffusers"])
def test_embeddings_are_recognised(kind: str, tmp_path: Path) -> None:
    path, want = _files(tmp_path)[kind]
    res = sdf("analyze", path, "-f", "json", "-q", "--library", empty_library(tmp_path))
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    for k, v in want.items():
        assert doc["embedding"][k] == v, (k, doc["embedding"])
    codes = {p["code"] for p in doc["problems"]}
    assert not codes & {"unknown_architecture", "fp32_weights"}, codes
    text = sdf("analyze", path, "-q", "--library", empty_library(tmp_path)).stdout
    assert f"textual-inversion embedding for {want['family']}" in text and "unknown" not in text
    html = sdf("analyze", path, "-q", "-f", "html", "--library", empty_library(tmp_path)).stdout
    assert "textual-inversion embedding for" in html


@pytest.mark.skipif(not REAL.exists(), reason="../shared/realdata is not laid beside the checkout")
def test_real_diffusers_embedding(tmp_path: Path) -> None:
    text = sdf("analyze", REAL, "-q", "--library", empty_library(tmp_path)).stdout
    assert "textual-inversion embedding for sd1 (diffusers); 1 vector of width clip_l 768" in text
    assert "<birb-style>" in text and "fp16" not in text and "FLUX" not in text
    assert "tensors  1 (768 values; F32 100%)" in text  # a small count is exact, not "0.0 M"


def test_missing_position_ids_is_not_a_problem(tmp_path: Path) -> None:
    from sdforensics.synth.specs import Base, write_safetensors

    path = write_safetensors(Base("sd1", width=16, seed=2), tmp_path / "m.safetensors",
                             keys=lambda k: None if k.endswith("position_ids") else k)
    doc = json.loads(sdf("analyze", path, "--identity", "-f", "json", "-q").stdout)
    assert doc["architecture"]["family"] == "sd1"
    assert not [p for p in doc["problems"] if "position_ids" in json.dumps(p)], doc["problems"]
    assert doc["architecture"]["missing_keys"]["count"] == 0
