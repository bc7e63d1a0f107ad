"""Collections of models with a known lineage, for tests and benchmarks of ``sdf map``.

A collection is a *plan*: a list of :class:`Node` (each made from earlier ones by one operation)
and its truth (``truth.json``: nodes, and edges ``source -> target`` with ``kind`` and ``weight``).
Two ways to make the models:

* :func:`write_collection` -- small-width (or full-size) model files, one safetensors file per
  node, written from :mod:`sdforensics.synth.specs` specs (end-to-end tests);
* :func:`fingerprint_collection` -- fingerprints only, made in fingerprint space from a few real
  fingerprints (the fingerprint of a merge is the merge of the fingerprints, so big collections
  cost no model files): a fine-tune adds an independent random change whose size per tensor is
  taken from a real fine-tune's change.

Operations (``Node.op``): ``base`` (the official base), ``finetune`` (parent + a change of relative
size ``scale``), ``merge`` (weighted sum; the base may be an ingredient), ``add_difference``
(``A + m (B - C)``: weights ``(1, m, -m)``), ``copy`` (the same file renamed), ``resave`` (the same
weights in another precision: F32, F16, BF16, F8_E4M3), ``swap`` (components from different
models: ``components`` names each parent's), ``lora`` (a low-rank change baked into the attention
layers of the parent).

>>> plan = plan_collection(12, seed=1)
>>> [n.op for n in plan][:3]
['base', 'finetune', 'finetune']
>>> truth = truth_of(plan)
>>> sorted({e["kind"] for e in truth["edges"]})  # doctest: +NORMALIZE_WHITESPACE
['component', 'copy', 'finetune', 'lora', 'merge']
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdforensics.core.dtypes import DTYPES
from sdforensics.fingerprinting.fingerprint import Fingerprint, TensorPrint
from sdforensics.fingerprinting.similarity import component_digests
from sdforensics.model.architecture import architecture
from sdforensics.synth.specs import Base, Derived, FineTune, Merge, Spec, Swap, _gen, write_safetensors

TRUTH_SCHEMA = "sdforensics.collection-truth/1"
OPS = ("base", "finetune", "merge", "add_difference", "copy", "resave", "swap", "lora")
LORA_LAYERS = ("attn1.to_q.", "attn1.to_k.", "attn1.to_v.", "attn2.to_q.", "attn2.to_k.", "attn2.to_v.")


@dataclass(frozen=True)
class Node:
    """One model of a collection, made from ``parents`` by ``op`` (see the module docstring)."""

    name: str
    op: str
    parents: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    dtype: str = "F16"
    seed: int = 0
    scale: float = 0.05
    components: tuple[str, ...] = ()
    """For ``swap``: the components (``unet+text_encoder``, ``vae``) taken from each parent."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "op": self.op, "dtype": self.dtype}
        if self.parents:
            out["parents"] = list(self.parents)
        if self.weights:
            out["weights"] = list(self.weights)
        if self.components:
            out["components"] = list(self.components)
        if self.op in ("finetune", "lora"):
            out["scale"] = self.scale
        return out


@dataclass(frozen=True)
class LowRank(Derived):
    """``parent`` + a rank-``rank`` change on the attention projections (a baked LoRA)."""

    parent: Spec
    seed: int = 0
    scale: float = 0.08
    rank: int = 4

    def tensor(self, key: str) -> torch.Tensor:
        t = self.parent.tensor(key)
        if t.dim() != 2 or not key.endswith(".weight") or not any(p in key for p in LORA_LAYERS):
            return t
        g = _gen("lora", self.seed, key)
        r = min(self.rank, *t.shape)
        up = torch.randn(t.shape[0], r, generator=g)
        down = torch.randn(r, t.shape[1], generator=g)
        return t + self.scale / (t.shape[1] ** 0.5) * (up @ down) / r**0.5


