"""Write a canonical-key state dict as a diffusers folder (the inverse of the diffusers reader).

The folder gets ``model_index.json``, one subfolder per component present (``unet``, ``vae``,
``text_encoder``, ``text_encoder_2``) with a ``config.json`` (right class names, fields derived
from the tensor shapes, fixed fields per family from ``data/diffusers_configs.json``) and
safetensors weights. Values are moved, never computed: reading the folder back with
:func:`sdforensics.readers.diffusers_reader.open_diffusers` gives the same canonical keys and
bit-identical values, except the keys diffusers has no place for
(:attr:`sdforensics.readers.diffusers_keys.KeyPlan.dropped`).

>>> import tempfile, torch
>>> sd = {"first_stage_model.decoder.mid.attn_1.q.weight": torch.ones(4, 4, 1, 1)}
>>> out = write_diffusers(sd, "sd1", Path(tempfile.mkdtemp()) / "tiny")
>>> sorted(p.name for p in out.iterdir())
['model_index.json', 'vae']
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sdforensics.core.errors import UnsupportedFormatError
from sdforensics.readers.diffusers_keys import COMPONENTS, FAMILIES, diffusers_configs, plan_from_ldm, to_diffusers

Tables = dict[str, dict[str, torch.Tensor]]


def _count(keys: Any, pattern: str) -> int:
    found = {m.group(1) for k in keys if (m := re.match(pattern, k))}
    return len(found)


def _dim(w: dict[str, torch.Tensor], key: str, axis: int, default: int) -> int:
    """A size read from a tensor's shape, or ``default`` when a partial state dict lacks it."""
    t = w.get(key)
    return int(t.shape[axis]) if t is not None and t.dim() > axis else default


