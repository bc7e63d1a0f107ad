"""What one pass over a checkpoint's tensors tells about its identity (pure math, no I/O).

:class:`IdentityCollector` sees each tensor once (canonical name, header info, values) and
keeps per-tensor content digests, dtype totals, NaN/Inf counts and the CLIP ``position_ids``
check. :meth:`IdentityCollector.result` turns that into component content hashes and problems.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sdforensics.core.safetext import printable
from sdforensics.model.architecture import architecture
from sdforensics.model.detect import ArchitectureReport
from sdforensics.model.hashing import combine_digests, tensor_digest
from sdforensics.model.problems import Problem, problem
from sdforensics.readers.base import TensorInfo

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorIssue:
    name: str
    nan: int
    inf: int


@dataclass(frozen=True)
class Identity:
    component_hashes: dict[str, str]
    """component (unet, text_encoder, vae) -> content hash over its float tensors' values."""
    dtypes: dict[str, int]
    """dtype code -> number of elements stored in it."""
    n_tensors: int
    n_params: int
    nonfinite: tuple[TensorIssue, ...]
    position_ids: str | None
    """None when fine or absent; else what is wrong with them."""


class IdentityCollector:
    """Consumes tensors one at a time; call :meth:`result` after the last."""

    def __init__(self, check_finite: bool = True) -> None:
        self.check_finite = check_finite
        """False when another consumer (the fingerprinter's statistics) counts NaN/Inf already."""
        self.digests: dict[str, bytes] = {}
        self.dtypes: Counter[str] = Counter()
        self.n_tensors = 0
        self.n_params = 0
        self.nonfinite: list[TensorIssue] = []
        self.position_ids: str | None = None

    def consume(self, name: str, info: TensorInfo, tensor: torch.Tensor) -> None:
        import torch

        self.n_tensors += 1
        numel = tensor.numel()
        self.n_params += numel
        self.dtypes[info.dtype] += numel
        if tensor.is_floating_point() and numel:
            self.digests[name] = tensor_digest(name, tensor)
        if tensor.is_floating_point() and numel and self.check_finite:
            wide = (torch.float16, torch.float32, torch.bfloat16, torch.float64)  # fp8 has no aminmax
            t = tensor if tensor.dtype in wide else tensor.float()
            # one fast reduction on the stored values: NaN propagates into the extremes, Inf is one
            lo, hi = torch.aminmax(t.reshape(-1))
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
                finite = torch.isfinite(t)
                nan = int(torch.isnan(t).sum())
                self.nonfinite.append(TensorIssue(name, nan, int((~finite).sum()) - nan))
        if name.endswith("embeddings.position_ids"):
            values = tensor.detach().cpu().reshape(-1).to(torch.float64).numpy()
            stored = str(tensor.dtype).removeprefix("torch.") if tensor.is_floating_point() else "integers"
            self.position_ids = check_position_ids(values, stored)

    def result(self, arch: ArchitectureReport, nonfinite: list[TensorIssue] | None = None) -> Identity:
        """``nonfinite``: NaN/Inf counts found by another consumer when ``check_finite`` is off."""
        return build_identity(
            arch, self.digests, self.dtypes, self.n_tensors, self.n_params,
            self.nonfinite + (nonfinite or []), self.position_ids,
        )


def build_identity(
    arch: ArchitectureReport,
    digests: Mapping[str, bytes],
    dtypes: Mapping[str, int],
    n_tensors: int,
    n_params: int,
    nonfinite: list[TensorIssue],
    position_ids: str | None,
) -> Identity:
    """The :class:`Identity` of collected per-tensor facts: digests grouped into component hashes."""
    comps: dict[str, dict[str, bytes]] = {}
    if arch.name is not None:
        spec = architecture(arch.name)
        for name, digest in digests.items():
            comp = spec.hashed_component_of(name)
            if comp is not None:
                comps.setdefault(comp, {})[name] = digest
    return Identity(
        component_hashes={c: combine_digests(d) for c, d in sorted(comps.items())},
        dtypes=dict(dtypes),
        n_tensors=n_tensors,
        n_params=n_params,
        nonfinite=tuple(nonfinite),
        position_ids=position_ids,
    )


