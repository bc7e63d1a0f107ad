"""Fingerprints of a LoRA's change, for library references (baking: :mod:`sdforensics.synth.lora_bake`).

* :func:`lora_fingerprint` -- the LoRA's change (strength 1) fingerprinted with the
  :class:`~sdforensics.fingerprinting.fingerprint.Fingerprinter` models are fingerprinted with. Fingerprints are
  linear, so ``fingerprint(baked) - fingerprint(base) == strength * lora_fingerprint`` (values,
  coordinate samples and structure sketches; up to float rounding), which is what lets the
  estimator fit a LoRA's strength as one more column.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from sdforensics.fingerprinting.fingerprint import Fingerprint, Fingerprinter, Scheme
from sdforensics.lora.files import LoraFile
from sdforensics.model.architecture import architecture, block_maps
from sdforensics.readers.base import TensorInfo

__all__ = ["block_of_family", "lora_fingerprint", "lora_identity"]


def check_shape(lora: LoraFile, key: str, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless ``shape`` is the shape ``lora`` targets at ``key`` (full-size models only)."""
    target = lora.targets()[key][0].target
    assert target is not None
    if tuple(shape) != target.shape:
        raise ValueError(
            f"{lora.path.name}: {key} is {tuple(target.shape)} in the LoRA's architecture but {tuple(shape)} in the "
            "model it is baked into; real LoRAs bake only into full-size (width=1) models of their family"
        )


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
        check_shape(lora, key, tuple(shape))
        delta = lora.delta_for(key)
        fp.consume(key, TensorInfo(key, tuple(shape), "F32", delta.numel() * 4), delta)
    return fp.result(lora_identity(lora))
