"""Loading and validating the data files that describe architectures, blocks and key layouts.

Everything architecture-specific lives in ``sdforensics/data/*.json``; this module turns those
files into frozen values. The files ship with the package and never change at run time, so
they are read once per process.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from sdforensics.core.dtypes import DTYPES


@dataclass(frozen=True)
class Architecture:
    """One architecture as a key/shape table (``full``) or a set of signature keys."""

    name: str
    family: str
    label: str
    source: str
    components: dict[str, tuple[str, ...]]
    """component -> canonical key prefixes (``unet``, ``text_encoder``, ``vae``)."""
    text_encoders: dict[str, str]
    blocks: str | None
    full: bool
    keys: dict[str, tuple[tuple[int, ...], str]]
    optional_keys: dict[str, tuple[tuple[int, ...], str]]
    content_hash_exclude: tuple[re.Pattern[str], ...] = ()
    """Keys left out of component content hashes (unused at inference, dropped by diffusers)."""

    def hashed_component_of(self, key: str) -> str | None:
        """The component whose content hash covers ``key`` (None: not hashed)."""
        if any(p.search(key) for p in self.content_hash_exclude):
            return None
        return self.component_of(key)

    def component_of(self, key: str) -> str | None:
        for comp, prefixes in self.components.items():
            if key.startswith(prefixes):
                return comp
        return None


@dataclass(frozen=True)
class BlockMap:
    """Canonical key -> merge block id (SuperMerger convention), from regex rules."""

    name: str
    ids: tuple[str, ...]
    rules: tuple[tuple[re.Pattern[str], str], ...]
    convention: str

    @property
    def recipe_convention(self) -> str:
        """How a recipe's blocks are numbered, from this map's own ids (SDXL ends at OUT08, SD1 at OUT11)."""
        last_out = [b for b in self.ids if b.startswith("OUT")][-1:] or ["the last OUT block"]
        return f"supermerger: time_embed in IN00, final out. in {last_out[0]}, text encoder = BASE"

    def block_of(self, key: str) -> str | None:
        for pattern, template in self.rules:
            m = pattern.match(key)
            if m:
                if "{1}" in template:
                    return template.replace("{1}", f"{int(m.group(1)):02d}")
                return template
        return None


@dataclass(frozen=True)
class KeyAliases:
    rewrites: tuple[tuple[str, str, str], ...]
    ema_prefixes: tuple[str, ...]
    ignored_keys: frozenset[str]


def _read(name: str) -> Any:
    return json.loads(resources.files("sdforensics").joinpath("data", name).read_text("utf-8"))


def _table(raw: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, (shape, dtype) in raw.items():
        if dtype not in DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"bad architecture table entry {key!r}: {shape} {dtype}")
        out[key] = (tuple(shape), dtype)
    return out


@cache
def architectures() -> tuple[Architecture, ...]:
    """Every architecture we know, full tables first."""
    out = []
    for entry in sorted(
        resources.files("sdforensics").joinpath("data", "arch").iterdir(), key=lambda p: p.name
    ):
        if not entry.name.endswith(".json"):
            continue
        raw = json.loads(entry.read_text("utf-8"))
        out.append(
            Architecture(
                name=raw["name"],
                family=raw["family"],
                label=raw["label"],
                source=raw["source"],
                components={c: tuple(p) for c, p in raw["components"].items()},
                text_encoders=dict(raw.get("text_encoders", {})),
                blocks=raw.get("blocks"),
                full=bool(raw["full"]),
                keys=_table(raw["keys"]),
                optional_keys=_table(raw.get("optional_keys", {})),
                content_hash_exclude=tuple(re.compile(rx) for rx in raw.get("content_hash_exclude", [])),
            )
        )
    return tuple(sorted(out, key=lambda a: (not a.full, a.name)))


def architecture(name: str) -> Architecture:
    for arch in architectures():
        if arch.name == name:
            return arch
    raise KeyError(name)


@cache
def block_maps() -> dict[str, BlockMap]:
    raw = _read("blocks.json")
    return {
        name: BlockMap(
            name=name,
            ids=tuple(spec["ids"]),
            rules=tuple((re.compile(rx), tpl) for rx, tpl in spec["rules"]),
            convention=raw["convention"],
        )
        for name, spec in raw["maps"].items()
    }


DEFAULT_BLOCK_MAP = "sd1"
"""The map used for an architecture whose table names none (SD3, FLUX, unknown files)."""


def block_map_of(arch_name: str | None) -> BlockMap:
    """The merge-block map an architecture's table names (``data/arch/<name>.json`` ``blocks``)."""
    name = None
    if arch_name:
        try:
            name = architecture(arch_name).blocks
        except KeyError:
            name = None
    return block_maps()[name or DEFAULT_BLOCK_MAP]


@cache
def key_aliases() -> KeyAliases:
    raw = _read("key_aliases.json")
    return KeyAliases(
        rewrites=tuple((a, b, why) for a, b, why in raw["rewrites"]),
        ema_prefixes=tuple(raw["ema_prefixes"]),
        ignored_keys=frozenset(raw["ignored_keys"]),
    )


@cache
def variants() -> dict[str, Any]:
    return dict(_read("variants.json"))
