"""LoRA files as they are shared: recognise, read, map to canonical keys, describe.

Formats read (each layer mapped to the canonical weight it modifies, see :mod:`sdforensics.lora.keys`):

* ``kohya`` -- ``lora_unet_*`` / ``lora_te_*`` (SDXL ``lora_te1_*`` / ``lora_te2_*``) with
  ``.lora_up.weight``, ``.lora_down.weight``, ``.alpha``; conv LoRA / LoCon with 4-D factors and
  LoCon's CP ``.lora_mid.weight``; LyCORIS LoHa (``hada_w1_a`` ...), LoKr (``lokr_w1`` ...) and
  full ``.diff`` layers under the same names;
* ``diffusers`` -- PEFT ``...to_q.lora_A.weight`` / ``lora_B``, the intermediate
  ``.lora.up/down.weight`` and ``lora_linear_layer``, and the old attention-processor files
  (``...attn1.processor.to_q_lora.up.weight``, catundchat's);
* ``cloneofsimo`` -- lora_diffusion's safetensors (``unet:0:up`` ... plus PTI token embeddings)
  and its early ``.pt`` files, a bare list of tensors in [up, down] pairs whose targets follow
  from the order the modules were injected in (:func:`sdforensics.lora.keys.cloneofsimo_orders`).

Recognised and described but not baked: DoRA (needs the base weight's norms), (IA)^3, GLoRA,
norm layers and Tucker-decomposed LoHa/LoKr.

A layer's change to its weight is ``strength * alpha / rank * up @ down`` (alpha missing ->
rank, i.e. a scale of 1), reshaped to the weight's shape; conv factors follow kohya's LoCon
convention (``down`` [r, in, kh, kw], ``up`` [out, r, 1, 1]).

>>> lora = read_lora(Path("pytorch_lora_weights.safetensors"))    # doctest: +SKIP
>>> lora.family, len(lora.layers), lora.rank                      # doctest: +SKIP
('sd1', 128, 4)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdforensics.core.errors import CorruptFileError, UnsupportedFormatError
from sdforensics.core.safetext import printable
from sdforensics.lora.description import LoraDescription
from sdforensics.lora.factors import check_factor
from sdforensics.lora.keys import FAMILIES, KOHYA_PREFIXES, Target, cloneofsimo_orders, module_index
from sdforensics.readers import open_checkpoint
from sdforensics.readers.base import Checkpoint, TensorInfo

if TYPE_CHECKING:  # torch is imported where tensors are built, so is_lora() needs headers only
    import torch

KOHYA_ROLES = {
    "lora_up.weight": "up", "lora_down.weight": "down", "lora_mid.weight": "mid", "alpha": "alpha",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "diff": "diff", "diff_b": "diff_b", "w_norm": "w_norm", "b_norm": "b_norm", "dora_scale": "dora_scale",
    "on_input": "on_input", "weight": "ia3", "a1.weight": "glora_a1", "a2.weight": "glora_a2",
    "b1.weight": "glora_b1", "b2.weight": "glora_b2", "scale": "scale",
}
"""kohya/LyCORIS key suffix -> the role of the tensor in its layer."""

_PEFT = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")
_UPDOWN = re.compile(r"^(?P<mod>.+)\.lora(?:_linear_layer)?\.(?P<ud>up|down)\.weight$")
_PROCESSOR = re.compile(r"^(?P<mod>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<ud>up|down)\.weight$")
_DIFF_ALPHA = re.compile(r"^(?P<mod>.+)\.alpha$")
_DIFF_DORA = re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?$")
_CLONE = re.compile(r"^(?P<comp>unet|text_encoder):(?P<i>\d+):(?P<ud>up|down)$")
_UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "conv_norm_out", "time_embedding.",
               "add_embedding.")
_COMPONENT_PREFIXES = (("unet.", "unet"), ("text_encoder_2.", "text_encoder_2"), ("text_encoder.", "text_encoder"),
                       ("base_model.model.", ""))


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One module's low-rank (or LyCORIS) change and the canonical weight it modifies."""

    name: str
    """The module as the file names it (``lora_unet_..._to_q``, ``unet:12``)."""
    kind: str
    """``lora`` (incl. LoCon), ``loha``, ``lokr``, ``full``, ``ia3``, ``glora``, ``norm``."""
    factors: Mapping[str, torch.Tensor]
    """Tensors by role (``up``, ``down``, ``mid``, ``hada_w1_a`` ...), as stored."""
    alpha: float | None = None
    target: Target | None = None
    component: str = ""

    @property
    def up(self) -> torch.Tensor | None:
        return self.factors.get("up")

    @property
    def down(self) -> torch.Tensor | None:
        return self.factors.get("down")

    @property
    def dora(self) -> bool:
        return "dora_scale" in self.factors

    @property
    def rank(self) -> int | None:
        f = self.factors
        if self.kind == "lora" and "down" in f:
            return int(f["down"].shape[0])
        if self.kind == "loha" and "hada_w1_b" in f:
            return int(f["hada_w1_b"].shape[0])
        if self.kind == "lokr":
            for k in ("lokr_w1_b", "lokr_w2_b"):
                if k in f:
                    return int(f[k].shape[0])
        return None

    @property
    def scale(self) -> float:
        """alpha / rank; 1 when the file has no alpha (or the algorithm has no rank)."""
        r = self.rank
        return self.alpha / r if self.alpha is not None and r else 1.0

    @property
    def conv(self) -> bool:
        return any(t.dim() == 4 for k, t in self.factors.items() if k != "alpha")

    @property
    def bakeable(self) -> bool:
        f = self.factors
        if self.dora or "hada_t1" in f or "lokr_t2" in f:
            return False
        return self.kind in ("lora", "loha", "lokr", "full")

    def io(self) -> tuple[int, int] | None:
        """(out features, in features x kernel) the factors imply, or None when they do not say."""
        f = self.factors
        if self.kind == "lora" and "up" in f and "down" in f:
            k = f["mid"].shape[2:].numel() if "mid" in f else 1
            return int(f["up"].shape[0]), int(f["down"][0].numel()) * int(k)
        if self.kind == "loha" and "hada_w1_a" in f and "hada_w1_b" in f and "hada_t1" not in f:
            return int(f["hada_w1_a"].shape[0]), int(f["hada_w1_b"][0].numel())
        if self.kind == "lokr" and "lokr_t2" not in f:
            w1, w2 = _lokr_shape(f, "lokr_w1"), _lokr_shape(f, "lokr_w2")
            if w1 and w2:
                return w1[0] * w2[0], w1[1] * w2[1]
        if self.kind == "full" and "diff" in f and f["diff"].dim() >= 2:
            return int(f["diff"].shape[0]), int(f["diff"][0].numel())
        return None

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """``strength * scale * up @ down`` (float32) shaped like the module's weight.

        That is the target's shape, or for a q/k/v part of a fused OpenCLIP ``in_proj_weight``
        the shape of its third (see :attr:`Target.part_shape`).
        """
        import torch

        if not self.bakeable:
            raise UnsupportedFormatError(f"{self.name}: a {self.kind}{' (DoRA)' if self.dora else ''} layer; "
                                         "sdforensics describes it but cannot compute its change")
        f = {k: v.float() for k, v in self.factors.items()}
        shape = self.target.part_shape if self.target is not None else None
        k = strength * self.scale
        if self.kind == "lora":  # the scale goes on the small factor: one pass over the result
            up, down = f["up"].reshape(f["up"].shape[0], -1) * k, f["down"].reshape(f["down"].shape[0], -1)
            w = torch.einsum("n m k l, i n, m j -> i j k l", f["mid"], up, down) if "mid" in f else up @ down
            natural = tuple(w.shape) if "mid" in f else (up.shape[0], *f["down"].shape[1:])
        elif self.kind == "loha":
            w1 = (f["hada_w1_a"] * k) @ f["hada_w1_b"].reshape(f["hada_w1_b"].shape[0], -1)
            w2 = f["hada_w2_a"] @ f["hada_w2_b"].reshape(f["hada_w2_b"].shape[0], -1)
            w = w1 * w2
            natural = (w.shape[0], *f["hada_w1_b"].shape[1:])
        elif self.kind == "lokr":
            w = _lokr(f, shape, k)
            natural = tuple(w.shape)
        else:
            w = f["diff"] * k
            natural = tuple(w.shape)
        return w.reshape(shape if shape is not None else natural)


