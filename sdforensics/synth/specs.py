"""Synthetic Stable Diffusion checkpoints with the real key/shape layouts.

Real checkpoints cannot be downloaded here, so tests, docs and benchmarks use models built
from the architecture tables: every key and shape of a real SD1.5 / SD2.1 / SDXL file, at full
size or at 1/``width`` width. A model is a *spec*, a function from tensor name to values that is
deterministic in its seed, so any tensor of any model can be made on its own and files of
several GB are written one tensor at a time:

* :class:`Base` -- random weights with the statistics of trained ones (weights ~ N(0, 1/fan_in),
  norm scales near 1, small biases, exact ``position_ids``);
* :class:`FineTune` -- parent + a structured delta (low-rank plus noise, ``scale`` x the
  tensor's typical magnitude), the way real fine-tunes differ from their base;
* :class:`Merge` -- a weighted sum of specs, per block if wanted (weighted sum, add difference
  and block-weighted merges are all this);
* :class:`Swap` -- components taken from different specs.

>>> base = Base("sd1", width=16, seed=1)
>>> tuned = FineTune(base, seed=2)
>>> mix = Merge(((0.7, base), (0.3, tuned)))
>>> write_safetensors(mix, Path("mix.safetensors"))           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdforensics.core.dtypes import DTYPES, by_torch
from sdforensics.model.architecture import architecture, block_map_of
from sdforensics.model.detect import scaled

FAMILIES = {"sd1": "sd1", "sd15": "sd1", "sd2": "sd2", "sd21": "sd2", "sdxl": "sdxl"}


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def _gen(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


class Spec:
    """A synthetic model: ``tensor(key)`` gives its float32 values for any key of its layout."""

    family: str
    width: int

    def tensor(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        arch = architecture(self.family)
        return {k: (scaled(shape, self.width), dt) for k, (shape, dt) in arch.keys.items()}

    def shape(self, key: str) -> tuple[int, ...]:
        return self.layout()[key][0]


@dataclass(frozen=True, eq=False)
class Base(Spec):
    family: str
    width: int = 1
    seed: int = 0
    _layout: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; use one of {sorted(FAMILIES)}")
        object.__setattr__(self, "family", FAMILIES[self.family])
        if not self._layout:
            self._layout.update(Spec.layout(self))

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self._layout

    def tensor(self, key: str) -> torch.Tensor:
        shape, dtype = self._layout[key]
        if not DTYPES[dtype].is_float:
            n = shape[-1] if shape else 1
            return torch.arange(n, dtype=torch.int64).reshape(shape)
        g = _gen("base", self.seed, key)
        leaf = key.rsplit(".", 1)[-1]
        if len(shape) <= 1:
            if any(s in key for s in ("norm", "ln_", "layer_norm", ".gamma")) and leaf in ("weight", "gamma"):
                return 1.0 + 0.05 * torch.randn(shape, generator=g)
            return 0.02 * torch.randn(shape, generator=g)
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return torch.randn(shape, generator=g) / (fan_in**0.5)


class Derived(Spec):
    """A spec computed from ``self.parent``: same family, width and key layout."""

    parent: Spec

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.parent.family

    @property
    def width(self) -> int:  # type: ignore[override]
        return self.parent.width

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self.parent.layout()


def _magnitude(t: torch.Tensor) -> float:
    if t.dim() <= 1:
        return 0.02
    fan_in = t[0].numel()
    return 1.0 / fan_in**0.5


@dataclass(frozen=True, eq=False)
class FineTune(Derived):
    """``parent`` + low-rank-plus-noise delta of relative size ``scale``."""

    parent: Spec
    seed: int = 1
    scale: float = 0.05
    rank: int = 8
    noise: float = 0.5
    """Share of the delta's energy that is dense noise rather than low rank."""

    def delta(self, key: str, base: torch.Tensor) -> torch.Tensor:
        g = _gen("ft", self.seed, key)
        shape = base.shape
        mag = _magnitude(base) * self.scale
        if base.dim() <= 1:
            return mag * torch.randn(shape, generator=g)
        rows, cols = shape[0], base[0].numel()
        r = min(self.rank, rows, cols)
        u = torch.randn(rows, r, generator=g)
        v = torch.randn(r, cols, generator=g)
        low = (u @ v) / (r**0.5)
        dense = torch.randn(rows, cols, generator=g)
        mix = (1 - self.noise) ** 0.5 * low + self.noise**0.5 * dense
        return (mag * mix).reshape(shape)

    def tensor(self, key: str) -> torch.Tensor:
        base = self.parent.tensor(key)
        if not base.is_floating_point():
            return base
        return base + self.delta(key, base)


@dataclass(frozen=True, eq=False)
class Merge(Spec):
    """sum_i w_i * spec_i, with optional per-block weights ``blocks[block] = (w_1, ..., w_n)``."""

    parts: tuple[tuple[float, Spec], ...]
    blocks: Mapping[str, tuple[float, ...]] | None = None

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.parts[0][1].family

    @property
    def width(self) -> int:  # type: ignore[override]
        return self.parts[0][1].width

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self.parts[0][1].layout()

    def weights_for(self, key: str) -> tuple[float, ...]:
        if self.blocks:
            bmap = block_map_of(self.family)
            block = bmap.block_of(key)
            if block is not None and block in self.blocks:
                return tuple(self.blocks[block])
        return tuple(w for w, _ in self.parts)

    def tensor(self, key: str) -> torch.Tensor:
        weights = self.weights_for(key)
        first = self.parts[0][1].tensor(key)
        if not first.is_floating_point():
            return first
        out = weights[0] * first.double()
        for w, (_, spec) in zip(weights[1:], self.parts[1:], strict=True):
            out += w * spec.tensor(key).double()
        return out.float()


