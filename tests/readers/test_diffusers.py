"""Diffusers folders and sharded checkpoints: key mapping both ways, reader, writer, hostile folders."""

from __future__ import annotations

import json
import math
import os
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdforensics.core.errors import CorruptFileError, SdfError, UnsafeFileError, UnsupportedFormatError
from sdforensics.readers.base import Checkpoint
from sdforensics.readers.diffusers_keys import (
    Part,
    Rule,
    diffusers_to_ldm_shapes,
    ldm_to_diffusers_shapes,
    plan_from_diffusers,
    plan_from_ldm,
    to_canonical,
    to_diffusers,
)
from sdforensics.readers.diffusers_reader import JSON_CAP, DiffusersCheckpoint, open_diffusers, open_sharded
from sdforensics.synth.diffusers import write_diffusers

SHARED = Path(__file__).resolve().parents[3] / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
MANIFESTS = SHARED / "manifests"
INVOKE = SHARED / "realdata" / "invoke-ai-InvokeAI-stripped"

RESBLOCK23 = [
    f"cond_stage_model.model.transformer.resblocks.23.{m}.{leaf}"
    for m in ("attn.in_proj", "attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")
    for leaf in ("bias", "weight")
]
RESBLOCK23 = [
    k.replace("in_proj.bias", "in_proj_bias").replace("in_proj.weight", "in_proj_weight") for k in RESBLOCK23
]
DROPPED = {
    "sd15_ldm": {"cond_stage_model.transformer.text_model.embeddings.position_ids"},
    "sd21_768v_ldm": {
        "cond_stage_model.model.logit_scale",
        "cond_stage_model.model.text_projection",
        *RESBLOCK23,
    },
    "sdxl_base_sgm": {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
        "conditioner.embedders.1.model.logit_scale",
    },
}
FAMILY = {"sd15_ldm": "sd1", "sd21_768v_ldm": "sd2", "sdxl_base_sgm": "sdxl"}


@cache
def manifest(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    raw = json.loads((MANIFESTS / f"{name}.json").read_text())
    return {k: (tuple(s), d) for k, (s, d) in raw.items()}


def invoke_table(name: str) -> dict[str, tuple[int, ...]]:
    raw = json.loads((INVOKE / f"{name}.stripped.json").read_text())
    return {k: tuple(v["shape"]) for k, v in raw.items()}


def tiny_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of a real manifest, each dimension >= 64 divided by 64 (keeps q/k/v splits exact)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in manifest(name).items():
        small = tuple(d // 64 if d >= 64 else d for d in shape)
        if dtype.startswith("int"):
            out[key] = torch.arange(math.prod(small), dtype=torch.int64).reshape(small)
        else:
            out[key] = torch.randn(small, generator=gen).to(getattr(torch, dtype))
    return out


def read_all(path: Path, variant: str | None = None) -> tuple[dict[str, torch.Tensor], DiffusersCheckpoint]:
    ck = open_diffusers(path, variant)
    assert isinstance(ck, Checkpoint)
    try:
        got = {info.name: t for info, t in ck.tensors()}
        infos = ck.infos()
        assert [i.name for i in infos] == list(got)
        for info in infos:
            assert tuple(got[info.name].shape) == info.shape
        return got, ck
    finally:
        ck.close()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))
    )


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_diffusers(tiny_state("sd15_ldm"), "sd1", tmp_path_factory.mktemp("w") / "sd1")


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------- key tables


@pytest.mark.parametrize("name", list(FAMILY))
def test_manifest_round_trip_is_a_bijection(name: str) -> None:
    shapes = {k: s for k, (s, _) in manifest(name).items()}
    diff, plan = ldm_to_diffusers_shapes(shapes)
    assert plan.family == FAMILY[name]
    assert plan.unmapped == ()
    assert set(plan.dropped) == DROPPED[name]
    n_parts = sum(len(t) for t in diff.values())
    back, plan2 = diffusers_to_ldm_shapes(diff)
    assert plan2.family == FAMILY[name] and plan2.unmapped == ()
    assert back == {k: s for k, s in shapes.items() if k not in DROPPED[name]}
    assert len({(p.component, p.key) for r in plan.rules for p in r.parts}) == n_parts  # injective