def _lokr_shape(f: Mapping[str, torch.Tensor], w: str) -> tuple[int, int] | None:
    if w in f:
        t = f[w]
        return int(t.shape[0]), int(t[0].numel())
    if f"{w}_a" in f and f"{w}_b" in f:
        return int(f[f"{w}_a"].shape[0]), int(f[f"{w}_b"][0].numel())
    return None


def _lokr(f: Mapping[str, torch.Tensor], shape: tuple[int, ...] | None, k: float) -> torch.Tensor:
    """k * kron(w1, w2), either factor given whole or as a product (LyCORIS LoKr)."""
    import torch

    w1 = (f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]) * k
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"].reshape(f["lokr_w2_b"].shape[0], -1)
    if shape is not None and len(shape) == 4:
        o2, i2 = shape[0] // w1.shape[0], shape[1] // w1.shape[1]
        return torch.kron(w1[:, :, None, None], w2.reshape(o2, i2, *shape[2:]))
    return torch.kron(w1, w2.reshape(w2.shape[0], -1))


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A LoRA file read and mapped to canonical keys."""

    path: Path
    format: str
    """``kohya``, ``diffusers``, ``diffusers-attn-processor``, ``cloneofsimo``, ``cloneofsimo-list``."""
    family: str | None
    """The architecture its layers fit (``sd1``, ``sd2``, ``sdxl``), None when none fits."""
    layers: tuple[LoraLayer, ...]
    container: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Pivotal-tuning token embeddings carried along (cloneofsimo ``<s1>`` ...): name -> shape."""
    compatible: tuple[str, ...] = ()
    """Every family all mapped layers fit (SD1 and SD2 share many UNet shapes)."""
    ignored: tuple[str, ...] = ()
    """Tensor names not understood (neither a LoRA factor nor an embedding)."""
    notes: tuple[str, ...] = ()

    @property
    def unmapped(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.target is None)

    @property
    def rank(self) -> int | None:
        """The most common rank (None when no layer has one)."""
        ranks = Counter(r for layer in self.layers if (r := layer.rank) is not None)
        return ranks.most_common(1)[0][0] if ranks else None

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(sorted({layer.kind + ("+dora" if layer.dora else "") for layer in self.layers}))

    @cached_property
    def _targets(self) -> dict[str, tuple[LoraLayer, ...]]:
        out: dict[str, list[LoraLayer]] = {}
        for layer in self.layers:
            if layer.target is not None:
                out.setdefault(layer.target.key, []).append(layer)
        return {k: tuple(v) for k, v in out.items()}

    def targets(self) -> dict[str, tuple[LoraLayer, ...]]:
        """Canonical key -> the layers that modify it (q, k, v of one fused weight share a key)."""
        return dict(self._targets)

    def delta_for(self, key: str, strength: float = 1.0) -> torch.Tensor:
        """The change to canonical weight ``key`` (full shape, float32; zeros where no layer writes)."""
        layers = self._targets.get(key)
        if not layers:
            raise KeyError(key)
        return _assemble(layers, strength)

    def deltas(self, strength: float = 1.0) -> Iterator[tuple[str, torch.Tensor]]:
        """(canonical key, change) for every targeted weight, in target-key order."""
        for key, layers in sorted(self._targets.items()):
            yield key, _assemble(layers, strength)


