"""The terminal summary: what the file is, what it is made of, how sure we are.

Every string that came from the file goes through :func:`~sdforensics.core.safetext.printable`, so
a tensor name or metadata value cannot move the cursor or colour the terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sdforensics.core.safetext import human_size, percent, printable
from sdforensics.library.registry import RegistryMatch

if TYPE_CHECKING:
    from sdforensics.analysis import Analysis

_MARK = {"error": "!!", "warning": "! ", "info": "- "}


def _params(n: int) -> str:
    """A value count a reader takes in at a glance: ``2.57 B``, ``859.5 M``, or exact below 100,000
    (an embedding's 768 values read as ``0.0 M`` before)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n:,}"


def identity_lines(a: Analysis) -> list[str]:
    arch = a.architecture
    lines = [f"{printable(str(a.path), 200)}"]
    fmt = a.layout.format.container
    comps = ", ".join(arch.components) or "none recognised"
    if arch.family:
        variant = "" if arch.variant == "standard" else f", {arch.variant}"
        lines.append(f"  what     {arch.label}{variant} ({comps}); {fmt}")
    else:
        lines.append(f"  what     {arch.label}; {fmt}")
    if arch.runner_up and arch.match and arch.runner_up.score >= arch.match.score - 1e-9:
        lines.append(f"           equally consistent with {arch.runner_up.label} (these parts are shared)")
    if arch.text_encoders:
        lines.append(f"  text enc {', '.join(arch.text_encoders)}")
    ident = a.identity
    dtypes = ", ".join(
        f"{k} {percent(v / max(ident.n_params, 1))}"
        for k, v in sorted(ident.dtypes.items(), key=lambda kv: -kv[1])
    )
    lines.append(f"  tensors  {ident.n_tensors:,} ({_params(ident.n_params)} values; {dtypes})")
    if a.hashes:
        h = a.hashes
        lines.append(f"  size     {human_size(h.bytes)} ({h.bytes:,} bytes)")
        lines.append(f"  sha256   {h.sha256}")
        lines.append(
            f"  hashes   AutoV2 {h.autov2}  AutoV1 {h.autov1 or '-'}  AutoV3 {(h.autov3 or '-')[:12]}  "
            f"CRC32 {h.crc32}"
        )
        lines.append(f"           BLAKE3 {h.blake3}")
    if ident.component_hashes:
        content = "  ".join(f"{c} {v[:12]}" for c, v in ident.component_hashes.items())
        lines.append(f"  content  {content}  (value hashes, same across fp16/fp32 re-saves)")
    globs = a.layout.format.globals
    if a.layout.format.container.startswith("pickle"):
        flagged = [g for g in globs if g.verdict != "safe"]
        verdict = "dangerous" if any(g.verdict == "dangerous" for g in flagged) else (
            "suspicious" if flagged else "clean")
        lines.append(f"  pickle   scan {verdict}: {len(globs)} globals named, {len(flagged)} not on the allowlist"
                     + (": " + ", ".join(printable(g.qualname, 80) for g in flagged[:5]) if flagged else
                        " (nothing was executed to read it)"))
    for note in a.layout.mapping.notes:
        lines.append(f"  keys     {printable(note, 200)}")
    for hint in arch.hints:
        lines.append(f"  note     {hint}")
    return lines


def _registry_lines(reg: Sequence[RegistryMatch] | None) -> list[str]:
    if not reg:
        return []
    out = []
    for m in reg:
        if m.strength == "exact":
            out.append(f"  known    {m.entry.name} (exact {m.how} match; source: {m.entry.source})")
        else:
            out.append(f"  hint     {m.entry.name}? ({m.how} only: {m.warning or 'weak evidence'})")
    return out


def _counts(value: Any) -> list[tuple[str, int | None]]:
    """``{"4": 96, "8": 32}`` (value -> layers, as :func:`lora.describe_lora` gives) or a plain list."""
    if isinstance(value, dict):
        return [(printable(str(k), 20), int(n)) for k, n in value.items()]
    return [(printable(str(v), 20), None) for v in value or []]


def _count_text(counts: list[tuple[str, int | None]], limit: int) -> str:
    shown = ", ".join(v if n is None or len(counts) == 1 else f"{v} ({n} layer{'s' * (n != 1)})"
                      for v, n in counts[:limit])
    return shown + (f", ... ({len(counts) - limit} more)" if len(counts) > limit else "")


def _algorithms(info: dict[str, Any]) -> str:
    """`` (LoHa, LoKr)`` when the file holds more than plain low-rank pairs."""
    algos = [str(a) for a in info.get("algorithms") or []]
    if not algos or algos == ["lora"]:
        return ""
    names = {"loha": "LoHa", "lokr": "LoKr", "lora": "LoRA", "lora+dora": "DoRA"}
    return " (" + ", ".join(printable(names.get(a, a), 20) for a in algos) + ")"


def lora_lines(info: dict[str, Any]) -> list[str]:
    """A LoRA file in a few lines: for what, how big, what it touches, how it was trained."""
    fam = info.get("family") or "no known architecture"
    ranks = _counts(info.get("ranks"))
    rank = info.get("rank")
    alphas = _counts(info.get("alphas"))
    lines = [
        f"  lora     {printable(str(info.get('format')), 60)} LoRA{_algorithms(info)} for {fam}; rank {rank}"
        + (f" (ranks {_count_text(ranks, 6)})" if len(ranks) > 1 else "")
        + (f", alpha {_count_text(alphas, 4)}" if alphas else ""),
        f"  targets  {info.get('mapped_layers')} of {info.get('layers')} layers mapped; components "
        f"{', '.join(info.get('components') or [])}",
    ]
    blocks = info.get("blocks") or {}
    if blocks:
        lines.append("  blocks   " + ", ".join(f"{b} {n}" for b, n in blocks.items()))
    train = info.get("training") or {}
    if train:
        shown = ", ".join(f"{k} {printable(str(v), 60)}" for k, v in list(train.items())[:6])
        lines.append(f"  training {shown}")
    for note in info.get("notes") or []:
        lines.append(f"  note     {printable(str(note), 200)}")
    return lines


def _identical_lines(identical: dict[str, str | None] | None) -> list[str]:
    """Components whose content equals a library reference's (any dtype: the hash is of fp16 values)."""
    same = {c: r for c, r in (identical or {}).items() if r}
    if not same:
        return []
    names = set(same.values())
    if len(same) == len(identical or {}) and len(names) == 1:
        return [f"  identical to {printable(names.pop(), 80)}: every component holds the same weights"]
    shown = ", ".join(f"{c.replace('_', ' ')} = {printable(r, 80)}" for c, r in same.items())
    return [f"  identical {shown}"]


def analysis_to_text(a: Analysis) -> str:
    lines = identity_lines(a)
    if a.lora is not None:
        lines = [ln for ln in lines if not ln.startswith("  what ")]
        lines[1:1] = lora_lines(a.lora.to_json())
    if a.embedding is not None:
        from sdforensics.model.embedding import embedding_lines

        lines = [ln for ln in lines if not ln.startswith("  what ")]
        lines[1:1] = embedding_lines(a.embedding.to_json())
    lines += _registry_lines(a.registry)
    lines += _identical_lines(a.identical)
    for line in a.summary or ():
        lines.append(f"  {line}")
    declared = a.metadata.declared
    if declared:
        lines.append(f"  declared {declared.tool}: {printable(declared.text, 300)}")
    if a.metadata.modelspec:
        title = a.metadata.modelspec.get("modelspec.title")
        if title:
            lines.append(f"  title    {title}")
    if a.metadata.training:
        base = a.metadata.training.get("ss_sd_model_name") or a.metadata.training.get("ss_base_model_version")
        lines.append(
            f"  training kohya metadata ({len(a.metadata.training)} ss_* keys){f'; base {base}' if base else ''}"
        )
    if a.problems:
        lines.append("  problems")
        for p in a.problems:
            lines.append(f"    {_MARK[p.severity]} {p.message}")
    else:
        lines.append("  problems none found")
    return "\n".join(lines) + "\n"