@dataclass(frozen=True, eq=False)
class Swap(Spec):
    """Components from different specs: ``{"unet": A, "text_encoder": B, "vae": C}``."""

    components: Mapping[str, Spec]

    @property
    def family(self) -> str:  # type: ignore[override]
        return next(iter(self.components.values())).family

    @property
    def width(self) -> int:  # type: ignore[override]
        return next(iter(self.components.values())).width

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return next(iter(self.components.values())).layout()

    def tensor(self, key: str) -> torch.Tensor:
        comp = architecture(self.family).component_of(key) or "unet"
        return self.components[comp].tensor(key)


@dataclass(frozen=True, eq=False)
class Mapped(Spec):
    """Any element-wise function of other specs' tensors (TIES, DARE, ... made by other tools)."""

    inputs: tuple[Spec, ...]
    fn: Callable[[str, list[torch.Tensor]], torch.Tensor]

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.inputs[0].family

    @property
    def width(self) -> int:  # type: ignore[override]
        return self.inputs[0].width

    def layout(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return self.inputs[0].layout()

    def tensor(self, key: str) -> torch.Tensor:
        values = [s.tensor(key) for s in self.inputs]
        if not values[0].is_floating_point():
            return values[0]
        return self.fn(key, values)


def tensors(spec: Spec, dtype: torch.dtype = torch.float16) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for every key in sorted order, floats cast to ``dtype``."""
    for key in sorted(spec.layout()):
        t = spec.tensor(key)
        yield key, (t.to(dtype) if t.is_floating_point() else t)


def state_dict(spec: Spec, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    return dict(tensors(spec, dtype))


def write_safetensors(
    spec: Spec,
    path: Path,
    dtype: torch.dtype = torch.float16,
    metadata: Mapping[str, str] | None = None,
    keys: Callable[[str], str | None] | None = None,
) -> Path:
    """Write ``spec`` as a safetensors file, one tensor at a time (memory stays ~ one tensor).

    ``keys`` may rename (return a new name) or drop (return None) keys, to write layouts
    seen in the wild (bare UNet, old text-encoder names ...).
    """
    layout = spec.layout()
    names = []
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for key in sorted(layout):
        out_name = keys(key) if keys else key
        if out_name is None:
            continue
        shape, code = layout[key]
        out_dtype = dtype if DTYPES[code].is_float else DTYPES[code].torch_dtype
        size = by_torch(out_dtype).itemsize
        n = math.prod(shape)
        header[out_name] = {
            "dtype": by_torch(out_dtype).code,
            "shape": list(shape),
            "data_offsets": [offset, offset + n * size],
        }
        names.append((key, out_dtype))
        offset += n * size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for key, out_dtype in names:
            t = spec.tensor(key).to(out_dtype).contiguous().reshape(-1)
            fh.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    tmp.replace(path)
    return path


def write_ckpt(spec: Spec, path: Path, dtype: torch.dtype = torch.float16, lightning: bool = True) -> Path:
    """Write ``spec`` as a torch zip ``.ckpt`` (``{"state_dict": ...}`` plus training fields)."""
    sd = state_dict(spec, dtype)
    obj: dict[str, object] = {"state_dict": sd}
    if lightning:
        obj.update({"epoch": 6, "global_step": 840000, "pytorch-lightning_version": "1.4.2"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_diffusers(spec: Spec, path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``spec`` as a diffusers folder (model_index.json, unet/, text_encoder/, vae/)."""
    from sdforensics.synth.diffusers import write_diffusers as _write

    return _write(state_dict(spec, dtype), spec.family, Path(path), dtype=dtype)


def family_specs(family: str, width: int = 16, finetunes: int = 6, seed: int = 0) -> dict[str, Spec]:
    """An official-style base and fine-tunes ``ft1..ftN``; the last is a child of ``ft1``.

    Fine-tunes differ from the base by ~5% of the weights' magnitude, as real ones do; the
    child differs from its parent by a smaller delta (a further fine-tune of a fine-tune).
    """
    base = Base(family, width=width, seed=seed)
    specs: dict[str, Spec] = {"base": base}
    for i in range(1, finetunes + 1):
        if i == finetunes and finetunes >= 2:
            specs[f"ft{i}"] = FineTune(specs["ft1"], seed=seed * 1000 + i, scale=0.03)
        else:
            specs[f"ft{i}"] = FineTune(base, seed=seed * 1000 + i, scale=0.05)
    return specs


def parse_recipe(text: str, specs: Mapping[str, Spec]) -> Spec:
    """``"ft1:0.6,ft2:0.4"`` -> Merge of those specs (weights as given; negative allowed)."""
    parts = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        if name not in specs:
            raise ValueError(f"unknown model {name!r} in recipe; known: {', '.join(specs)}")
        parts.append((float(weight), specs[name]))
    return Merge(tuple(parts))


def write_family(out: Path, family: str, width: int, finetunes: int, seed: int, fmt: str) -> list[Path]:
    """Write :func:`family_specs` to ``out`` as safetensors, ckpt or diffusers folders."""
    out = Path(out)
    paths = []
    for name, spec in family_specs(family, width, finetunes, seed).items():
        if fmt == "safetensors":
            paths.append(write_safetensors(spec, out / f"{name}.safetensors"))
        elif fmt == "ckpt":
            paths.append(write_ckpt(spec, out / f"{name}.ckpt"))
        elif fmt == "diffusers":
            paths.append(write_diffusers(spec, out / name))
        else:
            raise ValueError(f"unknown format {fmt!r}: use safetensors, ckpt or diffusers")
    return paths