def _assemble(layers: tuple[LoraLayer, ...], strength: float) -> torch.Tensor:
    import torch

    target = layers[0].target
    assert target is not None
    if len(layers) == 1 and target.rows is None:
        d = layers[0].delta(strength)
        return d.t().contiguous() if target.op == "transpose" else d
    out = torch.zeros(target.shape, dtype=torch.float32)
    for layer in layers:
        t = layer.target
        assert t is not None
        rows = t.rows or (0, t.shape[0])
        out[rows[0] : rows[1]] += layer.delta(strength)
    return out


# ---------------------------------------------------------------- recognising


def is_lora(infos: Iterable[TensorInfo]) -> bool:
    """Whether a file's tensors (names, and shapes for nameless lists) are a LoRA's.

    >>> is_lora([TensorInfo("lora_unet_mid_block_attentions_0_proj_in.alpha", (), "F16", 2)])
    True
    >>> is_lora([TensorInfo("model.diffusion_model.out.0.weight", (320,), "F16", 640)])
    False
    """
    infos = list(infos)
    if not infos:
        return False
    names = [i.name for i in infos]
    if all(n.isascii() and n.isdigit() for n in names):
        return _pair_list([i.shape for i in sorted(infos, key=lambda i: int(i.name))])
    for n in names:
        if n.startswith(tuple(KOHYA_PREFIXES)) and "." in n and n.split(".", 1)[1] in KOHYA_ROLES:
            return True
        if _CLONE.match(n) or _PEFT.match(n) or _UPDOWN.match(n) or _PROCESSOR.match(n):
            return True
    return False


