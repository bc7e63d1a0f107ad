"""Canonical single-file (ldm/sgm) keys <-> diffusers folder keys, both directions.

A :class:`Rule` ties one canonical tensor to the diffusers tensor(s) it is made of. Most rules
are a rename (``copy``); three change the values' layout, exactly and reversibly:

* ``conv1x1``: VAE mid-block attention ``q/k/v/proj_out`` are ``[C, C, 1, 1]`` convolutions in
  ldm and ``[C, C]`` linears (``to_q/to_k/to_v/to_out.0``) in diffusers;
* ``transpose``: OpenCLIP ``text_projection`` is ``[width, proj]``, diffusers stores
  ``text_projection.weight`` as its transpose;
* ``concat``: OpenCLIP ``attn.in_proj_{weight,bias}`` is ``cat(q, k, v)`` along dim 0, diffusers
  keeps ``self_attn.{q,k,v}_proj`` apart (three parts, in that order).

Rename tables are data (``data/diffusers_keys.json``); block numbering is arithmetic here.
Some canonical keys have no diffusers counterpart and are dropped on the way out (see
:func:`plan_from_ldm`): CLIP ``position_ids`` (a buffer transformers no longer saves), OpenCLIP
``logit_scale``, and for SD2 (``CLIPTextModel`` without projection, 23 of 24 layers) also
``text_projection`` and the last ``transformer.resblocks.23.*``.

>>> plan = plan_from_ldm({"first_stage_model.decoder.mid.attn_1.q.weight": (4, 4, 1, 1)})
>>> rule = plan.rules[0]
>>> rule.parts[0].component, rule.parts[0].key, rule.op
('vae', 'decoder.mid_block.attentions.0.to_q.weight', 'conv1x1')
>>> part_shapes(rule, (4, 4, 1, 1))
[(4, 4)]
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

COMPONENTS = ("unet", "text_encoder", "text_encoder_2", "vae")
"""Diffusers components whose weights map to canonical keys, in the order readers use."""

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Part:
    """One diffusers tensor: its component folder and its key there."""

    component: str
    key: str


@dataclass(frozen=True)
class Rule:
    """A canonical tensor and the diffusers part(s) it is made of."""

    canonical: str
    parts: tuple[Part, ...]
    op: str = "copy"
    """``copy``, ``conv1x1``, ``transpose`` or ``concat`` (see the module docstring)."""


@dataclass(frozen=True)
class KeyPlan:
    """The mapping of one key table, in either direction."""

    family: str
    rules: tuple[Rule, ...]
    dropped: tuple[str, ...] = ()
    """Canonical keys that diffusers has no place for (ldm -> diffusers direction only)."""
    unmapped: tuple[str, ...] = ()
    """Keys we do not understand: canonical keys, or ``component/key`` on the diffusers side."""


@lru_cache(maxsize=1)
def _tables() -> dict[str, Any]:
    text = resources.files("sdforensics").joinpath("data/diffusers_keys.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    if data.get("format") != "sdforensics.diffusers_keys" or data.get("version") != 1:
        raise RuntimeError("sdforensics/data/diffusers_keys.json: unexpected format or version")
    return data


@lru_cache(maxsize=1)
def diffusers_configs() -> dict[str, Any]:
    """``data/diffusers_configs.json``: known pipeline classes and libraries, config fields per family."""
    text = resources.files("sdforensics").joinpath("data/diffusers_configs.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    if data.get("format") != "sdforensics.diffusers_configs" or data.get("version") != 1:
        raise RuntimeError("sdforensics/data/diffusers_configs.json: unexpected format or version")
    return data


def _pairs(name: str, reverse: bool = False) -> dict[str, str]:
    rows = _tables()[name]
    return {(r[1] if reverse else r[0]): (r[0] if reverse else r[1]) for r in rows}


_INT = re.compile(r"^\d+$")


def _ints(*parts: str) -> bool:
    return all(_INT.match(p) for p in parts)


# ---------------------------------------------------------------- UNet


def _unet_layers(keys: Iterable[str], canonical: bool) -> int:
    """layers_per_block: ldm from the first downsample index, diffusers from resnets per block."""
    if canonical:
        ops = [int(k.split(".")[1]) for k in keys if re.match(r"^input_blocks\.\d+\.0\.op\.", k)]
        return min(ops) - 1 if ops else 2
    js = {k.split(".")[3] for k in keys if re.match(r"^down_blocks\.0\.resnets\.\d+\.", k)}
    return len(js) or 2


def _rename_inner(rest: list[str], table: Mapping[str, str]) -> str | None:
    inner, leaf = ".".join(rest[:-1]), rest[-1]
    new = table.get(inner)
    return None if new is None else f"{new}.{leaf}"


def _unet_to_diffusers(local: str, lpb: int) -> str | None:
    module, _, leaf = local.rpartition(".")
    top = _pairs("unet_modules")
    if module in top:
        return f"{top[module]}.{leaf}"
    p = local.split(".")
    resnet = _pairs("unet_resnet")
    if p[0] in ("input_blocks", "output_blocks") and len(p) >= 5 and _ints(p[1], p[2]):
        k, m, rest = int(p[1]), int(p[2]), p[3:]
        if p[0] == "input_blocks":
            if k == 0:
                return None
            if m == 0 and rest[0] == "op":
                return f"down_blocks.{k // (lpb + 1) - 1}.downsamplers.0.conv." + ".".join(rest[1:])
            i, j = divmod(k - 1, lpb + 1)
            kind = "down_blocks"
        else:
            i, j = divmod(k, lpb + 1)
            if m in (1, 2) and rest[0] == "conv":
                return f"up_blocks.{i}.upsamplers.0.conv." + ".".join(rest[1:])
            kind = "up_blocks"
        if m == 0:
            inner = _rename_inner(rest, resnet)
            return None if inner is None else f"{kind}.{i}.resnets.{j}.{inner}"
        return f"{kind}.{i}.attentions.{j}." + ".".join(rest) if m == 1 else None
    if p[0] == "middle_block" and len(p) >= 4 and _ints(p[1]):
        m, rest = int(p[1]), p[2:]
        if m == 1:
            return "mid_block.attentions.0." + ".".join(rest)
        if m in (0, 2):
            inner = _rename_inner(rest, resnet)
            return None if inner is None else f"mid_block.resnets.{m // 2}.{inner}"
    return None


def _unet_to_ldm(local: str, lpb: int, up_attn: set[int]) -> str | None:
    module, _, leaf = local.rpartition(".")
    top = _pairs("unet_modules", reverse=True)
    if module in top:
        return f"{top[module]}.{leaf}"
    p = local.split(".")
    resnet = _pairs("unet_resnet", reverse=True)
    if p[0] in ("down_blocks", "up_blocks") and len(p) >= 6 and _ints(p[1], p[3]):
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        down = p[0] == "down_blocks"
        if kind in ("downsamplers", "upsamplers") and j == 0 and rest[0] == "conv":
            tail = ".".join(rest[1:])
            if down and kind == "downsamplers":
                return f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.{tail}"
            if not down and kind == "upsamplers":
                return f"output_blocks.{(lpb + 1) * i + lpb}.{2 if i in up_attn else 1}.conv.{tail}"
            return None
        block = f"input_blocks.{(lpb + 1) * i + j + 1}" if down else f"output_blocks.{(lpb + 1) * i + j}"
        if kind == "resnets":
            inner = _rename_inner(rest, resnet)
            return None if inner is None else f"{block}.0.{inner}"
        return f"{block}.1." + ".".join(rest) if kind == "attentions" else None
    if p[0] == "mid_block" and len(p) >= 5 and _ints(p[2]):
        kind, j, rest = p[1], int(p[2]), p[3:]
        if kind == "attentions" and j == 0:
            return "middle_block.1." + ".".join(rest)
        if kind == "resnets" and j in (0, 1):
            inner = _rename_inner(rest, resnet)
            return None if inner is None else f"middle_block.{2 * j}.{inner}"
    return None


# ---------------------------------------------------------------- VAE


def _vae_to_diffusers(local: str, levels: int) -> tuple[str, str] | None:
    module, _, leaf = local.rpartition(".")
    top = _pairs("vae_modules")
    if module in top:
        return f"{top[module]}.{leaf}", "copy"
    p = local.split(".")
    if len(p) < 4 or p[0] not in ("encoder", "decoder"):
        return None
    coder, resnet = p[0], _pairs("vae_resnet")
    if p[1] in ("down", "up") and _ints(p[2]) and len(p) >= 5:
        i = int(p[2]) if p[1] == "down" else levels - 1 - int(p[2])
        blocks = f"{coder}.{p[1]}_blocks.{i}"
        if p[3] == "block" and _ints(p[4]) and len(p) >= 7:
            inner = _rename_inner(p[5:], resnet)
            return None if inner is None else (f"{blocks}.resnets.{p[4]}.{inner}", "copy")
        if p[3] in ("downsample", "upsample"):
            return f"{blocks}.{p[3]}rs.0." + ".".join(p[4:]), "copy"
        return None
    if p[1] == "mid" and p[2] in ("block_1", "block_2"):
        inner = _rename_inner(p[3:], resnet)
        j = int(p[2][-1]) - 1
        return None if inner is None else (f"{coder}.mid_block.resnets.{j}.{inner}", "copy")
    if p[1] == "mid" and p[2] == "attn_1" and len(p) == 5:
        for ldm, diff, op in _tables()["vae_attention"]:
            if p[3] == ldm:
                return f"{coder}.mid_block.attentions.0.{diff}.{p[4]}", op if p[4] == "weight" else "copy"
    return None


def _vae_to_ldm(local: str, levels: int) -> tuple[str, str] | None:
    module, _, leaf = local.rpartition(".")
    top = _pairs("vae_modules", reverse=True)
    if module in top:
        return f"{top[module]}.{leaf}", "copy"
    p = local.split(".")
    if len(p) < 5 or p[0] not in ("encoder", "decoder"):
        return None
    coder, resnet = p[0], _pairs("vae_resnet", reverse=True)
    if p[1] in ("down_blocks", "up_blocks") and _ints(p[2], p[4]):
        up = p[1] == "up_blocks"
        i = levels - 1 - int(p[2]) if up else int(p[2])
        blocks = f"{coder}.{'up' if up else 'down'}.{i}"
        if p[3] == "resnets" and len(p) >= 7:
            inner = _rename_inner(p[5:], resnet)
            return None if inner is None else (f"{blocks}.block.{p[4]}.{inner}", "copy")
        if p[3] == ("upsamplers" if up else "downsamplers") and p[4] == "0":
            return f"{blocks}.{'upsample' if up else 'downsample'}." + ".".join(p[5:]), "copy"
        return None
    if p[1] == "mid_block" and p[2] == "resnets" and p[3] in ("0", "1"):
        inner = _rename_inner(p[4:], resnet)
        return None if inner is None else (f"{coder}.mid.block_{int(p[3]) + 1}.{inner}", "copy")
    if p[1] == "mid_block" and p[2] == "attentions" and p[3] == "0":
        name, leaf = ".".join(p[4:-1]), p[-1]
        name = _tables()["vae_attention_legacy"].get(name, name)
        for ldm, diff, op in _tables()["vae_attention"]:
            if name == diff:
                return f"{coder}.mid.attn_1.{ldm}.{leaf}", op if leaf == "weight" else "copy"
    return None


def _vae_levels(keys: Iterable[str], canonical: bool) -> int:
    pat = r"^encoder\.down\.(\d+)\." if canonical else r"^decoder\.up_blocks\.(\d+)\."
    found = {int(m.group(1)) for k in keys if (m := re.match(pat, k))}
    return max(found) + 1 if found else 4


# ---------------------------------------------------------------- text encoders

_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def _openclip_to_diffusers(local: str) -> tuple[list[str], str] | None:
    """canonical local key -> (diffusers key(s), op)."""
    for ldm, diff, op in _tables()["openclip_modules"]:
        if local == ldm:
            return [diff], op
    m = _IN_PROJ.match(local)
    if m:
        n, leaf = m.groups()
        return [f"text_model.encoder.layers.{n}.self_attn.{x}_proj.{leaf}" for x in "qkv"], "concat"
    m = _LAYER.match(local)
    if not m:
        return None
    n, module, leaf = m.groups()
    new = _pairs("openclip_layer").get(module)
    return ([f"text_model.encoder.layers.{n}.{new}.{leaf}"], "copy") if new else None


def _openclip_to_ldm(key: str) -> tuple[str, str] | None:
    """diffusers key -> (canonical local key, op); q/k/v parts map to their in_proj key."""
    for ldm, diff, op in _tables()["openclip_modules"]:
        if key == diff:
            return ldm, op
    m = _HF_LAYER.match(key)
    if not m:
        return None
    n, module, leaf = m.groups()
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"transformer.resblocks.{n}.attn.in_proj_{leaf}", "concat"
    old = _pairs("openclip_layer", reverse=True).get(module)
    return (f"transformer.resblocks.{n}.{old}.{leaf}", "copy") if old else None


# ---------------------------------------------------------------- family detection


def _family_from_unet(shapes: Mapping[str, Sequence[int]], canonical: bool) -> str:
    cross = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    known = _tables()["cross_attention_dim"].get(str(cross))
    add = any(k.startswith("label_emb." if canonical else "add_embedding.") for k in shapes)
    if add:
        if known in ("sdxl", "sdxl_refiner"):
            return str(known)
        pat = r"^input_blocks\.(\d+)\." if canonical else r"^down_blocks\.(\d+)\."
        levels = {m.group(1) for k in shapes if (m := re.match(pat, k))}
        return "sdxl" if len(levels) <= (9 if canonical else 3) else "sdxl_refiner"
    if known in ("sd1", "sd2"):
        return str(known)
    proj = next((s for k, s in shapes.items() if k.endswith(".proj_in.weight")), None)
    if proj is None:
        return "unknown"
    return "sd2" if len(proj) == 2 else "sd1"


def detect_family_ldm(shapes: Mapping[str, Sequence[int]]) -> str:
    """Family of a canonical key/shape table: ``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner`` or ``unknown``.

    >>> detect_family_ldm({"cond_stage_model.model.ln_final.weight": (1024,)})
    'sd2'
    """
    for prefix, spec in _tables()["text_encoders"].items():
        if spec["kind"] == "openclip" and any(k.startswith(prefix) for k in shapes):
            return str(spec["family"])
    for prefix, spec in _tables()["text_encoders"].items():
        if any(k.startswith(prefix) for k in shapes):
            return str(spec["family"])
    unet_prefix = _tables()["unet_prefix"]
    unet = {k[len(unet_prefix) :]: s for k, s in shapes.items() if k.startswith(unet_prefix)}
    return _family_from_unet(unet, canonical=True) if unet else "unknown"


def detect_family_diffusers(components: Mapping[str, Mapping[str, Sequence[int]]]) -> str:
    """Family of a diffusers folder from its components' key/shape tables (never config class names).

    >>> detect_family_diffusers({"unet": {"add_embedding.linear_1.weight": (1280, 2816),
    ...     "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, 2048)}})
    'sdxl'
    """
    unet = components.get("unet") or {}
    cross = next((s[1] for k, s in unet.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    known = _tables()["cross_attention_dim"].get(str(cross))
    if known is not None:
        return str(known)
    if components.get("text_encoder_2"):
        return "sdxl" if components.get("text_encoder") else "sdxl_refiner"
    if unet:
        family = _family_from_unet(unet, canonical=False)
        if family != "unknown":
            return family
    te = components.get("text_encoder")
    if te:
        emb = te.get("text_model.embeddings.token_embedding.weight")
        return "sd2" if emb is not None and len(emb) == 2 and emb[1] == 1024 else "sd1"
    return "unknown"


# ---------------------------------------------------------------- plans


def plan_from_ldm(shapes: Mapping[str, Sequence[int]], family: str | None = None) -> KeyPlan:
    """Map a canonical key/shape table to diffusers: rules, dropped keys, unmapped keys.

    >>> plan = plan_from_ldm({"cond_stage_model.model.logit_scale": ()})
    >>> plan.family, plan.dropped
    ('sd2', ('cond_stage_model.model.logit_scale',))
    """
    tables = _tables()
    family = family or detect_family_ldm(shapes)
    unet_prefix, vae_prefix = tables["unet_prefix"], tables["vae_prefix"]
    unet_keys = [k[len(unet_prefix) :] for k in shapes if k.startswith(unet_prefix)]
    vae_keys = [k[len(vae_prefix) :] for k in shapes if k.startswith(vae_prefix)]
    lpb, levels = _unet_layers(unet_keys, canonical=True), _vae_levels(vae_keys, canonical=True)
    last_layer: dict[str, int] = {}
    for key in shapes:
        for prefix in tables["text_encoders"]:
            m = _RESBLOCK.match(key[len(prefix) :]) if key.startswith(prefix) else None
            if m:
                last_layer[prefix] = max(last_layer.get(prefix, -1), int(m.group(1)))
    rules: list[Rule] = []
    dropped: list[str] = []
    unmapped: list[str] = []
    for key in shapes:
        got = _ldm_key_to_diffusers(key, lpb, levels, last_layer)
        if got is None:
            unmapped.append(key)
        elif isinstance(got, str):
            dropped.append(key)
        else:
            rules.append(got)
    return KeyPlan(family, tuple(rules), tuple(dropped), tuple(unmapped))


def _ldm_key_to_diffusers(
    key: str, lpb: int, levels: int, last_layer: Mapping[str, int]
) -> Rule | str | None:
    """One canonical key -> its rule, ``"drop"`` (no diffusers counterpart) or None (unknown)."""
    tables = _tables()
    if key.startswith(tables["unet_prefix"]):
        diff = _unet_to_diffusers(key[len(tables["unet_prefix"]) :], lpb)
        return None if diff is None else Rule(key, (Part("unet", diff),))
    if key.startswith(tables["vae_prefix"]):
        got = _vae_to_diffusers(key[len(tables["vae_prefix"]) :], levels)
        return None if got is None else Rule(key, (Part("vae", got[0]),), got[1])
    for prefix, spec in tables["text_encoders"].items():
        if not key.startswith(prefix):
            continue
        local, comp = key[len(prefix) :], spec["component"]
        if spec["kind"] == "hf_clip":
            if local in tables["hf_clip_dropped"]:
                return "drop"
            return Rule(key, (Part(comp, local),)) if local.startswith("text_model.") else None
        if local in tables["openclip_dropped"] or (local == "text_projection" and not spec["projection"]):
            return "drop"
        m = _RESBLOCK.match(local)
        if m and spec["drop_last_layer"] and int(m.group(1)) == last_layer.get(prefix):
            return "drop"
        got2 = _openclip_to_diffusers(local)
        if got2 is None:
            return None
        return Rule(key, tuple(Part(comp, d) for d in got2[0]), got2[1])
    return None


def plan_from_diffusers(
    components: Mapping[str, Mapping[str, Sequence[int]]], family: str | None = None
) -> KeyPlan:
    """Map diffusers component key/shape tables to canonical keys.

    ``components`` maps a component name (``unet``, ``vae``, ``text_encoder``,
    ``text_encoder_2``) to its ``{key: shape}`` table. A ``concat`` rule is made only when all
    of q, k and v are present; lone parts are reported in ``unmapped``.

    >>> plan = plan_from_diffusers({"vae": {"decoder.conv_norm_out.weight": (128,)}})
    >>> plan.rules[0].canonical
    'first_stage_model.decoder.norm_out.weight'
    """
    tables = _tables()
    family = family or detect_family_diffusers(components)
    prefixes: dict[str, str] = dict(tables["families"].get(family, {}))
    rules: dict[str, list[Any]] = {}
    unmapped: list[str] = []
    for comp, shapes in components.items():
        keys = list(shapes)
        prefix = prefixes.get(comp)
        if comp == "unet":
            lpb = _unet_layers(keys, canonical=False)
            up_attn = {int(k.split(".")[1]) for k in keys if re.match(r"^up_blocks\.\d+\.attentions\.", k)}
        elif comp == "vae":
            levels = _vae_levels(keys, canonical=False)
        for key in keys:
            got: tuple[str, str] | None = None
            if comp == "unet":
                name = _unet_to_ldm(key, lpb, up_attn)
                got = None if name is None else (tables["unet_prefix"] + name, "copy")
            elif comp == "vae":
                got2 = _vae_to_ldm(key, levels)
                got = None if got2 is None else (tables["vae_prefix"] + got2[0], got2[1])
            elif prefix is not None and tables["text_encoders"][prefix]["kind"] == "hf_clip":
                got = (prefix + key, "copy") if key.startswith("text_model.") else None
            elif prefix is not None:
                got3 = _openclip_to_ldm(key)
                got = None if got3 is None else (prefix + got3[0], got3[1])
            if got is None:
                unmapped.append(f"{comp}/{key}")
                continue
            entry = rules.setdefault(got[0], [got[1], []])
            entry[1].append(Part(comp, key))
    out: list[Rule] = []
    for canonical, (op, parts) in rules.items():
        if op == "concat":
            order = {f"{x}_proj": i for i, x in enumerate("qkv")}
            parts.sort(key=lambda p: order[p.key.split(".")[-2]])
            names = [p.key.split(".")[-2] for p in parts]
            if names != ["q_proj", "k_proj", "v_proj"]:
                unmapped.extend(f"{p.component}/{p.key}" for p in parts)
                continue
        elif len(parts) != 1:
            unmapped.extend(f"{p.component}/{p.key}" for p in parts)
            continue
        out.append(Rule(canonical, tuple(parts), op))
    return KeyPlan(family, tuple(out), (), tuple(unmapped))


# ---------------------------------------------------------------- shapes and values


def part_shapes(rule: Rule, shape: Sequence[int]) -> list[Shape]:
    """Shapes of the diffusers parts of a canonical tensor of ``shape``."""
    s = tuple(shape)
    if rule.op == "conv1x1" and len(s) == 4:
        return [s[:2]]
    if rule.op == "transpose" and len(s) == 2:
        return [(s[1], s[0])]
    if rule.op == "concat":
        return [(s[0] // 3, *s[1:])] * 3
    return [s]


def canonical_shape(rule: Rule, shapes: Sequence[Sequence[int]]) -> Shape:
    """Shape of the canonical tensor built from parts of ``shapes``."""
    s = tuple(shapes[0])
    if rule.op == "conv1x1" and len(s) == 2:
        return (*s, 1, 1)
    if rule.op == "transpose" and len(s) == 2:
        return (s[1], s[0])
    if rule.op == "concat":
        return (sum(int(x[0]) for x in shapes), *s[1:])
    return s


def to_diffusers(rule: Rule, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Split/reshape one canonical tensor into its diffusers parts (exact, no arithmetic)."""
    import torch

    if rule.op == "conv1x1" and tensor.dim() == 4:
        return [tensor.reshape(tensor.shape[0], tensor.shape[1])]
    if rule.op == "transpose" and tensor.dim() == 2:
        return [tensor.t().contiguous()]
    if rule.op == "concat":
        if tensor.shape[0] % 3:
            raise ValueError(f"{rule.canonical}: first dimension {tensor.shape[0]} is not divisible by 3")
        return [c.contiguous() for c in torch.chunk(tensor, 3, dim=0)]
    return [tensor]


def to_canonical(rule: Rule, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Join/reshape diffusers parts into the canonical tensor (exact, no arithmetic)."""
    import torch

    t = parts[0]
    if rule.op == "conv1x1" and t.dim() == 2:
        return t.reshape(*t.shape, 1, 1)
    if rule.op == "transpose" and t.dim() == 2:
        return t.t().contiguous()
    if rule.op == "concat":
        return torch.cat(list(parts), dim=0)
    return t


def ldm_to_diffusers_shapes(
    shapes: Mapping[str, Sequence[int]], family: str | None = None
) -> tuple[dict[str, dict[str, Shape]], KeyPlan]:
    """Canonical ``{key: shape}`` -> ``{component: {diffusers key: shape}}`` and the plan used."""
    plan = plan_from_ldm(shapes, family)
    out: dict[str, dict[str, Shape]] = {}
    for rule in plan.rules:
        for part, shape in zip(rule.parts, part_shapes(rule, shapes[rule.canonical]), strict=True):
            out.setdefault(part.component, {})[part.key] = shape
    return out, plan


def diffusers_to_ldm_shapes(
    components: Mapping[str, Mapping[str, Sequence[int]]], family: str | None = None
) -> tuple[dict[str, Shape], KeyPlan]:
    """``{component: {diffusers key: shape}}`` -> canonical ``{key: shape}`` and the plan used."""
    plan = plan_from_diffusers(components, family)
    out = {
        r.canonical: canonical_shape(r, [components[p.component][p.key] for p in r.parts]) for r in plan.rules
    }
    return out, plan
