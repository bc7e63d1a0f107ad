"""What a LoRA file is, as one frozen value (``Analysis.lora``); :meth:`LoraDescription.to_json` is
the ``"lora"`` object of ``sdf analyze --format json``, key by key."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class LoraDescription:
    """Family, format, ranks, alphas, targeted layers and blocks, training metadata of a LoRA file."""

    path: str
    format: str
    container: str
    family: str | None
    compatible_families: tuple[str, ...]
    algorithms: tuple[str, ...]
    rank: int | None
    ranks: dict[str, int]
    """rank (as text) -> layers with it"""
    alphas: dict[str, int]
    """alpha (``%g``) -> layers with it"""
    scale: tuple[float, ...]
    layers: int
    mapped_layers: int
    conv_layers: int
    bakeable: bool
    components: dict[str, int]
    targets: tuple[str, ...]
    """canonical keys of the model weights the LoRA changes"""
    target_blocks: dict[str, str]
    blocks: dict[str, int]
    unmapped: tuple[str, ...]
    ignored_tensors: tuple[str, ...]
    embeddings: dict[str, tuple[int, ...]]
    dtypes: dict[str, int]
    params: int
    training: dict[str, Any]
    """kohya ``ss_*`` metadata, summarised (see :func:`sdforensics.lora.files.training_summary`)"""
    notes: tuple[str, ...]
    kind: str = "lora"

    def to_json(self) -> dict[str, Any]:
        """The JSON object (tuples as lists), keys in the order the report has always written them."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            if f.name == "kind":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif f.name == "embeddings":
                value = {k: list(v) for k, v in value.items()}
            out[f.name] = value
        return out