def _pair_list(shapes: list[tuple[int, ...]]) -> bool:
    """[up, down] pairs: up (out, r), down (r, in), r small."""
    if not shapes or len(shapes) % 2:
        return False
    for up, down in zip(shapes[::2], shapes[1::2], strict=True):
        if len(up) != 2 or len(down) != 2 or up[1] != down[0] or up[1] > min(up[0], down[1]):
            return False
    return True


# ---------------------------------------------------------------- reading


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA file (any format above) and map its layers to canonical keys.

    Raises :class:`~sdforensics.core.errors.UnsupportedFormatError` when the file is not a LoRA.
    """
    with open_checkpoint(Path(path)) as ckpt:
        return lora_from_checkpoint(ckpt)


def lora_from_checkpoint(ckpt: Checkpoint) -> LoraFile:
    """:func:`read_lora` of a checkpoint already open (it stays open)."""
    path = ckpt.path
    fmt = ckpt.format()
    infos = ckpt.infos()
    if not is_lora(infos):
        raise UnsupportedFormatError(
            f"{path}: not a LoRA file (no lora_up/lora_down, lora_A/lora_B or [up, down] pairs among "
            f"{len(infos)} tensors)"
        )
    tensors = {info.name: t for info, t in ckpt.tensors()}
    meta = dict(fmt.metadata)
    names = list(tensors)
    if all(n.isascii() and n.isdigit() for n in names):
        pairs = [(tensors[str(2 * i)], tensors[str(2 * i + 1)]) for i in range(len(names) // 2)]
        for i, (up, down) in enumerate(pairs):
            check_factor(str(2 * i), "up", up)
            check_factor(str(2 * i + 1), "down", down)
        layers, family, compat, notes = _cloneofsimo({"": pairs}, meta)
        return LoraFile(path, "cloneofsimo-list", family, layers, fmt.container, meta, {}, compat, (), notes)
    if any(_CLONE.match(n) for n in names):
        return _read_cloneofsimo(path, tensors, meta, fmt.container)
    if any(n.startswith(tuple(KOHYA_PREFIXES)) for n in names):
        raw, ignored = _group_kohya(tensors)
        fmt_name = "kohya"
    else:
        raw, ignored, fmt_name = _group_diffusers(tensors)
    layers, family, compat = _assign(raw, fmt_name)
    notes = () if family else ("no layer fits an SD1, SD2 or SDXL weight (a LoRA for another architecture?)",)
    return LoraFile(path, fmt_name, family, layers, fmt.container, meta, {}, compat, tuple(ignored), notes)


_Raw = dict[tuple[str, str], dict[str, "torch.Tensor"]]
"""(component, module name in the file's spelling) -> {role: tensor}."""


def _group_kohya(tensors: Mapping[str, torch.Tensor]) -> tuple[_Raw, list[str]]:
    raw: _Raw = {}
    ignored = []
    for name, t in tensors.items():
        module, _, suffix = name.partition(".")
        comp = next((c for p, c in KOHYA_PREFIXES.items() if module.startswith(p)), None)
        role = KOHYA_ROLES.get(suffix)
        if comp is None or role is None:
            ignored.append(name)
            continue
        raw.setdefault((comp, module), {})[role] = t
    return raw, ignored


def _group_diffusers(tensors: Mapping[str, torch.Tensor]) -> tuple[_Raw, list[str], str]:
    raw: _Raw = {}
    ignored = []
    processor = False
    for name, t in tensors.items():
        comp, local = "", name
        for prefix, c in _COMPONENT_PREFIXES:
            if local.startswith(prefix):
                comp, local = c or comp, local[len(prefix) :]
        if m := _PROCESSOR.match(local):
            proj = "to_out.0" if m["proj"] == "to_out" else m["proj"]
            module, role, processor = f"{m['mod']}.{proj}", m["ud"], True
        elif m := _PEFT.match(local):
            module, role = m["mod"], "down" if m["ab"] == "A" else "up"
        elif m := _UPDOWN.match(local):
            module, role = m["mod"], m["ud"]
        elif m := _DIFF_ALPHA.match(local):
            module, role = m["mod"], "alpha"
        elif m := _DIFF_DORA.match(local):
            module, role = m["mod"], "dora_scale"
        else:
            ignored.append(name)
            continue
        comp = comp or ("text_encoder" if module.startswith("text_model.") else
                        "unet" if module.startswith(_UNET_ROOTS) else "unknown")
        raw.setdefault((comp, module), {})[role] = t
    return raw, ignored, "diffusers-attn-processor" if processor else "diffusers"


def _kind(roles: Mapping[str, Any]) -> str:
    if any(r.startswith("hada_") for r in roles):
        return "loha"
    if any(r.startswith("lokr_") for r in roles):
        return "lokr"
    if "up" in roles or "down" in roles:
        return "lora"
    if "diff" in roles:
        return "full"
    if "ia3" in roles:
        return "ia3"
    if any(r.startswith("glora") for r in roles):
        return "glora"
    if "w_norm" in roles:
        return "norm"
    return "unknown"


def _make_layer(name: str, comp: str, roles: Mapping[str, torch.Tensor], target: Target | None) -> LoraLayer:
    for role, t in roles.items():
        check_factor(name, role, t)
    factors = {r: t for r, t in roles.items() if r != "alpha"}
    alpha = float(roles["alpha"].float().reshape(-1)[0]) if "alpha" in roles and roles["alpha"].numel() else None
    return LoraLayer(name, _kind(roles), factors, alpha, target, comp)


def _lookup(family: str, comp: str, module: str, fmt: str) -> Target | None:
    index = module_index(family)
    if fmt == "kohya":
        return index["kohya"].get(module)
    return index["diffusers"].get((comp, module))


def _assign(raw: _Raw, fmt: str) -> tuple[tuple[LoraLayer, ...], str | None, tuple[str, ...]]:
    """Map every module in every candidate family; keep the family where most layers fit."""
    draft = {key: _make_layer(key[1], key[0], roles, None) for key, roles in raw.items()}
    scores: dict[str, int] = {}
    for fam in FAMILIES:
        if fam != "sdxl" and any(c == "text_encoder_2" or m.startswith(("lora_te1_", "lora_te2_")) for c, m in raw):
            continue
        n = 0
        for (comp, module), layer in draft.items():
            target = _lookup(fam, comp, module, fmt)
            io = layer.io()
            if target is not None and (io is None or io == target.io):
                n += 1
        scores[fam] = n
    best = max(scores.values(), default=0)
    family = next((f for f in FAMILIES if scores.get(f) == best), None) if best else None
    compat = tuple(f for f in FAMILIES if best and scores.get(f) == best)
    layers = []
    for (comp, module), layer in draft.items():
        target = _lookup(family, comp, module, fmt) if family else None
        io = layer.io()
        if target is not None and io is not None and io != target.io:
            target = None
        layers.append(_make_layer(module, comp, raw[(comp, module)], target))
    return tuple(layers), family, compat


def _read_cloneofsimo(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str],
                      container: str) -> LoraFile:
    groups: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    embeddings: dict[str, tuple[int, ...]] = {}
    ignored = []
    for name, t in tensors.items():
        if m := _CLONE.match(name):
            groups.setdefault(m["comp"], {}).setdefault(int(m["i"]), {})[m["ud"]] = t
        elif meta.get(name) == "<embed>" or (t.dim() == 1 and name.startswith("<")):
            embeddings[name] = tuple(t.shape)
        else:
            ignored.append(name)
    for comp, g in groups.items():
        for i, roles in g.items():
            for role, t in roles.items():
                check_factor(f"{comp}:{i}", role, t)
    pairs = {comp: [(g[i]["up"], g[i]["down"]) for i in sorted(g)] for comp, g in groups.items()}
    layers, family, compat, notes = _cloneofsimo(pairs, meta)
    return LoraFile(path, "cloneofsimo", family, layers, container, meta, embeddings, compat, tuple(ignored), notes)