def check_position_ids(values: np.ndarray, stored: str) -> str | None:
    """What is wrong with CLIP ``position_ids`` (their values as float64; ``stored``: ``integers``
    or the float dtype they were stored in), or None when they are exactly 0..n-1 integers."""
    n = values.size
    expected = np.arange(n, dtype=np.float64)
    if stored != "integers":
        off = np.abs(values - expected)
        bad = int((off > 0).sum())
        worst = int(off.argmax()) if n else 0
        if bad == 0:
            return f"stored as {stored}, not integers (values are exact; harmless but unusual)"
        return (
            f"stored as {stored} and {bad} of {n} are not exact positions (e.g. index {worst} holds "
            f"{values[worst]:.6g}): a classic merge artefact that shifts tokens; fix it with a "
            "position_ids repair (e.g. A1111 model toolkit or sd-mecha)"
        )
    bad_idx = np.nonzero(values != expected)[0]
    if len(bad_idx):
        i = int(bad_idx[0])
        return f"{len(bad_idx)} of {n} integer positions are wrong (index {i} holds {int(values[i])})"
    return None


def identity_problems(
    arch: ArchitectureReport, ident: Identity, n_junk: int, junk_examples: list[str]
) -> list[Problem]:
    """Problems a user should know, from the architecture report and the collected identity."""
    out: list[Problem] = []
    if arch.family is None:
        out.append(problem("unknown_architecture", "warning", f"not a known architecture: {arch.label}"))
    for comp in arch.missing_components:
        out.append(problem("missing_component", "warning", f"no {comp} weights in this file"))
    if arch.n_missing and arch.family is not None:
        out.append(
            problem(
                "missing_keys",
                "warning",
                f"{arch.n_missing} expected keys are missing, e.g. {printable(arch.missing_keys[0], 120)}",
            )
        )
    if n_junk:
        examples = ", ".join(printable(k, 80) for k in junk_examples[:3])
        out.append(
            problem("junk_keys", "info", f"{n_junk} keys belong to no known component, e.g. {examples}")
        )
    if arch.ema:
        out.append(
            problem(
                "ema_present",
                "info",
                "EMA weights are stored too (model_ema.*): the model's own weights (model.diffusion_model.*) are "
                "the ones fingerprinted and compared, the EMA set is left out; the file is larger than needed for "
                "inference, a pruned copy keeps one set",
            )
        )
    floats = {k: v for k, v in ident.dtypes.items() if k.startswith(("F", "BF"))}
    total = sum(floats.values())
    if total and floats.get("F32", 0) / total > 0.5:
        out.append(
            problem(
                "fp32_weights",
                "info",
                "weights are stored in fp32; fp16 halves the size with no visible change for inference",
            )
        )
    for issue in ident.nonfinite[:5]:
        out.append(
            problem(
                "nonfinite",
                "error",
                f"tensor {printable(issue.name, 120)} has {issue.nan} NaN and "
                f"{issue.inf} Inf values: the model will produce black or noisy images",
            )
        )
    if len(ident.nonfinite) > 5:
        out.append(
            problem("nonfinite", "error", f"... and {len(ident.nonfinite) - 5} more tensors with NaN/Inf")
        )
    if ident.position_ids is not None:
        sev = "info" if "harmless" in ident.position_ids else "warning"
        out.append(problem("position_ids", sev, f"CLIP position_ids {ident.position_ids}"))
    if arch.width_factor != 1:
        out.append(
            problem(
                "reduced_width",
                "info",
                f"tensor widths are 1/{arch.width_factor} of the release "
                "architecture (a synthetic or test model)",
            )
        )
    return out
