"""Baking LoRAs into synthetic models (test and benchmark data; production code never imports it).

* :class:`Baked` -- a :mod:`sdforensics.synth.specs` spec: its parent with a LoRA merged in at some
  strength, one tensor at a time, the way SuperMerger's LoRA tab or kohya's ``merge_lora.py``
  bake one (``W + strength * alpha / rank * up @ down``);
* :func:`bake` -- the same for a spec or a state dict.

The real LoRAs target full-size SD1.5 shapes: they bake into ``width=1`` synthetic models only.

>>> from sdforensics.lora.files import read_lora
>>> from sdforensics.synth.specs import Base, write_safetensors
>>> baked = Baked(Base("sd1"), read_lora(Path("lora.safetensors")), 0.8)   # doctest: +SKIP
>>> write_safetensors(baked, Path("baked.safetensors"))                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sdforensics.lora.files import LoraFile
from sdforensics.lora.fingerprint import check_shape
from sdforensics.synth.specs import Derived, Spec

__all__ = ["Baked", "bake"]


@dataclass(frozen=True, eq=False)
class Baked(Derived):
    """``parent`` with ``lora`` merged in at ``strength``: ``tensor(key) = parent + strength * delta``."""

    parent: Spec
    lora: LoraFile
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.lora.family is not None and self.lora.family != self.parent.family:
            raise ValueError(f"{self.lora.path.name}: a {self.lora.family} LoRA cannot be baked into a "
                             f"{self.parent.family} model")

    def tensor(self, key: str) -> torch.Tensor:
        base = self.parent.tensor(key)
        if key not in self.lora.targets() or not base.is_floating_point():
            return base
        check_shape(self.lora, key, tuple(base.shape))
        return base + self.lora.delta_for(key, self.strength).to(base.dtype)


def bake(
    model: Spec | Mapping[str, torch.Tensor], lora: LoraFile, strength: float = 1.0
) -> Spec | dict[str, torch.Tensor]:
    """``model`` with ``lora`` baked in: a :class:`Baked` spec, or a new state dict.

    State-dict tensors keep their dtype (the change is computed in float32 and added in it, then
    cast back, as kohya's merge script does). Targeted keys missing from the state dict are an error.
    """
    if isinstance(model, Spec):
        return Baked(model, lora, strength)
    out = dict(model)
    for key in lora.targets():
        if key not in out:
            raise KeyError(f"{lora.path.name}: targets {key}, which the state dict does not have")
        base = out[key]
        check_shape(lora, key, tuple(base.shape))
        out[key] = (base.float() + lora.delta_for(key, strength)).to(base.dtype)
    return out