def _cloneofsimo(
    groups: Mapping[str, list[tuple[torch.Tensor, torch.Tensor]]], meta: Mapping[str, str]
) -> tuple[tuple[LoraLayer, ...], str | None, tuple[str, ...], tuple[str, ...]]:
    """Targets of nameless [up, down] pairs: the injection order whose shapes fit, per component.

    ``groups`` maps ``unet`` / ``text_encoder`` (or "" for a bare list: either) to its pairs.
    """
    fits: dict[str, dict[str, tuple[str, list[Target]]]] = {}
    for fam in ("sd1", "sd2"):
        found: dict[str, tuple[str, list[Target]]] = {}
        for comp, pairs in groups.items():
            ios = [(int(up.shape[0]), int(down[0].numel())) for up, down in pairs]
            for cand_comp in ([comp] if comp else ["unet", "text_encoder"]):
                cands = cloneofsimo_orders(fam, cand_comp, geglu=True)
                cands += cloneofsimo_orders(fam, cand_comp, geglu=False) if cand_comp == "unet" else []
                hit = next(((n, ts) for n, ts in cands if [t.io for t in ts] == ios), None)
                if hit is not None:
                    found[comp] = (f"{cand_comp}:{hit[0]}", hit[1])
                    break
        fits[fam] = found
    family = next((f for f in ("sd1", "sd2") if len(fits[f]) == len(groups)), None)
    compat = tuple(f for f in ("sd1", "sd2") if len(fits[f]) == len(groups))
    notes = []
    layers = []
    for comp, pairs in groups.items():
        order = fits[family].get(comp) if family else None
        if order is not None:
            notes.append(f"{comp or 'list'}: injection order {order[0]}")
        for i, (up, down) in enumerate(pairs):
            target = order[1][i] if order else None
            name = f"{comp}:{i}" if comp else str(i)
            layers.append(LoraLayer(name, "lora", {"up": up, "down": down}, None, target,
                                    target.component if target else comp))
    if family is None:
        notes.append("no injection order of SD1/SD2 fits these [up, down] shapes; layers left unmapped")
    return tuple(layers), family, compat, tuple(notes)