def _unet_config(w: dict[str, torch.Tensor], fam: dict[str, Any]) -> dict[str, Any]:
    levels = _count(w, r"^down_blocks\.(\d+)\.") or 4
    lpb = _count(w, r"^down_blocks\.0\.resnets\.(\d+)\.") or 2
    chans = [_dim(w, f"down_blocks.{i}.resnets.0.conv2.weight", 0, 320 << min(i, 2)) for i in range(levels)]
    attn = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in w) for i in range(levels)]
    depth = [
        max(_count(w, rf"^down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\."), 1)
        for i in range(levels)
    ]
    cross = next((int(t.shape[1]) for k, t in w.items() if k.endswith("attn2.to_k.weight")), 768)
    cfg: dict[str, Any] = {**diffusers_configs()["unet_common"], **fam}
    heads = cfg.get("attention_head_dim")
    cfg.update(
        in_channels=_dim(w, "conv_in.weight", 1, 4),
        out_channels=_dim(w, "conv_out.weight", 0, 4),
        block_out_channels=chans,
        layers_per_block=lpb,
        cross_attention_dim=cross,
        attention_head_dim=[max(c // 64, 1) for c in chans] if heads == "channels/64" else heads,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        transformer_layers_per_block=depth if len(set(depth)) > 1 else (depth or [1])[0],
    )
    if "add_embedding.linear_1.weight" in w:
        cfg["projection_class_embeddings_input_dim"] = _dim(w, "add_embedding.linear_1.weight", 1, 2816)
    return cfg


def _vae_config(w: dict[str, torch.Tensor], fam: dict[str, Any]) -> dict[str, Any]:
    levels = _count(w, r"^encoder\.down_blocks\.(\d+)\.") or 4
    cfg: dict[str, Any] = {**diffusers_configs()["vae_common"], **fam}
    cfg.update(
        in_channels=_dim(w, "encoder.conv_in.weight", 1, 3),
        out_channels=_dim(w, "decoder.conv_out.weight", 0, 3),
        latent_channels=_dim(w, "post_quant_conv.weight", 0, 4),
        block_out_channels=[
            _dim(w, f"encoder.down_blocks.{i}.resnets.0.conv2.weight", 0, 128 << min(i, 2))
            for i in range(levels)
        ],
        layers_per_block=_count(w, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.") or 2,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )
    return cfg


def _text_config(w: dict[str, torch.Tensor], fam: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    hidden = _dim(w, "text_model.embeddings.token_embedding.weight", 1, 768)
    proj = "text_projection.weight" in w
    cfg: dict[str, Any] = {
        "architectures": ["CLIPTextModelWithProjection" if proj else "CLIPTextModel"],
        **diffusers_configs()["text_common"],
        **fam,
        "hidden_size": hidden,
        "intermediate_size": _dim(w, "text_model.encoder.layers.0.mlp.fc1.weight", 0, 4 * hidden),
        "num_hidden_layers": _count(w, r"^text_model\.encoder\.layers\.(\d+)\."),
        "num_attention_heads": max(hidden // 64, 1),
        "max_position_embeddings": _dim(w, "text_model.embeddings.position_embedding.weight", 0, 77),
        "vocab_size": _dim(w, "text_model.embeddings.token_embedding.weight", 0, 49408),
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if proj:
        cfg["projection_dim"] = _dim(w, "text_projection.weight", 0, hidden)
    return cfg


def _split(state_dict: dict[str, torch.Tensor], family: str, dtype: torch.dtype | None) -> Tables:
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    plan = plan_from_ldm(shapes, family)
    if plan.unmapped:
        raise UnsupportedFormatError(
            f"{len(plan.unmapped)} key(s) have no diffusers counterpart, e.g. {plan.unmapped[0]!r}; "
            "pass canonical single-file keys only"
        )
    tables: Tables = {}
    for rule in plan.rules:
        tensor = state_dict[rule.canonical]
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        for part, value in zip(rule.parts, to_diffusers(rule, tensor), strict=True):
            # clone: safetensors refuses tensors that share storage (q/k/v are views of in_proj)
            tables.setdefault(part.component, {})[part.key] = value.detach().cpu().contiguous().clone()
    return tables


def write_diffusers(
    state_dict: dict[str, torch.Tensor], family: str, out_dir: Path, dtype: torch.dtype | None = None
) -> Path:
    """Write ``state_dict`` (canonical ldm/sgm keys) as a diffusers folder at ``out_dir``.

    ``family`` is ``sd1``, ``sd2``, ``sdxl`` or ``sdxl_refiner``; ``dtype`` casts floating
    tensors (``None`` keeps each tensor's dtype). ``out_dir`` must not exist or be empty; the
    folder is assembled next to it and renamed into place, so nothing is left half-written.
    Returns ``out_dir``.

    >>> import tempfile, torch
    >>> sd = {"first_stage_model.quant_conv.bias": torch.zeros(8)}
    >>> write_diffusers(sd, "sdxl", Path(tempfile.mkdtemp()) / "m").name
    'm'
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir}: exists and is not an empty folder")
    tables = _split(state_dict, family, dtype)
    cfg = diffusers_configs()
    fam = cfg["families"][family]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        index: dict[str, Any] = {
            "_class_name": fam["pipeline"],
            "_diffusers_version": cfg["diffusers_version"],
            **fam["model_index"],
        }
        for comp in COMPONENTS:
            weights = tables.get(comp)
            if not weights:
                continue
            first = next(iter(weights.values())).dtype
            if comp == "unet":
                config = _unet_config(weights, fam["unet"])
            elif comp == "vae":
                config = _vae_config(weights, fam["vae"])
            else:
                config = _text_config(weights, fam.get(comp, {}), first)
            if comp in ("unet", "vae"):
                config["_diffusers_version"] = cfg["diffusers_version"]
                index[comp] = ["diffusers", config["_class_name"]]
            else:
                index[comp] = ["transformers", config["architectures"][0]]
            sub = tmp / comp
            sub.mkdir()
            (sub / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
            save_file(
                weights, str(sub / f"{cfg['weight_names'][comp]}.safetensors"), metadata={"format": "pt"}
            )
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.chmod(tmp, 0o755)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
