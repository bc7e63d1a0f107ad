"""LoRA files: reading every real one we have, mapping to canonical keys, baking, fingerprints."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdforensics.core.errors import UnsupportedFormatError
from sdforensics.fingerprinting.fingerprint import Fingerprinter, Scheme
from sdforensics.lora.files import LoraFile, describe_lora, is_lora, read_lora, training_summary
from sdforensics.lora.fingerprint import block_of_family, lora_fingerprint
from sdforensics.lora.keys import module_index
from sdforensics.model.architecture import architecture
from sdforensics.readers import open_checkpoint
from sdforensics.readers.base import TensorInfo
from sdforensics.synth.lora_bake import Baked, bake
from sdforensics.synth.specs import Base

SHARED = Path(__file__).resolve().parents[3] / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
REAL = SHARED / "realdata"
INVOKE = REAL / "invoke-ai-InvokeAI-stripped"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="no shared/realdata")

# file -> (format, family, layers, rank, embeddings)
REAL_LORAS = {
    "cloneofsimo-lora/analog_svd_rank4.safetensors": ("cloneofsimo", "sd1", 192, 4, []),
    "cloneofsimo-lora/lora_disney.safetensors": ("cloneofsimo", "sd1", 192, 1, ["<s1>", "<s2>"]),
    "cloneofsimo-lora/lora_disney_inpainting.safetensors": ("cloneofsimo", "sd1", 192, 1, ["<s1>", "<s2>"]),
    "cloneofsimo-lora/lora_disney.pt": ("cloneofsimo-list", "sd2", 128, 4, []),
    "cloneofsimo-lora/lora_illust.pt": ("cloneofsimo-list", "sd2", 128, 4, []),
    "cloneofsimo-lora/lora_kiriko.pt": ("cloneofsimo-list", "sd2", 128, 4, []),
    "cloneofsimo-lora/lora_pop.pt": ("cloneofsimo-list", "sd2", 128, 4, []),
    "cloneofsimo-lora/lora_kiriko.text_encoder.pt": ("cloneofsimo-list", "sd2", 92, 4, []),
    "cloneofsimo-lora/lora_kiriko2.text_encoder.pt": ("cloneofsimo-list", "sd1", 48, 4, []),
    "cloneofsimo-lora/analog_svd_distill.text_encoder.pt": ("cloneofsimo-list", "sd1", 48, 4, []),
    "catundchat-stable-diffusion-v1.5-lora/pytorch_lora_weights.bin": ("diffusers-attn-processor", "sd1", 128, 4, []),
    "catundchat-stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors":
        ("diffusers-attn-processor", "sd1", 128, 4, []),
}
NOT_LORAS = ["cloneofsimo-lora/lora_kiriko2.ti.pt", "fastai-diffusion-nbs/learned_embeds.bin"]


def _check_mapping(lora: LoraFile, sample_every: int = 9) -> None:
    """Every layer mapped to a key of its family with matching shapes; deltas of a sample computed."""
    assert lora.family is not None
    keys = architecture(lora.family).keys
    assert not lora.unmapped
    for i, layer in enumerate(lora.layers):
        t = layer.target
        assert t is not None and t.key in keys, layer.name
        assert t.shape == keys[t.key][0]
        assert layer.io() == t.io, layer.name
        if t.rows is None:
            assert t.part_shape == t.shape
        if i % sample_every == 0 or layer.conv:
            assert tuple(layer.delta().shape) == t.part_shape, layer.name


@needs_real
@pytest.mark.parametrize("name", sorted(REAL_LORAS))
def test_real_lora_files_read_and_map(name: str) -> None:
    fmt, family, n_layers, rank, embeddings = REAL_LORAS[name]
    path = REAL / name
    ckpt = open_checkpoint(path)
    try:
        assert is_lora(ckpt.infos())
    finally:
        ckpt.close()
    lora = read_lora(path)
    assert (lora.format, lora.family, len(lora.layers), lora.rank) == (fmt, family, n_layers, rank)
    assert sorted(lora.embeddings) == embeddings
    assert lora.compatible == (family,)
    _check_mapping(lora)
    desc = describe_lora(lora).to_json()
    json.dumps(desc)
    assert desc["mapped_layers"] == n_layers and desc["family"] == family and desc["bakeable"]


@needs_real
def test_cloneofsimo_order_and_text_encoder_parts() -> None:
    """UNet modules follow diffusers' registration order (down, up, mid); CLIP is k, v, q, out."""
    unet = read_lora(REAL / "cloneofsimo-lora/analog_svd_rank4.safetensors")
    by_name = {layer.name: layer.target.key for layer in unet.layers if layer.target}
    pre = "model.diffusion_model."
    assert by_name["unet:0"] == pre + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert by_name["unet:4"] == pre + "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"
    assert by_name["unet:143"] == pre + "middle_block.1.transformer_blocks.0.attn2.to_out.0.weight"
    assert by_name["text_encoder:0"].endswith("layers.0.self_attn.k_proj.weight")
    assert by_name["text_encoder:2"].endswith("layers.0.self_attn.q_proj.weight")
    sd2_te = read_lora(REAL / "cloneofsimo-lora/lora_kiriko.text_encoder.pt")
    k, v, q = (sd2_te.layers[i].target for i in range(3))
    assert k and v and q and k.key == v.key == q.key
    assert (q.rows, k.rows, v.rows) == ((0, 1024), (1024, 2048), (2048, 3072))
    full = sd2_te.delta_for(k.key)
    assert full.shape == (3072, 1024)
    assert torch.equal(full[1024:2048], sd2_te.layers[0].delta())