# ---------------------------------------------------------------- describing

_TRAINING_FIELDS = {
    "ss_sd_model_name": "base_model", "ss_base_model_version": "base_model_version",
    "ss_sd_model_hash": "base_model_hash", "ss_new_sd_model_hash": "base_model_sha256",
    "ss_network_module": "network_module", "ss_network_dim": "network_dim", "ss_network_alpha": "network_alpha",
    "ss_resolution": "resolution", "ss_num_epochs": "epochs", "ss_epoch": "epoch", "ss_steps": "steps",
    "ss_max_train_steps": "max_train_steps", "ss_num_train_images": "train_images",
    "ss_learning_rate": "learning_rate", "ss_unet_lr": "unet_lr", "ss_text_encoder_lr": "text_encoder_lr",
    "ss_optimizer": "optimizer", "ss_lr_scheduler": "lr_scheduler", "ss_mixed_precision": "mixed_precision",
    "ss_clip_skip": "clip_skip", "ss_v2": "v2", "ss_output_name": "output_name", "ss_seed": "seed",
    "ss_training_started_at": "training_started_at", "ss_training_finished_at": "training_finished_at",
    "ss_training_comment": "comment", "modelspec.architecture": "modelspec_architecture",
    "modelspec.title": "title",
}
_NUMERIC = {"network_dim", "network_alpha", "epochs", "epoch", "steps", "max_train_steps", "train_images",
            "learning_rate", "unet_lr", "text_encoder_lr", "clip_skip", "seed", "training_started_at",
            "training_finished_at"}


def _json(text: str) -> Any:
    import json

    if len(text) > 4 << 20:
        return None
    try:
        return json.loads(text, parse_constant=lambda c: None)
    except (ValueError, RecursionError):
        return None


