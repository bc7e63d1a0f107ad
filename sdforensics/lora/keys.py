"""LoRA module names -> the canonical (ldm/sgm) weights they modify.

LoRA files name the *module* a low-rank pair modifies, in the spelling of the trainer:

* diffusers / PEFT: the diffusers module path with its component, ``unet`` +
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``;
* kohya: the same path with ``.`` -> ``_`` behind ``lora_unet_`` / ``lora_te_`` (SDXL
  ``lora_te1_`` / ``lora_te2_``); kohya's SDXL trainer spells UNet modules the ldm way
  (``lora_unet_input_blocks_4_1_proj_in``), so both spellings are indexed;
* cloneofsimo: no names at all, only the order in which ``inject_trainable_lora`` met the
  modules (see :func:`cloneofsimo_orders`).

Everything is derived from the canonical key tables (``data/arch/*.json``) through
:func:`sdforensics.readers.diffusers_keys.plan_from_ldm`, so there is no second key table to keep in
step. A diffusers q/k/v projection of an OpenCLIP text encoder (SD2, SDXL's second encoder) is
a third of the canonical ``attn.in_proj_weight``: its :class:`Target` carries the row range.

>>> t = module_index("sd1")["kohya"]["lora_unet_down_blocks_0_attentions_0_proj_in"]
>>> t.key, t.shape
('model.diffusion_model.input_blocks.1.1.proj_in.weight', (320, 320, 1, 1))
>>> t = module_index("sd2")["diffusers"][("text_encoder", "text_model.encoder.layers.0.self_attn.k_proj")]
>>> t.key, t.rows
('cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight', (1024, 2048))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sdforensics.model.architecture import architecture
from sdforensics.readers.diffusers_keys import _tables, plan_from_ldm

FAMILIES = ("sd1", "sd2", "sdxl")
"""Families a LoRA can target, in the order ties are broken."""

KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
}
"""kohya module-name prefix -> diffusers component."""

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Target:
    """The canonical weight a LoRA module modifies (``rows``: the slice of its first dimension)."""

    key: str
    shape: Shape
    """Full shape of the canonical weight."""
    component: str
    """``unet``, ``text_encoder`` or ``text_encoder_2`` (diffusers component names)."""
    module: str
    """The diffusers module path (``down_blocks.0.attentions.0.proj_in``)."""
    rows: tuple[int, int] | None = None
    """For a q/k/v part of a fused OpenCLIP ``in_proj_weight``: [start, stop) of dimension 0."""
    op: str = "copy"
    """``copy`` or ``transpose`` (OpenCLIP ``text_projection``, stored transposed)."""

    @property
    def part_shape(self) -> Shape:
        """Shape of the part of the weight this module owns (the whole weight unless ``rows``)."""
        if self.rows is not None:
            return (self.rows[1] - self.rows[0], *self.shape[1:])
        if self.op == "transpose" and len(self.shape) == 2:
            return (self.shape[1], self.shape[0])
        return self.shape

    @property
    def io(self) -> tuple[int, int]:
        """(out features, in features x kernel) of the module, as a LoRA pair sees it."""
        s = self.part_shape
        n = 1
        for d in s[1:]:
            n *= d
        return (s[0] if s else 1, n)


def kohya_name(component: str, module: str, family: str) -> str:
    """kohya's spelling of a diffusers module: ``lora_unet_down_blocks_0_...``."""
    if component == "unet":
        prefix = "lora_unet_"
    elif family == "sdxl":
        prefix = "lora_te1_" if component == "text_encoder" else "lora_te2_"
    else:
        prefix = "lora_te_"
    return prefix + module.replace(".", "_")


