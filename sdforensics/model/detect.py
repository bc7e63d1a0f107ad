"""Which architecture a checkpoint is, as a score against key/shape tables kept as data.

Each architecture in ``data/arch`` is scored by the share of its keys the file has with the
right shape; the components present (UNet, text encoders, VAE, EMA) are read off per prefix.
Shapes may be uniformly narrower than the release (synthetic or pruned-width test models):
every dimension that is a multiple of 64 divided by one factor; that factor is reported.
An unknown file still gets its closest candidate, with missing and extra keys.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sdforensics.model.architecture import Architecture, architectures, variants
from sdforensics.readers.base import TensorInfo

ABSENT_IS_NORMAL = ("embeddings.position_ids",)
"""Keys a real checkpoint may lack without anything being wrong: CLIP's ``position_ids`` buffer is
not saved by transformers >= 4.31 (every diffusers text encoder since, many checkpoints)."""


@dataclass(frozen=True)
class ArchMatch:
    name: str
    family: str
    label: str
    score: float
    """Share of the file's keys this architecture explains with the right name and shape, 0..1."""
    matched: int
    expected: int
    shape_mismatches: int
    coverage: float = 0.0
    """Share of the present components' keys the file has (1.0 for a complete file)."""


@dataclass(frozen=True)
class ArchitectureReport:
    family: str | None
    name: str | None
    label: str
    variant: str
    components: tuple[str, ...]
    text_encoders: tuple[str, ...]
    ema: bool
    width_factor: int
    """1 for release widths; n when every 64-multiple dimension is 1/n of the release."""
    match: ArchMatch | None
    runner_up: ArchMatch | None
    missing_components: tuple[str, ...]
    missing_keys: tuple[str, ...]
    n_missing: int
    extra_keys: tuple[str, ...]
    n_extra: int
    hints: tuple[str, ...]


def scaled(shape: Sequence[int], factor: int) -> tuple[int, ...]:
    """A release shape at 1/``factor`` width (dims that are multiples of 64 divided)."""
    if factor == 1:
        return tuple(shape)
    return tuple(d // factor if d % 64 == 0 and d >= 64 else d for d in shape)


def _width_factor(arch: Architecture, shapes: dict[str, tuple[int, ...]]) -> int:
    ratios: Counter[int] = Counter()
    for key, (shape, _) in arch.keys.items():
        got = shapes.get(key)
        if got is None or len(got) != len(shape):
            continue
        for want, have in zip(shape, got, strict=True):
            if want % 64 == 0 and have and want % have == 0:
                ratios[want // have] += 1
                break
    if not ratios:
        return 1
    return ratios.most_common(1)[0][0]


def _variant_ok(key: str, want: tuple[int, ...], got: tuple[int, ...]) -> bool:
    spec = variants()
    if key != spec["key"] or len(want) != len(got):
        return False
    dim = spec["dim"]
    return all(w == g for i, (w, g) in enumerate(zip(want, got, strict=True)) if i != dim)


def _score(arch: Architecture, shapes: dict[str, tuple[int, ...]]) -> tuple[ArchMatch, int, set[str]]:
    factor = _width_factor(arch, shapes)
    matched_by_comp: Counter[str] = Counter()
    total_by_comp: Counter[str] = Counter()
    mismatches = 0
    for key, (shape, _) in arch.keys.items():
        comp = arch.component_of(key) or "other"
        total_by_comp[comp] += 1
        got = shapes.get(key)
        if got is None:
            continue
        want = scaled(shape, factor)
        if got == want or _variant_ok(key, want, got):
            matched_by_comp[comp] += 1
        else:
            mismatches += 1
    present = {c for c in total_by_comp if matched_by_comp[c] > 0}
    expected = sum(total_by_comp[c] for c in present)
    matched = sum(matched_by_comp.values())
    known = arch.keys.keys() | arch.optional_keys.keys()
    # Signature tables list a few keys only: keys they do not list say nothing against them.
    unexplained = sum(1 for k in shapes if k not in known) if arch.full else 0
    score = matched / (matched + mismatches + unexplained) if matched else 0.0
    coverage = matched / expected if expected else 0.0
    match = ArchMatch(arch.name, arch.family, arch.label, round(score, 4), matched, expected, mismatches,
                      round(coverage, 4))
    return match, factor, present


def detect(infos: Sequence[TensorInfo], ema: bool = False) -> ArchitectureReport:
    """Score ``infos`` (canonical names) against every known architecture."""
    shapes = {i.name: i.shape for i in infos}
    scored = []
    for arch in architectures():
        match, factor, present = _score(arch, shapes)
        # full tables are more trustworthy than signatures at equal score
        scored.append(((match.score, match.coverage, arch.full), arch, match, factor, present))
    scored.sort(key=lambda s: s[0], reverse=True)
    _, arch, match, factor, present = scored[0]
    runner = next((s[2] for s in scored[1:] if s[2].score > 0.05 and s[1].name != arch.name), None)
    if match.score < 0.5 or match.matched < 4:
        return _unknown(infos, shapes, arch, match, runner, ema)

    known = set(arch.keys) | set(arch.optional_keys)
    missing = sorted(k for k in arch.keys if k not in shapes and (arch.component_of(k) or "") in present
                     and not k.endswith(ABSENT_IS_NORMAL))
    extra = sorted(k for k in shapes if k not in known)
    comps = [c for c in ("unet", "text_encoder", "vae") if c in present]
    tes = tuple(
        name for name, prefix in arch.text_encoders.items() if any(k.startswith(prefix) for k in shapes)
    )
    spec = variants()
    variant = "standard"
    in_shape = shapes.get(spec["key"])
    if in_shape is not None and len(in_shape) > spec["dim"]:
        variant = spec["by_channels"].get(
            str(in_shape[spec["dim"]]), f"{in_shape[spec['dim']]}-channel input"
        )
    hints = [text for key, text in spec["markers"].items() if key in shapes]
    if arch.family == "sd2" and not hints:
        hints.append("prediction type unknown: SD 2.x 768 models use v-prediction, 512 models epsilon")
    return ArchitectureReport(
        family=arch.family,
        name=arch.name,
        label=arch.label,
        variant=variant,
        components=tuple(comps) + (("ema",) if ema else ()),
        text_encoders=tes,
        ema=ema,
        width_factor=factor,
        match=match,
        runner_up=runner if runner and runner.score >= 0.05 else None,
        missing_components=tuple(
            c for c in ("unet", "text_encoder", "vae") if c in arch.components and c not in present
        ),
        missing_keys=tuple(missing[:20]),
        n_missing=len(missing),
        extra_keys=tuple(extra[:20]),
        n_extra=len(extra),
        hints=tuple(hints),
    )


def _unknown(
    infos: Sequence[TensorInfo],
    shapes: dict[str, tuple[int, ...]],
    arch: Architecture,
    match: ArchMatch,
    runner: ArchMatch | None,
    ema: bool,
) -> ArchitectureReport:
    missing = sorted(k for k in arch.keys if k not in shapes)
    extra = sorted(k for k in shapes if k not in arch.keys)
    return ArchitectureReport(
        family=None,
        name=None,
        label=f"unknown (closest: {arch.label}, {match.score:.0%} of its keys)",
        variant="unknown",
        components=("ema",) if ema else (),
        text_encoders=(),
        ema=ema,
        width_factor=1,
        match=match,
        runner_up=runner,
        missing_components=(),
        missing_keys=tuple(missing[:20]),
        n_missing=len(missing),
        extra_keys=tuple(extra[:20]),
        n_extra=len(extra),
        hints=(),
    )