def test_sdxl_matches_real_juggernaut_diffusers_tables() -> None:
    shapes = {k: s for k, (s, _) in manifest("sdxl_base_sgm").items()}
    diff, _ = ldm_to_diffusers_shapes(shapes)
    for comp in ("unet", "vae", "text_encoder", "text_encoder_2"):
        real = invoke_table(f"sdxl_diffusers__JuggernautXLv9__{comp}.fp16")
        assert diff[comp] == real, comp
    # and the other way: the real diffusers tables map onto the sgm manifest
    real_all = {
        comp: invoke_table(f"sdxl_diffusers__JuggernautXLv9__{comp}.fp16")
        for comp in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    back, plan = diffusers_to_ldm_shapes(real_all)
    assert plan.family == "sdxl" and plan.unmapped == ()
    assert back == {k: s for k, s in shapes.items() if k not in DROPPED["sdxl_base_sgm"]}


def test_sd1_clip_l_matches_real_transformers_table() -> None:
    shapes = {k: s for k, (s, _) in manifest("sd15_ldm").items()}
    diff, _ = ldm_to_diffusers_shapes(shapes)
    assert diff["text_encoder"] == invoke_table("clip_l_diffusers_text_encoder_bf16")


def test_refiner_prefix_maps_to_text_encoder_2() -> None:
    shapes = {
        k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): s
        for k, (s, _) in manifest("sdxl_base_sgm").items()
        if k.startswith("conditioner.embedders.1.")
    }
    diff, plan = ldm_to_diffusers_shapes(shapes)
    assert plan.family == "sdxl_refiner" and list(diff) == ["text_encoder_2"]
    back, plan2 = diffusers_to_ldm_shapes(diff)
    assert plan2.family == "sdxl_refiner"
    assert back == {k: s for k, s in shapes.items() if not k.endswith("logit_scale")}


def test_value_transforms_are_exact() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(8, 8, 1, 1, generator=g)
    inproj = torch.randn(12, 4, generator=g)
    proj = torch.randn(4, 6, generator=g)
    sd = {
        "first_stage_model.encoder.mid.attn_1.q.weight": q,
        "first_stage_model.encoder.mid.attn_1.q.bias": torch.randn(8, generator=g),
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": inproj,
        "conditioner.embedders.1.model.text_projection": proj,
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.randn(4, 4, 3, 3, generator=g),
    }
    plan = plan_from_ldm({k: tuple(v.shape) for k, v in sd.items()})
    rules = {r.canonical: r for r in plan.rules}
    (to_q,) = to_diffusers(rules["first_stage_model.encoder.mid.attn_1.q.weight"], q)
    assert rules["first_stage_model.encoder.mid.attn_1.q.weight"].parts == (
        Part("vae", "encoder.mid_block.attentions.0.to_q.weight"),
    )
    assert to_q.shape == (8, 8) and torch.equal(to_q, q[:, :, 0, 0])
    r = rules["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert [p.key for p in r.parts] == [
        f"text_model.encoder.layers.0.self_attn.{x}_proj.weight" for x in "qkv"
    ]
    qp, kp, vp = to_diffusers(r, inproj)
    assert torch.equal(qp, inproj[:4]) and torch.equal(kp, inproj[4:8]) and torch.equal(vp, inproj[8:])
    r = rules["conditioner.embedders.1.model.text_projection"]
    assert r.parts == (Part("text_encoder_2", "text_projection.weight"),)
    (tp,) = to_diffusers(r, proj)
    assert tp.shape == (6, 4) and torch.equal(tp, proj.T)
    assert rules["model.diffusion_model.input_blocks.1.0.in_layers.2.weight"].parts == (
        Part("unet", "down_blocks.0.resnets.0.conv1.weight"),
    )
    for rule in plan.rules:
        t = sd[rule.canonical]
        assert same(to_canonical(rule, to_diffusers(rule, t)), t)


def test_legacy_vae_attention_names_are_read() -> None:
    comps = {"vae": {"decoder.mid_block.attentions.0.query.weight": (4, 4)}}
    plan = plan_from_diffusers(comps)
    assert plan.rules == (
        Rule(
            "first_stage_model.decoder.mid.attn_1.q.weight",
            (Part("vae", "decoder.mid_block.attentions.0.query.weight"),),
            "conv1x1",
        ),
    )


