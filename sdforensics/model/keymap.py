"""Stored tensor names -> canonical single-file (ldm/sgm) names.

Files in the wild name the same tensor several ways: an SD1 text encoder saved without
``text_model.``, a UNet-only file without ``model.diffusion_model.``, a bare VAE, FLUX without
its prefix, a ``module.``-wrapped state dict. The rewrites are data (``data/key_aliases.json``);
bare components are recognised by matching their names against the architecture tables with a
component prefix removed, so every table we add teaches this module a new bare layout too.

>>> bare = ["input_blocks.0.0.weight", "input_blocks.0.0.bias", "time_embed.0.weight", "out.2.weight"]
>>> canonicalize(bare).canonical["time_embed.0.weight"]
'model.diffusion_model.time_embed.0.weight'

(A component is recognised from at least four of its names.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from sdforensics.model.architecture import architectures, key_aliases


@dataclass(frozen=True)
class KeyMapping:
    """How each stored name maps to a canonical name, and what was rewritten."""

    canonical: dict[str, str]
    """stored name -> canonical name (every stored name appears; unknown ones map to themselves)."""
    notes: tuple[str, ...]
    ema: tuple[str, ...]
    """Stored names of EMA copies (``model_ema.*``), kept apart from the components."""


@cache
def _known_keys() -> frozenset[str]:
    out: set[str] = set()
    for arch in architectures():
        out.update(arch.keys)
        out.update(arch.optional_keys)
    return frozenset(out)


@cache
def _bare_tables() -> tuple[tuple[str, str, frozenset[str]], ...]:
    """(arch name, prefix, keys of that component with the prefix removed)."""
    rows = []
    for arch in architectures():
        for prefixes in arch.components.values():
            for prefix in prefixes:
                bare = frozenset(k[len(prefix) :] for k in arch.keys if k.startswith(prefix))
                rows.append((arch.name, prefix, bare))
    return tuple(rows)


def canonicalize(names: Iterable[str]) -> KeyMapping:
    """Map stored names to canonical names (see module docstring)."""
    aliases = key_aliases()
    known = _known_keys()
    canonical: dict[str, str] = {}
    notes: list[str] = []
    ema: list[str] = []
    used_rewrites: dict[str, int] = {}
    for name in names:
        if name.startswith(aliases.ema_prefixes):
            ema.append(name)
            canonical[name] = name
            continue
        new = name
        for old, repl, why in aliases.rewrites:
            if name.startswith(old) and (repl + name[len(old) :]) in known:
                new = repl + name[len(old) :]
                used_rewrites[why] = used_rewrites.get(why, 0) + 1
                break
        canonical[name] = new
    for why, count in used_rewrites.items():
        notes.append(f"{count} keys renamed: {why}")

    # Bare components: names not in any table that match a table once a prefix is added.
    for _ in range(4):
        unknown = [n for n, c in canonical.items() if c not in known and n not in ema]
        if not unknown:
            break
        best: tuple[int, str, str] | None = None
        for arch_name, prefix, bare in _bare_tables():
            if any(c.startswith(prefix) for c in canonical.values() if c in known):
                continue  # that component is already present with its prefix
            hits = sum(1 for n in unknown if n in bare)
            if hits >= 4 and (best is None or hits > best[0]):
                best = (hits, arch_name, prefix)
        if best is None:
            break
        hits, arch_name, prefix = best
        _, _, bare = next(r for r in _bare_tables() if r[0] == arch_name and r[1] == prefix)
        for n in unknown:
            if n in bare:
                canonical[n] = prefix + n
        notes.append(f"{hits} keys had no component prefix; read as {prefix!r} ({arch_name} layout)")
    return KeyMapping(canonical=canonical, notes=tuple(notes), ema=tuple(ema))
