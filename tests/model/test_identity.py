"""What a file is: architecture, components, variants, layouts, metadata and problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import sdf
from safetensors.torch import save_file

from conftest import empty_library, sdf
from sdforensics.model.detect import detect, scaled
from sdforensics.readers.base import TensorInfo
from sdforensics.synth.specs import Base, FineTune, Merge, state_dict, write_ckpt, write_diffusers, write_safetensors

MANIFESTS = Path(__file__).resolve().parents[3] / "shared" / "manifests"
if not MANIFESTS.exists():  # CI lays shared/ beside the clone
    MANIFESTS = Path(__file__).resolve().parents[2].parent / "shared" / "manifests"


def _infos(table: dict, keep=lambda k: True, width: int = 1) -> list[TensorInfo]:
    return [TensorInfo(k, scaled(s, width), "F16", 0) for k, (s, _) in table.items() if keep(k)]


@pytest.mark.parametrize(
    ("manifest", "family", "tes"),
    [("sd15_ldm.json", "sd1", ["clip_l"]), ("sd21_768v_ldm.json", "sd2", ["openclip_h"]),
     ("sdxl_base_sgm.json", "sdxl", ["clip_l", "openclip_bigg"])],
)
def test_real_layouts_are_identified_with_components(manifest: str, family: str, tes: list[str]) -> None:
    table = json.loads((MANIFESTS / manifest).read_text())
    report = detect(_infos(table))
    assert report.family == family and report.match is not None and report.match.score == 1.0
    assert report.components == ("unet", "text_encoder", "vae")
    assert list(report.text_encoders) == tes
    assert report.n_missing == 0 and report.n_extra == 0
    unet_only = detect(_infos(table, lambda k: k.startswith("model.diffusion_model."), width=8))
    assert unet_only.family == family and unet_only.components == ("unet",) and unet_only.width_factor == 8
    assert "text_encoder" in unet_only.missing_components


def test_inpainting_and_pix2pix_variants_from_input_channels() -> None:
    table = json.loads((MANIFESTS / "sd15_ldm.json").read_text())
    key = "model.diffusion_model.input_blocks.0.0.weight"
    for channels, variant in ((9, "inpainting"), (8, "instruct-pix2pix")):
        infos = [TensorInfo(k, (320, channels, 3, 3) if k == key else tuple(s), "F16", 0) for k, (s, _) in table.items()]
        report = detect(infos)
        assert (report.family, report.variant) == ("sd1", variant)


def test_unknown_file_gets_closest_candidate_and_missing_keys() -> None:
    table = json.loads((MANIFESTS / "sd15_ldm.json").read_text())
    infos = _infos(table, lambda k: k.startswith("model.diffusion_model.output_blocks.1"))
    infos += [TensorInfo(f"my.custom.layer{i}", (4, 4), "F32", 64) for i in range(100)]
    report = detect(infos)
    assert report.family is None and "closest" in report.label
    assert report.n_missing > 0 and report.n_extra >= 100


def test_sd3_and_flux_are_recognised_by_name(tmp_path: Path) -> None:
    from sdforensics.model.architecture import architecture

    for name in ("sd3", "flux"):
        arch = architecture(name)
        report = detect([TensorInfo(k, s, "BF16", 0) for k, (s, _) in arch.keys.items()])
        assert report.family == name
    flux = architecture("flux")
    bare = [TensorInfo(k.removeprefix("model.diffusion_model."), s, "BF16", 0) for k, (s, _) in flux.keys.items()]
    from sdforensics.model.keymap import canonicalize

    mapping = canonicalize(i.name for i in bare)
    assert detect([TensorInfo(mapping.canonical[i.name], i.shape, i.dtype, 0) for i in bare]).family == "flux"


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_same_weights_as_ckpt_and_diffusers_give_same_keys_and_content_hashes(fam: str, tmp_path: Path) -> None:
    spec = FineTune(Base(fam, width=16, seed=5), seed=9)
    st = write_safetensors(spec, tmp_path / "m.safetensors")
    ck = write_ckpt(spec, tmp_path / "m.ckpt")
    df = write_diffusers(spec, tmp_path / "m-diffusers")
    docs = {}
    for path in (st, ck, df):
        res = sdf("analyze", path, "--format", "json", "--library", empty_library(tmp_path))
        assert res.exit_code == 0, res.stderr
        docs[path.suffix or "dir"] = json.loads(res.stdout)
    formats = {d["file"]["format"] for d in docs.values()}
    assert formats == {"safetensors", "pickle-zip", "diffusers"}
    hashes = {json.dumps(d["content_hashes"], sort_keys=True) for d in docs.values()}
    assert len(hashes) == 1, hashes
    assert {d["architecture"]["family"] for d in docs.values()} == {fam}
    assert {tuple(d["architecture"]["components"]) for d in docs.values()} == {("unet", "text_encoder", "vae")}
    assert docs[".ckpt"]["pickle"]["globals"], "a .ckpt shows the globals its pickle names"


def test_fp32_resave_keeps_content_hashes_and_is_flagged(tmp_path: Path) -> None:
    spec = Base("sd1", width=16, seed=2)
    a = write_safetensors(spec, tmp_path / "a16.safetensors", dtype=torch.float16)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict(spec, torch.float16).items()}
    b = tmp_path / "a32.safetensors"
    save_file(sd, str(b), metadata={"note": "re-saved"})
    ja = json.loads(sdf("analyze", a, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    jb = json.loads(sdf("analyze", b, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    assert ja["content_hashes"] == jb["content_hashes"]
    assert ja["file"]["sha256"] != jb["file"]["sha256"]
    assert any(p["code"] == "fp32_weights" for p in jb["problems"])


def test_broken_position_ids_nan_and_ema_are_problems(tmp_path: Path) -> None:
    sd = state_dict(Base("sd1", width=16, seed=1))
    key = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    sd[key] = torch.arange(77, dtype=torch.float32).reshape(1, 77)
    sd[key][0, 40] = 39.99998
    sd["model.diffusion_model.out.2.bias"] = torch.tensor([float("nan"), 0.0, 0.0, 0.0], dtype=torch.float16)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.diffusion_modelinput_blocks00weight"] = sd["model.diffusion_model.input_blocks.0.0.weight"].clone()
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    doc = json.loads(sdf("analyze", path, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    codes = {p["code"] for p in doc["problems"]}
    assert {"position_ids", "nonfinite", "ema_present"} <= codes
    pos = next(p for p in doc["problems"] if p["code"] == "position_ids")
    assert "index 40" in pos["message"] and pos["severity"] == "warning"
    assert "ema" in doc["architecture"]["components"]


def test_wild_key_layouts_are_normalised(tmp_path: Path) -> None:
    spec = Base("sd1", width=16, seed=1)

    def old_te(key: str) -> str:
        return key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")

    def bare_unet(key: str) -> str | None:
        return key.removeprefix("model.diffusion_model.") if key.startswith("model.diffusion_model.") else None

    a = write_safetensors(spec, tmp_path / "oldte.safetensors", keys=old_te)
    b = write_safetensors(spec, tmp_path / "unet.safetensors", keys=bare_unet)
    da = json.loads(sdf("analyze", a, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    db = json.loads(sdf("analyze", b, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    assert da["architecture"]["family"] == "sd1" and da["architecture"]["components"] == ["unet", "text_encoder", "vae"]
    assert any("text_model" in n for n in da["architecture"]["key_notes"])
    assert db["architecture"]["components"] == ["unet"]
    ref = json.loads(sdf("analyze", write_safetensors(spec, tmp_path / "ref.safetensors"), "-f", "json",
                         "--library", empty_library(tmp_path)).stdout)
    assert da["content_hashes"] == ref["content_hashes"]
    assert db["content_hashes"]["unet"] == ref["content_hashes"]["unet"]


def test_merge_metadata_is_decoded_and_shown(tmp_path: Path) -> None:
    recipe = {"type": "webui", "primary_model_hash": "aa" * 32, "secondary_model_hash": "bb" * 32,
              "tertiary_model_hash": None, "interp_method": "Weighted sum", "multiplier": 0.3}
    models = {"aa" * 32: {"name": "modelA", "legacy_hash": "12345678"}, "bb" * 32: {"name": "modelB"}}
    spec = Merge(((0.7, Base("sd1", width=16, seed=1)), (0.3, Base("sd1", width=16, seed=2))))
    path = write_safetensors(spec, tmp_path / "m.safetensors",
                             metadata={"sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(models),
                                       "modelspec.title": "My {{7*7}} mix"})
    res = sdf("analyze", path, "--library", empty_library(tmp_path))
    assert res.exit_code == 0
    assert "0.7 x modelA + 0.3 x modelB" in res.stdout
    assert "My {{7*7}} mix" in res.stdout  # shown, never rendered as a template
    sm = {"type": "sd-webui-supermerger", "mode": "Weight sum", "model_a": "aa" * 32, "model_b": "bb" * 32,
          "base_alpha": 0.25, "weights_alpha": "0.1,0.2,0.3", "mbw": True}
    path2 = write_safetensors(spec, tmp_path / "m2.safetensors",
                              metadata={"sd_merge_recipe": json.dumps(sm), "sd_merge_models": json.dumps(models)})
    doc = json.loads(sdf("analyze", path2, "-f", "json", "--library", empty_library(tmp_path)).stdout)
    declared = doc["metadata"]["declared"]
    assert declared["tool"] == "SuperMerger" and declared["block_weights"] == [0.1, 0.2, 0.3]


def test_missing_file_and_directory_errors_are_one_line(tmp_path: Path) -> None:
    res = sdf("analyze", tmp_path / "nope.safetensors")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "nope.safetensors" in res.stderr
    (tmp_path / "empty").mkdir()
    res = sdf("analyze", tmp_path / "empty")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
