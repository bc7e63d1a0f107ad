"""Baking LoRAs into models, and fingerprints of a LoRA's change (for tests, benches, the library).

* :class:`Baked` -- a :mod:`sdforensics.synth.specs` spec: its parent with a LoRA merged in at some
  strength, one tensor at a time, the way SuperMerger's LoRA tab or kohya's ``merge_lora.py``
  bake one (``W + strength * alpha / rank * up @ down``);
* :func:`bake` -- the same for a spec or a state dict;
* :func:`lora_fingerprint` -- the LoRA's change (strength 1) fingerprinted with the
  :class:`~sdforensics.fingerprint.fingerprint.Fingerprinter` models are fingerprinted with. Fingerprints are
  linear, so ``fingerprint(baked) - fingerprint(base) == strength * lora_fingerprint`` (values,
  coordinate samples and structure sketches; up to float rounding), which is what lets the
  estimator fit a LoRA's strength as one more column.

The real LoRAs target full-size SD1.5 shapes: they bake into ``width=1`` synthetic models only.

>>> from sdforensics.lora.files import read_lora
>>> from sdforensics.synth.specs import Base, write_safetensors
>>> baked = Baked(Base("sd1"), read_lora(Path("lora.safetensors")), 0.8)   # doctest: +SKIP
>>> write_safetensors(baked, Path("baked.safetensors"))                    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from sdforensics.fingerprint.fingerprint import Fingerprint, Fingerprinter, Scheme
from sdforensics.lora.files import LoraFile
from sdforensics.model.architecture import architecture, block_maps
from sdforensics.readers.base import TensorInfo
from sdforensics.synth.specs import Derived, Spec

__all__ = ["Baked", "bake", "block_of_family", "lora_fingerprint", "lora_identity"]


def _check_shape(lora: LoraFile, key: str, shape: tuple[int, ...]) -> None:
    target = lora.targets()[key][0].target
    assert target is not None
    if tuple(shape) != target.shape:
        raise ValueError(
            f"{lora.path.name}: {key} is {tuple(target.shape)} in the LoRA's architecture but {tuple(shape)} in the "
            "model it is baked into; real LoRAs bake only into full-size (width=1) models of their family"
        )


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
        _check_shape(self.lora, key, tuple(base.shape))
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
        _check_shape(lora, key, tuple(base.shape))
        out[key] = (base.float() + lora.delta_for(key, strength)).to(base.dtype)
    return out


def block_of_family(family: str) -> Callable[[str], str | None]:
    """The merge-block function (SuperMerger ids) of ``family``'s architecture."""
    name = architecture(family).blocks
    bmap = block_maps().get(name) if name else None
    return bmap.block_of if bmap is not None else (lambda key: None)


def lora_identity(lora: LoraFile) -> dict[str, object]:
    """The identity a LoRA's fingerprint carries (what a library entry needs to name it)."""
    return {
        "kind": "lora",
        "name": lora.path.stem,
        "format": lora.format,
        "family": lora.family,
        "rank": lora.rank,
        "algorithms": list(lora.kinds),
        "layers": sorted(lora.targets()),
    }


def lora_fingerprint(
    lora: LoraFile,
    scheme: Scheme | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    block_of: Callable[[str], str | None] | None = None,
    device: str | torch.device = "cpu",
) -> Fingerprint:
    """Fingerprint of the LoRA's change at strength 1, made the way model fingerprints are.

    ``shapes`` must be the key/shape table the models were fingerprinted with (by default the
    full-size table of the LoRA's family), since it decides each tensor's sketch size;
    ``block_of`` likewise (default: the family's SuperMerger blocks). Only targeted keys get a
    print, in the order of ``shapes``.
    """
    if lora.family is None:
        raise ValueError(f"{lora.path.name}: no architecture fits this LoRA; nothing to fingerprint")
    if shapes is None:
        shapes = {k: s for k, (s, _) in architecture(lora.family).keys.items()}
    fp = Fingerprinter(scheme, device)
    fp.prepare(dict(shapes), block_of or block_of_family(lora.family))
    targets = lora.targets()
    for key, shape in shapes.items():
        if key not in targets:
            continue
        _check_shape(lora, key, tuple(shape))
        delta = lora.delta_for(key)
        fp.consume(key, TensorInfo(key, tuple(shape), "F32", delta.numel() * 4), delta)
    return fp.result(lora_identity(lora))
