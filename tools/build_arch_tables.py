"""Regenerate sdforensics/data/arch/*.json from the key/shape manifests in ../shared.

The tables are committed; this script documents where they come from and rebuilds them:

    python tools/build_arch_tables.py ../shared/manifests

Sources: shared/manifests/*.json (SD1.5, SD2.1-768-v, SDXL base; sd-mecha 1.1.8 configs,
cross-checked against CompVis/Stability code) and the sd-mecha YAML configs for SD3 and FLUX.1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "sdforensics" / "data" / "arch"

DT = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3"}


def from_manifest(path: Path) -> dict[str, list]:
    raw = json.loads(path.read_text())
    return {k: [list(shape), DT[dtype]] for k, (shape, dtype) in raw.items()}


def from_mecha(path: Path, components: dict[str, str]) -> dict[str, list]:
    cfg = yaml.safe_load(path.read_text())
    out: dict[str, list] = {}
    for comp in components:
        for key, spec in cfg["components"][comp].items():
            if spec.get("optional"):
                continue
            out[key] = [list(spec["shape"]), DT.get(spec["dtype"], "F16")]
    return out


# Weights left out of component content hashes: unused at inference and dropped by diffusers
# (SD2 uses OpenCLIP's penultimate layer, so layer 23 and the projection never run; logit_scale
# is a training-time scalar), so a diffusers copy hashes the same as the single file.
CONTENT_HASH_EXCLUDE = {
    "sd2": [r"^cond_stage_model\.model\.logit_scale$", r"^cond_stage_model\.model\.text_projection$",
            r"^cond_stage_model\.model\.transformer\.resblocks\.23\."],
    "sdxl": [r"^conditioner\.embedders\.1\.model\.logit_scale$"],
}


def write(name: str, doc: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    doc["content_hash_exclude"] = CONTENT_HASH_EXCLUDE.get(name, [])
    keys = doc.pop("keys")
    doc["keys"] = {k: keys[k] for k in sorted(keys)}
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=0, separators=(",", ":")) + "\n")


def main(shared: Path) -> None:
    summary = json.loads((shared / "manifests_summary.json").read_text())
    mecha = shared / "sd-mecha-1.1.8-model_configs"
    write("sd1", {
        "name": "sd1", "family": "sd1", "label": "Stable Diffusion 1.x",
        "source": "shared/manifests/sd15_ldm.json",
        "components": {"unet": ["model.diffusion_model."], "text_encoder": ["cond_stage_model.transformer."],
                       "vae": ["first_stage_model."]},
        "text_encoders": {"clip_l": "cond_stage_model.transformer."},
        "blocks": "sd1", "full": True,
        "optional_keys": {k: [s, DT[d]] for k, (s, d) in summary["sd15_ldm.json"]["optional_keys"].items()},
        "keys": from_manifest(shared / "sd15_ldm.json"),
    })
    write("sd2", {
        "name": "sd2", "family": "sd2", "label": "Stable Diffusion 2.x",
        "source": "shared/manifests/sd21_768v_ldm.json",
        "components": {"unet": ["model.diffusion_model."], "text_encoder": ["cond_stage_model.model."],
                       "vae": ["first_stage_model."]},
        "text_encoders": {"openclip_h": "cond_stage_model.model."},
        "blocks": "sd1", "full": True,
        "optional_keys": {k: [s, DT[d]] for k, (s, d) in summary["sd21_768v_ldm.json"]["optional_keys"].items()},
        "keys": from_manifest(shared / "sd21_768v_ldm.json"),
    })
    write("sdxl", {
        "name": "sdxl", "family": "sdxl", "label": "Stable Diffusion XL (base)",
        "source": "shared/manifests/sdxl_base_sgm.json",
        "components": {"unet": ["model.diffusion_model."],
                       "text_encoder": ["conditioner.embedders.0.", "conditioner.embedders.1."],
                       "vae": ["first_stage_model."]},
        "text_encoders": {"clip_l": "conditioner.embedders.0.", "openclip_bigg": "conditioner.embedders.1."},
        "blocks": "sdxl", "full": True,
        "optional_keys": {k: [s, DT[d]] for k, (s, d) in summary["sdxl_base_sgm.json"]["optional_keys"].items()},
        "keys": from_manifest(shared / "sdxl_base_sgm.json"),
    })
    write("sd3", {
        "name": "sd3", "family": "sd3", "label": "Stable Diffusion 3 / 3.5 (MMDiT)",
        "source": "sd-mecha 1.1.8 model_configs/sd3-comfyui.yaml",
        "components": {"unet": ["model.diffusion_model."], "text_encoder": ["text_encoders."],
                       "vae": ["first_stage_model."]},
        "text_encoders": {"clip_l": "text_encoders.clip_l.", "clip_g": "text_encoders.clip_g.",
                          "t5xxl": "text_encoders.t5xxl."},
        "blocks": None, "full": True, "optional_keys": {},
        "keys": from_mecha(mecha / "sd3-comfyui.yaml", {"diffuser": "", "vae": "", "clip_g": "", "clip_l": "",
                                                        "t5xxl": ""}),
    })
    write("flux", {
        "name": "flux", "family": "flux", "label": "FLUX.1 (transformer)",
        "source": "sd-mecha 1.1.8 model_configs/flux-flux.yaml",
        "components": {"unet": ["model.diffusion_model."]},
        "text_encoders": {},
        "blocks": None, "full": True, "optional_keys": {},
        "keys": from_mecha(mecha / "flux-flux.yaml", {"diffuser": ""}),
    })


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/manifests"))
