"""Textual-inversion embeddings: a few learned token vectors, not a model.

Recognised from tensor names and shapes alone (headers; nothing else is trusted):

* A1111 / stable-diffusion-webui ``.pt``: ``string_to_param.*`` (one ``vectors x width`` tensor;
  the trigger word is the file name, as the webui uses it);
* diffusers ``learned_embeds.bin`` / ``.safetensors``: one tensor per token, named by the token
  (``<cat-toy>``), each ``width`` or ``1 x width``;
* safetensors ``emb_params`` (the webui's safetensors spelling);
* SDXL pairs ``clip_l`` (768 wide) + ``clip_g`` (1280 wide), one row per vector.

The width says the text encoder, hence the family: 768 CLIP ViT-L (SD 1.x), 1024 OpenCLIP ViT-H
(SD 2.x), 768 + 1280 (SDXL).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdforensics.core.safetext import printable
from sdforensics.readers.base import TensorInfo

WIDTH_FAMILY = {768: "sd1", 1024: "sd2"}
"""Text-encoder width of a one-encoder embedding -> family."""
SDXL_PAIR = {"clip_l": 768, "clip_g": 1280}
MAX_VECTORS = 256
"""More token vectors than any embedding has: beyond this, the file is something else."""


@dataclass(frozen=True)
class Embedding:
    format: str
    """``a1111``, ``diffusers``, ``safetensors-emb_params`` or ``sdxl``."""
    tokens: tuple[str, ...]
    """Trigger words: the token names stored in the file, else the file name."""
    vectors: int
    """Token vectors per text encoder."""
    widths: dict[str, int]
    """Text encoder -> vector width (``clip_l`` 768, ``clip_g`` 1280, ``open_clip_h`` 1024)."""
    family: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "embedding", "format": self.format, "tokens": list(self.tokens), "vectors": self.vectors,
                "widths": dict(self.widths), "family": self.family}


def _rows(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(vectors, width)`` of a 1-D or 2-D tensor."""
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    return None


def _encoder(width: int) -> str:
    return {768: "clip_l", 1024: "open_clip_h", 1280: "clip_g"}.get(width, f"width {width}")


def detect_embedding(infos: Iterable[TensorInfo], path: Path) -> Embedding | None:
    """The embedding ``infos`` describe, or None when they are not one.

    >>> detect_embedding([TensorInfo("emb_params", (4, 768), "F32", 12288)], Path("style.safetensors")).family
    'sd1'
    >>> detect_embedding([TensorInfo("model.diffusion_model.out.0.weight", (320,), "F16", 640)], Path("m")) is None
    True
    """
    infos = [i for i in infos if i.dtype not in ("I64", "I32", "I16", "I8", "U8", "BOOL")]
    if not infos or len(infos) > 8:
        return None
    rows = {i.name: _rows(tuple(i.shape)) for i in infos}
    if any(r is None or r[0] > MAX_VECTORS or r[1] < 64 for r in rows.values()):
        return None
    names = set(rows)
    stem = path.stem
    if names == set(SDXL_PAIR):
        lv, lw = rows["clip_l"]  # type: ignore[misc]
        gv, gw = rows["clip_g"]  # type: ignore[misc]
        if (lw, gw) == (SDXL_PAIR["clip_l"], SDXL_PAIR["clip_g"]) and lv == gv:
            return Embedding("sdxl", (stem,), lv, {"clip_l": lw, "clip_g": gw}, "sdxl")
        return None
    widths = {r[1] for r in rows.values() if r is not None}
    if len(widths) != 1:
        return None
    width = widths.pop()
    vectors = sum(r[0] for r in rows.values() if r is not None)
    family = WIDTH_FAMILY.get(width)
    if all(n.startswith("string_to_param.") for n in names):
        return Embedding("a1111", (stem,), vectors, {_encoder(width): width}, family)
    if names == {"emb_params"}:
        return Embedding("safetensors-emb_params", (stem,), vectors, {_encoder(width): width}, family)
    if all("." not in n and "/" not in n for n in names) and family is not None:
        # diffusers: tensors named by their tokens; model keys always have dots
        return Embedding("diffusers", tuple(sorted(names)), vectors, {_encoder(width): width}, family)
    return None


def embedding_lines(info: dict[str, Any]) -> list[str]:
    """An embedding in a few text lines (the ``what`` line of a report)."""
    fam = info.get("family") or "no known architecture"
    widths = ", ".join(f"{printable(str(k), 20)} {v}" for k, v in (info.get("widths") or {}).items())
    tokens = ", ".join(printable(str(t), 60) for t in (info.get("tokens") or [])[:8])
    n = info.get("vectors")
    return [f"  what     textual-inversion embedding for {fam} ({printable(str(info.get('format')), 40)}); "
            f"{n} vector{'s' * (n != 1)} of width {widths}",
            f"  tokens   {tokens} (type this in a prompt to use it)"]