def test_incomplete_qkv_is_unmapped_not_guessed() -> None:
    comps = {"text_encoder_2": {"text_model.encoder.layers.0.self_attn.q_proj.weight": (4, 4)}}
    plan = plan_from_diffusers(comps, family="sdxl")
    assert plan.rules == () and plan.unmapped == (
        "text_encoder_2/text_model.encoder.layers.0.self_attn.q_proj.weight",
    )


# ---------------------------------------------------------------- writer + reader


@pytest.mark.parametrize("name", list(FAMILY))
def test_write_then_read_is_bit_identical(name: str, tmp_path: Path) -> None:
    sd = tiny_state(name)
    out = write_diffusers(sd, FAMILY[name], tmp_path / "m")
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    got, ck = read_all(out)
    assert ck.family == FAMILY[name]
    expected = {k: v for k, v in sd.items() if k not in DROPPED[name]}
    assert set(got) == set(expected)
    assert all(same(got[k], expected[k]) for k in expected)


def test_infos_follow_component_file_order(sd1_folder: Path) -> None:
    ck = open_diffusers(sd1_folder)
    names = [i.name for i in ck.infos()]
    ck.close()
    starts = [n.split(".")[0] for n in names]
    first = {s: starts.index(s) for s in dict.fromkeys(starts)}
    assert list(first) == ["model", "cond_stage_model", "first_stage_model"]  # unet, text encoder, vae
    assert names.count(names[0]) == 1 and len(set(names)) == len(names)