def _number(text: str) -> int | float | str:
    try:
        v = float(text)
    except ValueError:
        return printable(text, 100)
    if v != v or v in (float("inf"), float("-inf")):
        return printable(text, 100)
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def training_summary(metadata: Mapping[str, str]) -> dict[str, Any]:
    """kohya ``ss_*`` training metadata, summarised and JSON-friendly (every string made printable).

    >>> training_summary({"ss_network_dim": "32", "ss_tag_frequency": '{"10_cat": {"cat": 9, "tail": 4}}'})
    {'network_dim': 32, 'tags_top': [['cat', 9], ['tail', 4]], 'tags_unique': 2, 'datasets': ['10_cat']}
    """
    out: dict[str, Any] = {}
    for key, name in _TRAINING_FIELDS.items():
        value = metadata.get(key)
        if value is None or value in ("", "None"):
            continue
        out[name] = _number(value) if name in _NUMERIC else printable(value, 300)
    args = _json(metadata.get("ss_network_args", "") or "null")
    if isinstance(args, dict):
        out["network_args"] = {printable(str(k), 60): printable(str(v), 100) for k, v in list(args.items())[:30]}
    tags = _json(metadata.get("ss_tag_frequency", "") or "null")
    if isinstance(tags, dict):
        counts: Counter[str] = Counter()
        for per_dir in tags.values():
            if isinstance(per_dir, dict):
                for tag, n in per_dir.items():
                    if isinstance(n, int | float) and not isinstance(n, bool):
                        if isinstance(n, float) and not math.isfinite(n):
                            raise CorruptFileError(f"metadata field ss_tag_frequency: tag "
                                                   f"{printable(str(tag), 60)!r} has a count of {n}, "
                                                   "not a finite number")
                        counts[str(tag).strip()] += int(n)
        out["tags_top"] = [[printable(t, 100), n] for t, n in counts.most_common(5)]
        out["tags_unique"] = len(counts)
        out["datasets"] = [printable(str(d), 100) for d in list(tags)[:20]]
    dirs = _json(metadata.get("ss_dataset_dirs", "") or "null")
    if isinstance(dirs, dict):
        out["dataset_dirs"] = {
            printable(str(d), 100): {k: v for k, v in info.items() if k in ("n_repeats", "img_count")
                                     and isinstance(v, int | float)}
            for d, info in list(dirs.items())[:20] if isinstance(info, dict)
        }
    return out


def describe_lora(lora: LoraFile) -> LoraDescription:
    """What a LoRA file is: family, format, ranks, alphas, targeted layers and blocks, training.

    ``sdf analyze lora.safetensors`` renders it; :meth:`LoraDescription.to_json` is its JSON.
    """
    from sdforensics.model.architecture import architecture, block_maps

    targets = lora.targets()
    blocks: dict[str, int] = {}
    key_blocks: dict[str, str] = {}
    if lora.family is not None:
        bname = architecture(lora.family).blocks
        bmap = block_maps().get(bname) if bname else None
        for key in sorted(targets):
            block = key_blocks[key] = (bmap.block_of(key) if bmap else None) or "OTHER"
            blocks[block] = blocks.get(block, 0) + 1
        if bmap is not None:
            blocks = {b: blocks[b] for b in (*bmap.ids, "OTHER") if b in blocks}
    ranks = Counter(layer.rank for layer in lora.layers if layer.rank is not None)
    alphas = Counter(layer.alpha for layer in lora.layers if layer.alpha is not None)
    components = Counter(layer.target.component if layer.target else layer.component or "unknown"
                         for layer in lora.layers)
    dtypes = Counter(str(t.dtype).replace("torch.", "") for layer in lora.layers for t in layer.factors.values())
    return LoraDescription(
        path=str(lora.path),
        format=lora.format,
        container=lora.container,
        family=lora.family,
        compatible_families=tuple(lora.compatible),
        algorithms=tuple(lora.kinds),
        rank=lora.rank,
        ranks={str(r): n for r, n in sorted(ranks.items())},
        alphas={f"{a:g}": n for a, n in sorted(alphas.items())},
        scale=tuple(sorted({round(layer.scale, 6) for layer in lora.layers})),
        layers=len(lora.layers),
        mapped_layers=len(lora.layers) - len(lora.unmapped),
        conv_layers=sum(1 for layer in lora.layers if layer.conv),
        bakeable=all(layer.bakeable for layer in lora.layers),
        components={c: components[c] for c in sorted(components)},
        targets=tuple(sorted(targets)),
        target_blocks=key_blocks,
        blocks=blocks,
        unmapped=tuple(printable(n, 200) for n in lora.unmapped[:50]),
        ignored_tensors=tuple(printable(n, 200) for n in lora.ignored[:50]),
        embeddings={printable(k, 100): tuple(v) for k, v in lora.embeddings.items()},
        dtypes=dict(dtypes),
        params=sum(int(t.numel()) for layer in lora.layers for t in layer.factors.values()),
        training=training_summary(lora.metadata),
        notes=tuple(lora.notes),
    )