@dataclass(frozen=True, eq=False)
class Rounded(Derived):
    """``parent`` rounded to ``dtype`` (a re-save in another precision), values kept as float32."""

    parent: Spec
    dtype: str = "F16"

    def tensor(self, key: str) -> torch.Tensor:
        t = self.parent.tensor(key)
        if not t.is_floating_point():
            return t
        return t.to(DTYPES[self.dtype].torch_dtype).float()


@dataclass(frozen=True, eq=False)
class Stored(Derived):
    """``parent`` as a file already written holds it (children are made from the file, not recomputed:
    a merge of merges then costs one read per ingredient instead of its whole ancestry)."""

    parent: Spec
    path: Path = Path()

    def tensor(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(key).float()


# --------------------------------------------------------------------------- the plan


def _w(rng: random.Random, lo: float = 0.25, hi: float = 0.75) -> float:
    return round(rng.uniform(lo, hi) * 20) / 20  # multiples of 0.05, as people type them


def plan_collection(size: int = 60, seed: int = 0) -> list[Node]:
    """A lineage of about ``size`` models (never fewer) around one official base.

    Each group of 12 holds: two fine-tunes of the base (F, G), a chain F -> F.1 -> F.2 (three deep
    from the base), a merge of F and G, a merge of that merge with the previous group's F.1 (a
    merge of merges; the base in the first group), an add difference ``G + m (F.1 - F)``, a merge
    with the base, a byte copy of the merge, a re-save of F in another precision (BF16, F32, F8
    in turn), a component swap (UNet and text encoder of G, VAE of F) and a LoRA baked into F.1.
    Smaller sizes take the first nodes of the first group, in an order that keeps the kinds."""
    rng = random.Random(seed)
    nodes: list[Node] = [Node("base", "base", dtype="F16", seed=seed * 7919)]
    resave_dtypes = ("BF16", "F32", "F8_E4M3")
    group = 0
    prev_f1 = "base"
    while len(nodes) < size:
        p = f"g{group}-"
        s = seed * 7919 + 100 * (group + 1)
        f, g, f1, f2 = p + "F", p + "G", p + "F.1", p + "F.2"
        mix = p + "mix"
        wm = _w(rng)
        w2 = _w(rng, 0.3, 0.7)
        m = _w(rng, 0.3, 0.8)
        wb = _w(rng, 0.5, 0.8)
        dt = resave_dtypes[group % len(resave_dtypes)]
        group_nodes = [
            Node(f, "finetune", ("base",), (1.0,), seed=s + 1, scale=0.05),
            Node(g, "finetune", ("base",), (1.0,), seed=s + 2, scale=0.05),
            Node(mix, "merge", (f, g), (wm, round(1 - wm, 4))),
            Node(f1, "finetune", (f,), (1.0,), seed=s + 3, scale=0.035),
            Node(p + "copy", "copy", (mix,), (1.0,)),
            Node(p + "swap", "swap", (g, f), components=("unet+text_encoder", "vae")),
            Node(p + "lora", "lora", (f1,), (1.0,), seed=s + 4, scale=0.08),
            Node(p + f"resave-{dt.lower()}", "resave", (f,), (1.0,), dtype=dt),
            Node(f2, "finetune", (f1,), (1.0,), seed=s + 5, scale=0.03),
            Node(p + "mixmix", "merge", (mix, prev_f1), (w2, round(1 - w2, 4))),
            Node(p + "adddiff", "add_difference", (g, f1, f), (1.0, m, -m)),
            Node(p + "withbase", "merge", (g, "base"), (wb, round(1 - wb, 4))),
        ]
        nodes.extend(group_nodes)
        prev_f1 = f1
        group += 1
    return nodes[: max(size, 1)] if size < 13 else nodes


def truth_of(plan: Sequence[Node]) -> dict[str, Any]:
    """The known lineage: nodes and edges (``source`` -> ``target``, ``kind``, ``weight``).

    Edge kinds: ``finetune``, ``lora``, ``merge`` (weight = the ingredient's affine weight; add
    difference gives ``(1, m, -m)``), ``copy`` (same file or same weights in another precision),
    ``component`` (``components`` names what came from the source)."""
    edges: list[dict[str, Any]] = []
    for n in plan:
        if n.op in ("finetune", "lora"):
            edges.append({"source": n.parents[0], "target": n.name, "kind": n.op, "weight": 1.0})
        elif n.op in ("merge", "add_difference"):
            parents = list(zip(n.parents, n.weights, strict=True))
            if n.op == "add_difference":  # A + m (B - C): C is an ingredient only when it is not A
                pass
            for src, w in parents:
                edges.append({"source": src, "target": n.name, "kind": "merge", "weight": w})
        elif n.op in ("copy", "resave"):
            edges.append({"source": n.parents[0], "target": n.name, "kind": "copy", "weight": 1.0,
                          "how": "bytes" if n.op == "copy" else f"resave {n.dtype}"})
        elif n.op == "swap":
            for src, comps in zip(n.parents, n.components, strict=True):
                edges.append({"source": src, "target": n.name, "kind": "component", "weight": 1.0,
                              "components": comps.split("+")})
    return {
        "schema": TRUTH_SCHEMA,
        "base": plan[0].name,
        "nodes": [n.to_json() for n in plan],
        "edges": edges,
    }


# --------------------------------------------------------------------------- model files


def specs_of(plan: Sequence[Node], family: str = "sd1", width: int = 16) -> dict[str, Spec]:
    """A :mod:`sdforensics.synth.specs` spec per node (values as the file will hold them)."""
    specs: dict[str, Spec] = {}
    for n in plan:
        specs[n.name] = _node_spec(n, [specs[p] for p in n.parents], family, width)
    return specs


def _node_spec(n: Node, ps: Sequence[Spec], family: str, width: int) -> Spec:
    spec: Spec
    if n.op == "base":
        spec = Base(family, width=width, seed=n.seed)
    elif n.op == "finetune":
        spec = FineTune(ps[0], seed=n.seed, scale=n.scale)
    elif n.op in ("merge", "add_difference"):
        spec = Merge(tuple(zip(n.weights, ps, strict=True)))
    elif n.op == "copy":
        spec = ps[0]
    elif n.op == "resave":
        spec = Rounded(ps[0], "F16")  # the parent's file holds fp16; the re-save rounds that
    elif n.op == "swap":
        comps: dict[str, Spec] = {}
        for parent, names in zip(ps, n.components, strict=True):
            for c in names.split("+"):
                comps[c] = parent
        spec = Swap(comps)
    elif n.op == "lora":
        spec = LowRank(ps[0], seed=n.seed, scale=n.scale)
    else:
        raise ValueError(f"unknown operation {n.op!r}; use one of {', '.join(OPS)}")
    if n.op not in ("copy", "resave"):
        spec = Rounded(spec, "F16")  # every model is made from the fp16 files of its parents
    return spec


def write_collection(
    out: Path,
    plan: Sequence[Node],
    family: str = "sd1",
    width: int = 16,
    progress: Callable[[int, int], None] | None = None,
    names: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write one safetensors file per node into ``out`` and ``truth.json`` next to them.

    ``names`` may give a node another file stem (e.g. a hostile one for escaping tests); the truth
    uses the file stems. A ``copy`` is the parent's file byte for byte."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs: dict[str, Spec] = {}
    stems = {n.name: (names or {}).get(n.name, n.name) for n in plan}
    paths: dict[str, Path] = {}
    for i, n in enumerate(plan):
        specs[n.name] = _node_spec(n, [specs[p] for p in n.parents], family, width)
        path = out / f"{stems[n.name]}.safetensors"
        if n.op == "copy":
            path.write_bytes(paths[n.parents[0]].read_bytes())
        else:
            write_safetensors(specs[n.name], path, dtype=DTYPES[n.dtype].torch_dtype)
        paths[n.name] = path
        for m in plan[i + 1 :]:  # later nodes read this one from its file (same values, far cheaper)
            if n.name in m.parents:
                specs[n.name] = Stored(specs[n.name], path)
                break
        if progress is not None:
            progress(i + 1, len(plan))
    truth = truth_of([replace(n, name=stems[n.name], parents=tuple(stems[p] for p in n.parents)) for n in plan])
    (out / "truth.json").write_text(json.dumps(truth, indent=1) + "\n", "utf-8")
    return list(paths.values())


# --------------------------------------------------------------------------- fingerprint space


@dataclass
class _Maker:
    base: Fingerprint
    change_rms: dict[str, tuple[float, float, float]]
    """Per tensor: RMS of a real fine-tune's change in values, sample and structure (scale 0.05)."""
    component_of: Callable[[str], str | None]
    made: dict[str, Fingerprint] = field(default_factory=dict)


def _arrays(t: TensorPrint) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    return (np.asarray(t.values, np.float64), None if t.sample is None else np.asarray(t.sample, np.float64),
            None if t.structure is None else np.asarray(t.structure, np.float64))


def _digest(*parts: object) -> str:
    return hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=32).hexdigest()


def _rms(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.size == 0:
        return 0.0
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _lin(weights: Sequence[float], arrays: Sequence[np.ndarray | None]) -> np.ndarray:
    out = np.zeros_like(np.asarray(arrays[0], np.float64))
    for w, a in zip(weights, arrays, strict=True):
        out += w * np.asarray(a, np.float64)
    return out


def _combine(fps: Sequence[Fingerprint], weights: Sequence[float], name: str) -> dict[str, TensorPrint]:
    out = {}
    for key, t0 in fps[0].tensors.items():
        if t0.dtype.startswith("I") or t0.dtype == "BOOL":
            out[key] = t0
            continue
        arrs = [_arrays(f.tensors[key]) for f in fps]
        vals = _lin(weights, [a[0] for a in arrs])
        samp = None if arrs[0][1] is None else _lin(weights, [a[1] for a in arrs])
        struct = None if arrs[0][2] is None else _lin(weights, [a[2] for a in arrs])
        out[key] = replace(t0, values=np.asarray(vals), sample=samp, structure=struct, digest=_digest(name, key))
    return out


def _quantize(x: np.ndarray | None, dtype: str) -> np.ndarray | None:
    if x is None:
        return None
    return torch.from_numpy(np.asarray(x, np.float32)).to(DTYPES[dtype].torch_dtype).double().numpy()


def _stored(t: TensorPrint, dtype: str) -> TensorPrint:
    """``t`` as a file of ``dtype`` holds it: exact values and coordinate samples rounded to it."""
    if t.dtype.startswith(("I", "U")) or t.dtype == "BOOL":
        return t
    values = _quantize(t.values, dtype) if t.kind == "exact" else t.values
    return replace(t, values=np.asarray(values), sample=_quantize(t.sample, dtype), dtype=dtype)


def fingerprint_collection(
    plan: Sequence[Node], base: Fingerprint, finetuned: Fingerprint, seed: int = 0
) -> dict[str, Fingerprint]:
    """Fingerprints of every node of ``plan`` made from two real ones: ``base`` (the official base)
    and ``finetuned`` (a fine-tune of it at relative scale 0.05, whose change per tensor sets the
    size of each generated change). Merges are exact linear combinations; a fine-tune is its parent
    plus an independent Gaussian change (scaled by ``scale / 0.05``); a re-save rounds the exact
    values and samples to the new precision and adds the matching noise to the sketches; a LoRA
    adds a low-rank change to the two-sided sketch of the attention layers."""
    arch = architecture(str(base.identity.get("arch") or base.family))
    rms = {}
    for key, t in base.tensors.items():
        u = finetuned.tensors.get(key)
        if u is None:
            continue
        a, b = _arrays(t), _arrays(u)
        rms[key] = (_rms(a[0], b[0]), _rms(a[1], b[1]), _rms(a[2], b[2]))
    mk = _Maker(base, rms, arch.component_of)
    rng = np.random.default_rng(seed)
    for n in plan:
        ps = [mk.made[p] for p in n.parents]
        identity = dict(base.identity)
        identity.update(name=n.name, source_file=f"{n.name}.safetensors", sha256=_digest("file", n.name))
        tensors: dict[str, TensorPrint]
        if n.op == "base":
            tensors = dict(base.tensors)
        elif n.op in ("merge", "add_difference"):
            tensors = _combine(ps, n.weights, n.name)
        elif n.op == "copy":
            tensors = dict(ps[0].tensors)
            identity["sha256"] = ps[0].identity["sha256"]
        elif n.op in ("finetune", "lora"):
            tensors = {}
            for key, t in ps[0].tensors.items():
                if key not in rms or t.dtype.startswith("I"):
                    tensors[key] = t
                    continue
                v, s, st = _arrays(t)
                rv, rs, rst = (x * n.scale / 0.05 for x in rms[key])
                if n.op == "lora":
                    if not (key.endswith(".weight") and any(p in key for p in LORA_LAYERS)):
                        tensors[key] = t
                        continue
                    if st is None:  # a small layer stored exactly: the low-rank change in its values
                        if t.kind != "exact" or len(t.shape) != 2 or v.size != t.shape[0] * t.shape[1]:
                            tensors[key] = t
                            continue
                        low = rng.normal(size=(t.shape[0], 4)) @ rng.normal(size=(4, t.shape[1])) / 2.0
                        v = v + rv * low.ravel()
                        tensors[key] = replace(t, values=v, digest=_digest(n.name, key))
                        continue
                    k = int(round(st.size**0.5))
                    low = rng.normal(size=(k, 4)) @ rng.normal(size=(4, st.size // k)) / 2.0
                    st = st + rst * low.ravel()
                    v = v + rv * rng.normal(size=v.shape)
                    s = None if s is None else s + rs * rng.normal(size=s.shape)
                else:
                    v = v + rv * rng.normal(size=v.shape)
                    s = None if s is None else s + rs * rng.normal(size=s.shape)
                    st = None if st is None else st + rst * rng.normal(size=st.shape)
                tensors[key] = replace(t, values=v, sample=s, structure=st, digest=_digest(n.name, key))
        elif n.op == "resave":
            tensors = {}
            eps = {"F32": 0.0, "F16": 2.0**-11, "BF16": 2.0**-8, "F8_E4M3": 2.0**-4}.get(n.dtype, 0.0) / 3**0.5
            for key, t in ps[0].tensors.items():
                if t.dtype.startswith("I"):
                    tensors[key] = t
                    continue
                v, s, st = _arrays(t)
                if t.kind == "exact":
                    v = _quantize(v, n.dtype)  # type: ignore[assignment]
                else:
                    v = v + eps * float(np.sqrt(np.mean(v**2))) * rng.normal(size=v.shape)
                s = _quantize(s, n.dtype)
                if st is not None:
                    st = st + eps * float(np.sqrt(np.mean(st**2))) * rng.normal(size=st.shape)
                same = n.dtype == "F32"  # an fp32 up-cast of fp16 values keeps every fp16 digest
                tensors[key] = replace(t, values=np.asarray(v), sample=s, structure=st, dtype=n.dtype,
                                       digest=t.digest if same else _digest(n.name, key))
        elif n.op == "swap":
            src: dict[str, Fingerprint] = {}
            for parent, names in zip(ps, n.components, strict=True):
                for c in names.split("+"):
                    src[c] = parent
            tensors = {}
            for key, t in ps[0].tensors.items():
                comp = mk.component_of(key) or "unet"
                tensors[key] = src.get(comp, ps[0]).tensors.get(key, t)
        else:
            raise ValueError(f"unknown operation {n.op!r}; use one of {', '.join(OPS)}")
        if n.op in ("finetune", "lora", "merge", "add_difference"):  # the file holds n.dtype values
            tensors = {k: _stored(t, n.dtype) for k, t in tensors.items()}
        made = Fingerprint(base.scheme, identity, tensors)
        identity["component_hashes"] = component_digests(made, arch)  # what the file's own would say
        mk.made[n.name] = made
    return mk.made