def test_dtype_cast_and_fp16_variant(tmp_path: Path) -> None:
    sd = tiny_state("sd15_ldm")
    plain = write_diffusers(sd, "sd1", tmp_path / "plain")
    half = write_diffusers(sd, "sd1", tmp_path / "half", dtype=torch.float16)
    for comp, base in (("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        os.replace(half / comp / f"{base}.safetensors", plain / comp / f"{base}.fp16.safetensors")
    got, ck = read_all(plain)
    assert got["model.diffusion_model.out.2.weight"].dtype == torch.float32
    assert any("variant" in f for f in ck.format().findings)
    got16, _ = read_all(plain, variant="fp16")
    assert got16["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert got16["first_stage_model.quant_conv.weight"].dtype == torch.float32  # vae has no fp16 file
    assert same(got16["model.diffusion_model.out.2.weight"], sd["model.diffusion_model.out.2.weight"].half())
    _, ck3 = read_all(plain, variant="bf16")  # missing variant: plain weights, as diffusers does
    assert any("no 'bf16' weights" in f for f in ck3.format().findings)
    os.replace(plain / "vae" / "diffusion_pytorch_model.safetensors", plain / "vae" / "x.bak")
    with pytest.raises(UnsupportedFormatError, match="no safetensors weights"):
        open_diffusers(plain, variant="fp16")


def shard(path: Path, base: str, n: int) -> None:
    """Replace ``path/<base>.safetensors`` by ``n`` shards and an index."""
    from safetensors.torch import load_file

    tensors = load_file(path / f"{base}.safetensors")
    (path / f"{base}.safetensors").unlink()
    keys = sorted(tensors)
    wmap: dict[str, str] = {}
    for i in range(n):
        name = f"{base}-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::n]}
        save_file(part, str(path / name))
        wmap.update(dict.fromkeys(part, name))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": wmap,
    }
    (path / f"{base}.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_component_and_lone_unet(sd1_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    shard(folder / "vae", "diffusion_pytorch_model", 3)
    got, ck = read_all(folder)
    ref, _ = read_all(sd1_folder)
    assert set(got) == set(ref) and all(same(got[k], ref[k]) for k in ref)
    assert ck.format().findings == ()
    lone, ck2 = read_all(folder / "unet")
    assert ck2.family == "sd1" and set(lone) == {k for k in ref if k.startswith("model.diffusion_model.")}
    vae, _ = read_all(folder / "vae")
    assert set(vae) == {k for k in ref if k.startswith("first_stage_model.")}


def test_open_sharded_plain_checkpoint(tmp_path: Path) -> None:
    sd = {k: v for k, v in tiny_state("sd15_ldm").items() if k.startswith("first_stage_model.")}
    save_file(sd, str(tmp_path / "model.safetensors"))
    shard(tmp_path, "model", 2)
    ck = open_sharded(tmp_path / "model.safetensors.index.json")
    got = {i.name: t for i, t in ck.tensors()}
    assert ck.format().container == "sharded-safetensors" and ck.format().findings == ()
    assert {i.source for i in ck.infos()} == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    ck.close()
    assert set(got) == set(sd) and all(same(got[k], sd[k]) for k in sd)


def test_hf_cache_blob_links_are_followed_but_confined(sd1_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models--org--sd"
    snap = repo / "snapshots" / "0123abcd"
    shutil.copytree(sd1_folder, snap)
    (repo / "blobs").mkdir()
    for comp in ("unet", "vae"):
        f = snap / comp / "diffusion_pytorch_model.safetensors"
        blob = repo / "blobs" / f"{comp}-sha"
        os.replace(f, blob)
        f.symlink_to(Path("../../../blobs") / blob.name)
    got, _ = read_all(snap)
    assert "model.diffusion_model.conv_in.weight" not in got  # canonical name is input_blocks.0.0
    assert "model.diffusion_model.input_blocks.0.0.weight" in got
    # a link into another cached repo's blobs leaves this repo: refused
    other = tmp_path / "models--other--x" / "blobs"
    other.mkdir(parents=True)
    target = other / "sha"
    shutil.copy(repo / "blobs" / "vae-sha", target)
    f = snap / "vae" / "diffusion_pytorch_model.safetensors"
    f.unlink()
    f.symlink_to(target)
    with pytest.raises(UnsafeFileError, match="outside the model folder"):
        open_diffusers(snap)


# ---------------------------------------------------------------- hostile folders


def one_line(err: pytest.ExceptionInfo[SdfError]) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def test_symlink_escaping_root_is_refused(sd1_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    f.unlink()
    f.symlink_to("/etc/passwd")
    with pytest.raises(UnsafeFileError) as err:
        open_diffusers(folder)
    assert "diffusion_pytorch_model.safetensors" in one_line(err) and "outside" in one_line(err)


def test_symlink_loop_and_dangling_link(sd1_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    f = folder / "unet" / "diffusion_pytorch_model.safetensors"
    f.unlink()
    (folder / "unet" / "a").symlink_to("b")
    (folder / "unet" / "b").symlink_to("a")
    f.symlink_to("a")
    with pytest.raises(UnsafeFileError, match="symlink loop") as err:
        open_diffusers(folder)
    one_line(err)
    f.unlink()
    f.symlink_to("nowhere")
    with pytest.raises(CorruptFileError, match="dangling"):
        open_diffusers(folder)


@pytest.mark.parametrize("where", ["unet/diffusion_pytorch_model.safetensors", "model_index.json"])
def test_fifo_is_refused_without_blocking(sd1_folder: Path, tmp_path: Path, where: str) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    (folder / where).unlink()
    os.mkfifo(folder / where)
    with pytest.raises(UnsafeFileError, match="not a regular file") as err:
        open_diffusers(folder)
    one_line(err)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "not an object"),
        (b'{"_class_name": "A", "_class_name": "B"}', "duplicate key"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested"),
        (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "deeper than"),
        (b"{}" + b" " * (JSON_CAP + 1), "cap"),
    ],
    ids=["truncated", "array", "duplicate", "nan", "not-utf8", "recursion", "depth", "huge"],
)
def test_bad_model_index(sd1_folder: Path, tmp_path: Path, content: bytes, message: str) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    (folder / "model_index.json").write_bytes(content)
    with pytest.raises(CorruptFileError, match=message) as err:
        open_diffusers(folder)
    assert "model_index.json" in one_line(err)


@pytest.mark.parametrize(
    ("shard_name", "error", "message"),
    [
        ("../../etc/passwd", UnsafeFileError, "outside the folder"),
        ("/etc/passwd", UnsafeFileError, "outside the folder"),
        ("model-missing.safetensors", CorruptFileError, "missing"),
    ],
)
def test_bad_weight_map(tmp_path: Path, shard_name: str, error: type[SdfError], message: str) -> None:
    save_file({"a": torch.zeros(2), "b": torch.ones(3)}, str(tmp_path / "model-1.safetensors"))
    index = {"weight_map": {"a": "model-1.safetensors", "b": shard_name}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(error, match=message) as err:
        open_sharded(tmp_path / "model.safetensors.index.json")
    assert "index.json" in one_line(err)


def test_weight_map_disagreeing_with_shards(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, str(tmp_path / "s1.safetensors"))
    save_file({"b": torch.zeros(2)}, str(tmp_path / "s2.safetensors"))
    index = {"weight_map": {"a": "s2.safetensors", "b": "s2.safetensors", "c": "s1.safetensors"}}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="weight_map puts"):
        open_sharded(tmp_path / "m.safetensors.index.json")


def test_remote_code_is_reported_never_imported(sd1_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(sd1_folder, tmp_path / "m")
    marker = tmp_path / "imported"
    (folder / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (folder / "unet" / "unet_custom.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "EvilPipeline"]
    index["safety_checker"] = ["evil_module", "Checker"]
    index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
    (folder / "model_index.json").write_text(json.dumps(index))
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "unet_custom.Evil"}
    cfg["_class_name"] = "EvilUNet"
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    got, ck = read_all(folder)
    findings = "\n".join(ck.format().findings)
    for expected in (
        "EvilPipeline",
        "evil_module",
        "auto_map",
        "EvilUNet",
        "pipeline.py",
        "unet_custom.py",
        "declares text_encoder_2",
    ):
        assert expected in findings, expected
    assert not marker.exists()
    assert "model.diffusion_model.out.2.weight" in got


def test_not_a_diffusers_folder(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError):
        open_diffusers(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(UnsupportedFormatError, match="no unet/"):
        open_diffusers(tmp_path)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(UnsupportedFormatError, match="no safetensors weights"):
        open_diffusers(tmp_path)


def test_writer_refuses_unknown_keys_and_existing_output(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="no diffusers counterpart"):
        write_diffusers({"junk.weight": torch.zeros(1)}, "sd1", tmp_path / "x")
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "keep").write_text("")
    with pytest.raises(FileExistsError):
        write_diffusers({"first_stage_model.quant_conv.bias": torch.zeros(8)}, "sd1", tmp_path / "y")


def test_hf_clip_position_ids_kept_and_unknown_tensors_reported(sd1_folder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = copy_folder(sd1_folder, tmp_path / "m")
    te = folder / "text_encoder" / "model.safetensors"
    weights = load_file(te)
    weights["text_model.embeddings.position_ids"] = torch.arange(1).reshape(1, 1)
    save_file(weights, str(te))
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(unet)
    weights["class_embedding.linear_1.weight"] = torch.ones(2, 2)
    save_file(weights, str(unet))
    got, ck = read_all(folder)
    assert got["cond_stage_model.transformer.text_model.embeddings.position_ids"].tolist() == [[0]]
    assert torch.equal(got["unet.class_embedding.linear_1.weight"], torch.ones(2, 2))
    assert any("no canonical name" in f for f in ck.format().findings)


def test_small_partial_state_dict_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    prefix = "conditioner.embedders.1.model."
    sd = {
        "model.diffusion_model.label_emb.0.0.weight": torch.randn(8, 12, generator=g),
        "model.diffusion_model.output_blocks.2.2.conv.weight": torch.randn(4, 4, 3, 3, generator=g),
        # the upsampler's slot (.1 or .2) follows from whether the block has attention: keep one
        "model.diffusion_model.output_blocks.2.1.proj_out.weight": torch.randn(4, 4, generator=g),
        "model.diffusion_model.middle_block.1.proj_in.weight": torch.randn(4, 4, generator=g),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": torch.randn(6, 6, 1, 1, generator=g),
        "first_stage_model.encoder.mid.attn_1.v.bias": torch.randn(6, generator=g),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": torch.randn(2, 4, 1, 1, generator=g),
        prefix + "transformer.resblocks.1.attn.in_proj_weight": torch.randn(12, 4, generator=g).half(),
        prefix + "transformer.resblocks.1.attn.in_proj_bias": torch.randn(12, generator=g).half(),
        prefix + "text_projection": torch.randn(4, 5, generator=g).half(),
        prefix + "token_embedding.weight": torch.randn(10, 4, generator=g).half(),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.randn(3, generator=g),
    }
    out = write_diffusers(sd, "sdxl", tmp_path / "m")
    got, ck = read_all(out)
    assert ck.family == "sdxl"
    assert set(got) == set(sd) and all(same(got[k], sd[k]) for k in sd)
    upsample = {i.name: i.source for i in ck.infos()}["model.diffusion_model.output_blocks.2.2.conv.weight"]
    assert upsample == "unet/diffusion_pytorch_model.safetensors"
