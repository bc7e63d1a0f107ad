"""kohya and LyCORIS LoRAs (the usual Civitai files) through ``sdf analyze`` in every output format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import sdf

UNET_CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # 320 x 320 x 3 x 3 in SD1
UNET_PROJ = "lora_unet_down_blocks_0_attentions_0_proj_in"  # 320 x 320 (x 1 x 1)
UNET_Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
UNET_K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
TE_FC1 = "lora_te_text_model_encoder_layers_3_mlp_fc1"  # 3072 x 768
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # 768 x 768


def _kohya(alphas: bool, ranks: tuple[int, int] = (4, 8)) -> dict[str, torch.Tensor]:
    """kohya's spelling: ``lora_unet_*``/``lora_te_*`` with ``lora_down``/``lora_up`` (+ ``.alpha``)."""
    g = torch.Generator().manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    r, r2 = ranks
    ts = {
        f"{UNET_CONV}.lora_down.weight": rnd(r, 320, 3, 3),
        f"{UNET_CONV}.lora_up.weight": rnd(320, r, 1, 1),
        f"{UNET_PROJ}.lora_down.weight": rnd(r2, 320),
        f"{UNET_PROJ}.lora_up.weight": rnd(320, r2),
        f"{TE_FC1}.lora_down.weight": rnd(r, 768),
        f"{TE_FC1}.lora_up.weight": rnd(3072, r),
        f"{TE_Q}.lora_down.weight": rnd(r2, 768),
        f"{TE_Q}.lora_up.weight": rnd(768, r2),
    }
    if alphas:
        ts.update({f"{UNET_CONV}.alpha": torch.tensor(2.0), f"{UNET_PROJ}.alpha": torch.tensor(8.0),
                   f"{TE_FC1}.alpha": torch.tensor(1.0), f"{TE_Q}.alpha": torch.tensor(4.0)})
    return ts


def _lycoris() -> dict[str, torch.Tensor]:
    """LyCORIS LoHa (``hada_*``) and LoKr (``lokr_*``) modules with kohya names."""
    g = torch.Generator().manual_seed(1)
    return {
        f"{UNET_Q}.hada_w1_a": torch.randn(320, 8, generator=g), f"{UNET_Q}.hada_w1_b": torch.randn(8, 320, generator=g),
        f"{UNET_Q}.hada_w2_a": torch.randn(320, 8, generator=g), f"{UNET_Q}.hada_w2_b": torch.randn(8, 320, generator=g),
        f"{UNET_Q}.alpha": torch.tensor(4.0),
        f"{UNET_K}.lokr_w1": torch.randn(4, 4, generator=g), f"{UNET_K}.lokr_w2": torch.randn(80, 80, generator=g),
        f"{TE_Q}.hada_w1_a": torch.randn(768, 4, generator=g), f"{TE_Q}.hada_w1_b": torch.randn(4, 768, generator=g),
        f"{TE_Q}.hada_w2_a": torch.randn(768, 4, generator=g), f"{TE_Q}.hada_w2_b": torch.randn(4, 768, generator=g),
    }


CASES = {
    "kohya-alpha": (lambda: _kohya(True), ("kohya LoRA for sd1", "alpha")),
    "kohya-no-alpha": (lambda: _kohya(False), ("kohya LoRA for sd1", "(ranks 4 (2 layers), 8 (2 layers))")),
    "kohya-one-rank": (lambda: _kohya(True, (4, 4)), ("kohya LoRA for sd1; rank 4, alpha",)),
    "lycoris": (_lycoris, ("kohya LoRA (LoHa, LoKr) for sd1",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_kohya_loras_render_in_every_format(case: str, fmt: str, tmp_path: Path) -> None:
    build, words = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    save_file(build(), path, metadata={"ss_network_dim": "4", "ss_network_alpha": "2"})
    (tmp_path / "lib").mkdir()
    res = sdf("analyze", path, "-f", fmt, "--library", tmp_path / "lib", "-q")
    assert res.exit_code == 0, res.stderr
    assert "unexpected" not in res.stderr
    if fmt == "json":
        info = json.loads(res.stdout)["lora"]
        assert info["family"] == "sd1" and set(info["components"]) == {"unet", "text_encoder"}
        assert info["mapped_layers"] == info["layers"]
    elif fmt == "html":
        assert res.stdout.lstrip().lower().startswith("<!doctype html")
        assert "<b>Lora:</b> kohya LoRA" in res.stdout and " for sd1" in res.stdout
    else:
        assert " for sd1; rank " in res.stdout and "components text_encoder, unet" in res.stdout
        for w in words:
            assert w in res.stdout
        if case == "kohya-alpha":  # two ranks and four alphas, each with its layer count
            assert "ranks 4 (2 layers), 8 (2 layers)" in res.stdout
            assert "alpha 1 (1 layer), 2 (1 layer), 4 (1 layer), 8 (1 layer)" in res.stdout