@lru_cache(maxsize=8)
def module_index(family: str) -> dict[str, dict[Any, Target]]:
    """Every weight a LoRA can modify in ``family``, indexed by the names trainers use.

    Returns ``{"diffusers": {(component, module path): Target}, "kohya": {name: Target}}``;
    kohya names of UNet modules are indexed in both the diffusers and the ldm spelling.
    """
    arch = architecture(family)
    shapes = {k: s for k, (s, _) in arch.keys.items()}
    plan = plan_from_ldm(shapes, family)
    unet_prefix = str(_tables()["unet_prefix"])
    diffusers: dict[Any, Target] = {}
    kohya: dict[Any, Target] = {}
    for rule in plan.rules:
        if rule.canonical.endswith("bias") or rule.op == "conv1x1":
            continue
        shape = shapes[rule.canonical]
        if len(shape) < 2:
            continue
        for i, part in enumerate(rule.parts):
            if part.component not in ("unet", "text_encoder", "text_encoder_2") or not part.key.endswith(".weight"):
                continue
            module = part.key[: -len(".weight")]
            rows = None
            if rule.op == "concat":
                n = shape[0] // len(rule.parts)
                rows = (i * n, (i + 1) * n)
            op = "transpose" if rule.op == "transpose" else "copy"
            target = Target(rule.canonical, shape, part.component, module, rows, op)
            diffusers[(part.component, module)] = target
            kohya[kohya_name(part.component, module, family)] = target
            if part.component == "unet" and rule.canonical.startswith(unet_prefix):
                ldm = rule.canonical[len(unet_prefix) : -len(".weight")]
                kohya.setdefault("lora_unet_" + ldm.replace(".", "_"), target)
    return {"diffusers": diffusers, "kohya": kohya}


# ---------------------------------------------------------------- cloneofsimo (no names)

_TB = re.compile(r"^(down_blocks\.\d+\.attentions\.\d+|up_blocks\.\d+\.attentions\.\d+|mid_block\.attentions\.0)"
                 r"\.transformer_blocks\.(\d+)\.attn1\.to_q$")
_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
_CLIP_ATTN = ("k_proj", "v_proj", "q_proj", "out_proj")
"""transformers' ``CLIPAttention`` registers k, v, q, out in that order."""


def _transformer_blocks(family: str) -> list[str]:
    """Diffusers transformer-block paths of the UNet, in down, up, mid registration order."""
    found = [m.group(1) + ".transformer_blocks." + m.group(2)
             for (comp, mod) in module_index(family)["diffusers"] if comp == "unet" and (m := _TB.match(mod))]

    def order(path: str) -> tuple[int, ...]:
        nums = tuple(int(x) for x in re.findall(r"\d+", path))
        kind = 0 if path.startswith("down") else 1 if path.startswith("up") else 2
        return (kind, *nums)

    return sorted(found, key=order)


def cloneofsimo_orders(family: str, component: str, geglu: bool) -> list[tuple[str, list[Target]]]:
    """The module orders cloneofsimo's ``inject_trainable_lora`` may have used, most likely first.

    lora_diffusion walks ``model.modules()`` for instances of the target classes
    (``CrossAttention``/``Attention``, optionally ``GEGLU``; ``CLIPAttention`` for the text encoder)
    and replaces their ``nn.Linear`` children in ``named_modules()`` order, saving [up, down] per
    module. diffusers registers ``down_blocks`` and ``up_blocks`` before ``mid_block``; inside a
    transformer block ``ff`` came before ``attn2`` in the diffusers of late 2022 and after it
    later, so both are offered and the caller keeps the one whose shapes fit.
    """
    index = module_index(family)["diffusers"]
    if component in ("text_encoder", "text_encoder_2"):
        comp = component
        layers = sorted({int(m.group(1)) for (c, mod) in index if c == comp
                         and (m := re.match(r"^text_model\.encoder\.layers\.(\d+)\.", mod))})
        names = [f"text_model.encoder.layers.{n}.self_attn.{p}" for n in layers for p in _CLIP_ATTN]
        return [("clip", [index[(comp, m)] for m in names])] if names else []
    blocks = _transformer_blocks(family)
    mid = [b for b in blocks if b.startswith("mid_block")]
    rest = [b for b in blocks if not b.startswith("mid_block")]
    downs = [b for b in rest if b.startswith("down")]
    ups = [b for b in rest if b.startswith("up")]
    out: list[tuple[str, list[Target]]] = []
    inner_orders = [("ff-before-attn2", ("attn1", "ff", "attn2")), ("attn2-before-ff", ("attn1", "attn2", "ff"))]
    if not geglu:
        inner_orders = inner_orders[:1]
    for outer_name, outer in (("down-up-mid", downs + ups + mid), ("down-mid-up", downs + mid + ups)):
        for inner_name, inner in inner_orders:
            mods: list[str] = []
            for block in outer:
                for part in inner:
                    if part == "ff":
                        if geglu:
                            mods.append(f"{block}.ff.net.0.proj")
                    else:
                        mods.extend(f"{block}.{part}.{a}" for a in _ATTN)
            out.append((f"{outer_name}/{inner_name}", [index[("unet", m)] for m in mods]))
    return out