@needs_real
@pytest.mark.parametrize("name", NOT_LORAS)
def test_textual_inversions_are_not_loras(name: str) -> None:
    ckpt = open_checkpoint(REAL / name)
    try:
        assert not is_lora(ckpt.infos())
    finally:
        ckpt.close()
    with pytest.raises(UnsupportedFormatError, match="not a LoRA"):
        read_lora(REAL / name)


def _zeros_safetensors(table: dict[str, dict[str, object]], path: Path) -> Path:
    """A safetensors file with the given keys/shapes, all zeros (sparse: nothing is written)."""
    codes = {"torch.float16": ("F16", 2), "torch.bfloat16": ("BF16", 2), "torch.float32": ("F32", 4)}
    header: dict[str, object] = {}
    offset = 0
    for key, spec in table.items():
        code, size = codes[str(spec["dtype"])]
        shape = list(spec["shape"])  # type: ignore[call-overload]
        n = math.prod(shape) * size
        header[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        fh.truncate(8 + len(raw) + offset)
    return path


@pytest.mark.skipif(not INVOKE.is_dir(), reason="no InvokeAI key tables")
@pytest.mark.parametrize(
    ("table", "family", "layers", "rank", "components", "conv", "row_parts"),
    [
        ("sd15_kohya_lora_rank128_fp16__shinkai_makoto_offset.stripped.json", "sd1", 264, 128,
         {"unet": 192, "text_encoder": 72}, 32, 0),
        ("sdxl_kohya_lora_rank32_bf16__Alien_Style.stripped.json", "sdxl", 986, 32,
         {"unet": 722, "text_encoder": 72, "text_encoder_2": 192}, 0, 96),
    ],
)
def test_kohya_key_tables_map_completely(
    tmp_path: Path, table: str, family: str, layers: int, rank: int, components: dict[str, int], conv: int,
    row_parts: int,
) -> None:
    path = _zeros_safetensors(json.loads((INVOKE / table).read_text()), tmp_path / "lora.safetensors")
    lora = read_lora(path)
    assert (lora.format, lora.family, len(lora.layers), lora.rank) == ("kohya", family, layers, rank)
    assert not lora.ignored
    _check_mapping(lora, sample_every=97)
    assert sum(1 for layer in lora.layers if layer.target and layer.target.rows) == row_parts
    desc = describe_lora(lora).to_json()
    json.dumps(desc)
    assert desc["components"] == components and desc["conv_layers"] == conv
    assert "BASE" in desc["blocks"] and "M00" in desc["blocks"]


# ---------------------------------------------------------------- synthetic files, exact formulas

UNET = "model.diffusion_model."
CONV_KEY = UNET + "input_blocks.1.0.in_layers.2.weight"  # 320 x 320 x 3 x 3
PROJ_KEY = UNET + "input_blocks.1.1.proj_in.weight"  # 320 x 320 x 1 x 1 in SD1
TE_KEY = "cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight"  # 3072 x 768


def _kohya_tensors(g: torch.Generator, r: int = 4) -> dict[str, torch.Tensor]:
    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    return {
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": rnd(r, 320, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": rnd(320, r, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": rnd(r, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": rnd(320, r),
        "lora_te_text_model_encoder_layers_3_mlp_fc1.lora_down.weight": rnd(r, 768),
        "lora_te_text_model_encoder_layers_3_mlp_fc1.lora_up.weight": rnd(3072, r),
        "lora_te_text_model_encoder_layers_3_mlp_fc1.alpha": torch.tensor(1.0),
    }


def test_kohya_locon_and_peft_deltas_follow_the_conventions(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    ts = _kohya_tensors(g)
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2", "ss_sd_model_name": "v1-5-pruned.ckpt",
            "ss_tag_frequency": json.dumps({"5_cat": {"cat": 10, " tail": 3, "ear": 5}, "1_dog": {"cat": 1}}),
            "ss_network_args": json.dumps({"conv_dim": "4"})}
    save_file(ts, tmp_path / "kohya.safetensors", metadata=meta)
    lora = read_lora(tmp_path / "kohya.safetensors")
    assert (lora.format, lora.family, len(lora.layers)) == ("kohya", "sd1", 3)
    conv = lora.delta_for(CONV_KEY, 0.5)
    pre = "lora_unet_down_blocks_0_resnets_0_conv1"
    want = torch.nn.functional.conv2d(ts[pre + ".lora_down.weight"].permute(1, 0, 2, 3),
                                      ts[pre + ".lora_up.weight"]).permute(1, 0, 2, 3) * 0.5 * (2.0 / 4)
    assert conv.shape == (320, 320, 3, 3)
    torch.testing.assert_close(conv, want, rtol=1e-5, atol=1e-7)
    proj = lora.delta_for(PROJ_KEY)  # linear factors, 1x1 conv target
    pre = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert proj.shape == (320, 320, 1, 1)
    torch.testing.assert_close(proj[:, :, 0, 0], ts[pre + ".lora_up.weight"] @ ts[pre + ".lora_down.weight"])
    te = lora.delta_for(TE_KEY, 2.0)
    pre = "lora_te_text_model_encoder_layers_3_mlp_fc1"
    torch.testing.assert_close(te, ts[pre + ".lora_up.weight"] @ ts[pre + ".lora_down.weight"] * 2.0 * (1.0 / 4))

    # the same factors in PEFT spelling (alpha folded in as the diffusers converter does) agree
    peft = {
        "unet.down_blocks.0.resnets.0.conv1.lora_A.weight":
            ts["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"],
        "unet.down_blocks.0.resnets.0.conv1.lora_B.weight":
            ts["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"] * 0.5,
        "text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_A.weight":
            ts["lora_te_text_model_encoder_layers_3_mlp_fc1.lora_down.weight"],
        "text_encoder.text_model.encoder.layers.3.mlp.fc1.lora_B.weight":
            ts["lora_te_text_model_encoder_layers_3_mlp_fc1.lora_up.weight"] * 0.25,
    }
    save_file(peft, tmp_path / "peft.safetensors")
    other = read_lora(tmp_path / "peft.safetensors")
    assert (other.format, other.family, len(other.layers)) == ("diffusers", "sd1", 2)
    torch.testing.assert_close(other.delta_for(CONV_KEY), lora.delta_for(CONV_KEY))
    torch.testing.assert_close(other.delta_for(TE_KEY), lora.delta_for(TE_KEY))

    desc = describe_lora(lora).to_json()
    assert desc["alphas"] == {"1": 1, "2": 1} and desc["conv_layers"] == 1
    assert desc["blocks"] == {"BASE": 1, "IN01": 2}
    assert desc["training"]["network_dim"] == 4 and desc["training"]["base_model"] == "v1-5-pruned.ckpt"
    assert desc["training"]["tags_top"][0] == ["cat", 11]
    assert desc["training"]["network_args"] == {"conv_dim": "4"}


def test_lycoris_layers_are_recognised(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    pre = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    kr = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    dora = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_v"
    ts = {
        pre + ".hada_w1_a": torch.randn(320, 8, generator=g), pre + ".hada_w1_b": torch.randn(8, 320, generator=g),
        pre + ".hada_w2_a": torch.randn(320, 8, generator=g), pre + ".hada_w2_b": torch.randn(8, 320, generator=g),
        pre + ".alpha": torch.tensor(4.0),
        kr + ".lokr_w1": torch.randn(4, 4, generator=g), kr + ".lokr_w2": torch.randn(80, 80, generator=g),
        dora + ".lora_down.weight": torch.randn(4, 320, generator=g),
        dora + ".lora_up.weight": torch.randn(320, 4, generator=g),
        dora + ".dora_scale": torch.ones(320, 1),
    }
    save_file(ts, tmp_path / "lyco.safetensors")
    lora = read_lora(tmp_path / "lyco.safetensors")
    assert lora.family == "sd1" and not lora.unmapped
    assert lora.kinds == ("loha", "lokr", "lora+dora")
    loha = lora.delta_for(UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight")
    want = (ts[pre + ".hada_w1_a"] @ ts[pre + ".hada_w1_b"]) * (ts[pre + ".hada_w2_a"] @ ts[pre + ".hada_w2_b"]) / 2
    torch.testing.assert_close(loha, want)
    lokr = lora.delta_for(UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight")
    torch.testing.assert_close(lokr, torch.kron(ts[kr + ".lokr_w1"], ts[kr + ".lokr_w2"]))
    with pytest.raises(UnsupportedFormatError, match="DoRA"):
        lora.delta_for(UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight")
    assert describe_lora(lora).to_json()["bakeable"] is False


def test_is_lora_from_names() -> None:
    def infos(*names: str, shape: tuple[int, ...] = (4, 4)) -> list[TensorInfo]:
        return [TensorInfo(n, shape, "F16", 32) for n in names]

    assert is_lora(infos("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"))
    assert is_lora(infos("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight"))
    assert is_lora(infos("text_encoder:0:up"))
    assert is_lora([TensorInfo("0", (320, 4), "F32", 0), TensorInfo("1", (4, 320), "F32", 0)])
    assert not is_lora([TensorInfo("0", (320, 4), "F32", 0), TensorInfo("1", (320, 4), "F32", 0)])
    assert not is_lora(infos("model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.quant_conv.bias"))
    assert not is_lora(infos("<krk>", shape=(768,)))
    assert not is_lora([])


def test_training_summary_survives_junk() -> None:
    out = training_summary({"ss_tag_frequency": "{not json", "ss_network_alpha": "nan", "ss_num_epochs": "10",
                            "ss_output_name": "x\x1b[31m"})
    assert out == {"network_alpha": "nan", "epochs": 10, "output_name": "x\\x1b[31m"}


# ---------------------------------------------------------------- baking and fingerprints


@pytest.fixture(scope="module")
def small_real_lora() -> LoraFile:
    """A few layers of catundchat's real SD1.5 LoRA (IN01's attentions), to keep tests cheap."""
    path = REAL / "catundchat-stable-diffusion-v1.5-lora/pytorch_lora_weights.safetensors"
    if not path.is_file():
        pytest.skip("no shared/realdata")
    lora = read_lora(path)
    return replace(lora, layers=tuple(x for x in lora.layers if x.target and ".input_blocks.1.1." in x.target.key))


def test_baked_layer_equals_base_plus_strength_delta(small_real_lora: LoraFile) -> None:
    base = Base("sd1", width=1, seed=5)
    baked = Baked(base, small_real_lora, 0.7)
    key = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    layer = next(x for x in small_real_lora.layers if x.target and x.target.key == key)
    got = baked.tensor(key)
    assert torch.equal(got, base.tensor(key) + small_real_lora.delta_for(key, 0.7))
    assert layer.up is not None and layer.down is not None
    torch.testing.assert_close(got - base.tensor(key), 0.7 * layer.up @ layer.down, rtol=1e-4, atol=1e-6)
    other = UNET + "input_blocks.2.1.proj_in.weight"
    assert torch.equal(baked.tensor(other), base.tensor(other))
    keys = list(small_real_lora.targets())
    sd = {k: base.tensor(k).half() for k in keys}
    out = bake(sd, small_real_lora, 0.7)
    assert isinstance(out, dict) and out[key].dtype == torch.float16
    torch.testing.assert_close(out[key].float(), got, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="width=1"):
        Baked(Base("sd1", width=16), small_real_lora, 1.0).tensor(key)


def test_lora_fingerprint_is_linear(small_real_lora: LoraFile) -> None:
    base = Base("sd1", width=1, seed=5)
    strength = 0.6
    baked = Baked(base, small_real_lora, strength)
    shapes = {k: s for k, (s, _) in architecture("sd1").keys.items()}
    scheme = Scheme()
    block_of = block_of_family("sd1")
    keys = sorted(small_real_lora.targets())[:4]
    few = tuple(x for x in small_real_lora.layers if x.target and x.target.key in keys)
    lora = replace(small_real_lora, layers=few)

    def prints(spec: Base | Baked) -> dict:
        fp = Fingerprinter(scheme)
        fp.prepare(shapes, block_of)
        for k in keys:
            t = spec.tensor(k)
            fp.consume(k, TensorInfo(k, shapes[k], "F32", t.numel() * 4), t)
        return fp.prints

    pb, pk = prints(base), prints(baked)
    lfp = lora_fingerprint(lora, scheme, shapes)
    assert lfp.identity["kind"] == "lora" and lfp.identity["family"] == "sd1" and lfp.identity["rank"] == 4
    assert sorted(lfp.tensors) == keys == lfp.identity["layers"]
    for k in keys:
        lp = lfp.tensors[k]
        assert lp.kind == pk[k].kind == "sketch"
        for field in ("values", "sample", "structure"):
            diff = getattr(pk[k], field) - getattr(pb[k], field)
            want = strength * getattr(lp, field)
            # float32 rounding of base + delta: measured <= 2e-4 of the LoRA's own magnitude
            assert np.abs(diff - want).max() <= 2e-3 * np.abs(want).max(), (k, field)


def test_module_index_covers_every_attention_projection() -> None:
    for family in ("sd1", "sd2", "sdxl"):
        index = module_index(family)
        keys = {t.key for t in index["diffusers"].values()}
        ends = ("to_q.weight", "to_out.0.weight")
        want = {k for k in architecture(family).keys if k.startswith(UNET) and k.endswith(ends)}
        assert want <= keys, family


def test_sd2_kohya_text_encoder_and_foreign_loras(tmp_path: Path) -> None:
    """SD2's fused OpenCLIP q/k/v get row slices; a LoRA for another architecture reads, unmapped."""
    g = torch.Generator().manual_seed(2)
    te = "lora_te_text_model_encoder_layers_5_self_attn_v_proj"
    unet = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    ts = {te + ".lora_down.weight": torch.randn(2, 1024, generator=g), te + ".lora_up.weight": torch.randn(1024, 2),
          unet + ".lora_down.weight": torch.randn(2, 1024, generator=g), unet + ".lora_up.weight": torch.randn(640, 2)}
    save_file(ts, tmp_path / "sd2.safetensors")
    lora = read_lora(tmp_path / "sd2.safetensors")
    assert lora.family == "sd2" and lora.compatible == ("sd2",)
    key = "cond_stage_model.model.transformer.resblocks.5.attn.in_proj_weight"
    full = lora.delta_for(key)
    assert full.shape == (3072, 1024) and not full[:2048].any()
    torch.testing.assert_close(full[2048:], ts[te + ".lora_up.weight"] @ ts[te + ".lora_down.weight"])

    flux = {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 3072),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 2)}
    save_file(flux, tmp_path / "flux.safetensors")
    other = read_lora(tmp_path / "flux.safetensors")
    assert other.family is None and len(other.unmapped) == 1 and other.notes
    desc = describe_lora(other).to_json()
    assert desc["family"] is None and desc["components"] == {"unknown": 1} and desc["targets"] == []
