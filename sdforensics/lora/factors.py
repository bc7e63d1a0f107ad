"""Shape checks on a LoRA layer's factors, before any arithmetic touches them.

The rank is ``down.shape[0]`` and the in-features ``down[0].numel()``: a 0-dim factor or a
rank-0 one (a dimension of 0) has neither, and would fail deep in the math with an
``IndexError``. Such a file is refused with the layer and the factor named.

>>> import torch
>>> check_factor("lora_unet_x", "down", torch.zeros(4, 8))
>>> check_factor("lora_unet_x", "down", torch.zeros(0, 8))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
sdforensics.core.errors.CorruptFileError: LoRA layer 'lora_unet_x': factor down has shape (0, 8); ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdforensics.core.errors import CorruptFileError
from sdforensics.core.safetext import printable

if TYPE_CHECKING:
    import torch

MATRIX_ROLES = frozenset({
    "up", "down", "mid", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff",
})
"""Roles whose first dimension and first row the reader uses (rank, out/in features)."""


def check_factor(layer: str, role: str, t: torch.Tensor) -> None:
    """Raise CorruptFileError when factor ``role`` of ``layer`` has no first dimension or an empty one."""
    if role not in MATRIX_ROLES:
        return
    if t.dim() == 0 or 0 in t.shape:
        raise CorruptFileError(f"LoRA layer {printable(layer, 120)!r}: factor {role} has shape {tuple(t.shape)}; a "
                               "factor needs at least 1 dimension and no dimension of 0 (rank 0 or an empty "
                               "factor)")
