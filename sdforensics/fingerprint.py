"""Per-tensor fingerprints that keep merges linear (the core idea in DESIGN.md).

For each tensor a fingerprint keeps:

* ``digest`` -- content hash of its values cast to fp16 (see :mod:`sdforensics.hashing`);
* ``stats`` -- numel, mean, std, L2 norm, max |x|, zero fraction, NaN and Inf counts;
* ``values`` -- for small tensors (biases, norms, <= ``EXACT_MAX`` values) the values themselves;
  for 2-D and conv weights the two-sided sign sketch ``G^T W R / sqrt(k1 k2)`` (k1 x k2);
* ``sample`` -- for sketched tensors, the exact values at ``samples`` hash-chosen positions,
  the same positions for every model with that shape (what TIES/DARE detection needs).

Both ``values`` and ``sample`` are linear in the weights, so for a merge T = sum w_i M_i the
fingerprint of T is the same combination of the fingerprints of the M_i (up to rounding).
Computation runs on any torch device; projections are built on the CPU from SHAKE-256 signs
(:mod:`sdforensics.sketch`), so CPU and GPU fingerprints agree to float tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from sdforensics.readers.base import TensorInfo
from sdforensics.sketch import matrix_view, sample_positions, signs

FORMAT = "sdforensics.fingerprint"
VERSION = 1
EXACT_MAX = 16384
"""Tensors with at most this many values are stored exactly."""
STAT_FIELDS = ("numel", "mean", "std", "l2", "maxabs", "zero_frac", "nan", "inf")


@dataclass(frozen=True)
class Scheme:
    """How a fingerprint was made; two fingerprints compare only if their schemes are equal."""

    k1: int = 32
    k2: int = 32
    samples: int = 1024
    exact_max: int = EXACT_MAX

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "k1": self.k1,
            "k2": self.k2,
            "samples": self.samples,
            "exact_max": self.exact_max,
            "signs": "shake256",
        }


@dataclass(frozen=True)
class TensorPrint:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    """``exact`` (values stored) or ``sketch`` (k1 x k2 sketch + coordinate sample)."""
    digest: str
    stats: np.ndarray
    values: np.ndarray
    """float64: exact values (flattened) or the flattened k1 x k2 sketch."""
    sample: np.ndarray | None = None

    @property
    def sketch_shape(self) -> tuple[int, int] | None:
        if self.kind != "sketch":
            return None
        k = int(round(len(self.values) ** 0.5))
        return (k, len(self.values) // k) if k else None

    @property
    def numel(self) -> int:
        return int(self.stats[0])


@dataclass(frozen=True)
class Fingerprint:
    """A model's fingerprint: scheme, identity (hashes, family ...) and per-tensor prints."""

    scheme: Scheme
    identity: dict[str, Any]
    tensors: dict[str, TensorPrint] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.identity.get("name", ""))

    @property
    def family(self) -> str | None:
        fam = self.identity.get("family")
        return str(fam) if fam else None

    def nbytes(self) -> int:
        return sum(
            t.values.nbytes + (t.sample.nbytes if t.sample is not None else 0) for t in self.tensors.values()
        )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``/``cuda``/``cuda:N`` as given."""
    from sdforensics.errors import SdfError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SdfError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(device)


class Fingerprinter:
    """A consumer for :func:`sdforensics.passes.stream`: fingerprints each tensor it is given."""

    def __init__(self, scheme: Scheme | None = None, device: str | torch.device = "cpu") -> None:
        self.scheme = scheme or Scheme()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.prints: dict[str, TensorPrint] = {}
        self._signs: dict[tuple[int, int, str], torch.Tensor] = {}

    def _proj(self, n: int, k: int, side: str) -> torch.Tensor:
        key = (n, k, side)
        if key not in self._signs:
            self._signs[key] = torch.from_numpy(signs(n, k, side)).to(self.device)
        return self._signs[key]

    def consume(self, name: str, info: TensorInfo, tensor: torch.Tensor, digest: str = "") -> None:
        self.prints[name] = fingerprint_tensor(
            name, info, tensor, self.scheme, self._proj, self.device, digest
        )

    def result(self, identity: dict[str, Any], digests: dict[str, bytes] | None = None) -> Fingerprint:
        """The fingerprint, with content digests (from the identity pass) filled in."""
        prints = dict(self.prints)
        for name, digest in (digests or {}).items():
            if name in prints:
                prints[name] = replace(prints[name], digest=digest.hex())
        return Fingerprint(self.scheme, dict(identity), prints)


def _stats(x: torch.Tensor) -> tuple[np.ndarray, bool]:
    n = x.numel()
    if n == 0:
        return np.array([0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float64), True
    total = float(x.sum(dtype=torch.float64))
    l2 = float(torch.linalg.vector_norm(x, dtype=torch.float64))
    finite = np.isfinite(total) and np.isfinite(l2)
    nan = inf = 0
    if not finite:
        nan = int(torch.isnan(x).sum())
        inf = int(torch.isinf(x).sum())
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        total = float(x.sum(dtype=torch.float64))
        l2 = float(torch.linalg.vector_norm(x, dtype=torch.float64))
    lo, hi = torch.aminmax(x)
    maxabs = max(abs(float(lo)), abs(float(hi)))
    mean = total / n
    var = max(l2 * l2 / n - mean * mean, 0.0)
    zero_frac = float((x == 0).sum()) / n if n <= EXACT_MAX else -1.0
    return np.array([n, mean, var**0.5, l2, maxabs, zero_frac, nan, inf], dtype=np.float64), finite


def fingerprint_tensor(
    name: str,
    info: TensorInfo,
    tensor: torch.Tensor,
    scheme: Scheme,
    proj: Any,
    device: torch.device,
    digest: str = "",
) -> TensorPrint:
    """The print of one tensor (pure computation; ``proj(n, k, side)`` gives sign matrices)."""
    if tensor.numel() <= scheme.exact_max:
        return _exact_print(name, info, tensor, digest)
    x = (
        tensor.to(device=device, dtype=torch.float32)
        if tensor.is_floating_point()
        else tensor.to(device).double()
    )
    stats, finite = _stats(x.float() if not x.is_floating_point() else x)
    if not finite:
        x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    numel = x.numel()
    if numel <= scheme.exact_max or x.dim() < 2:
        if numel > scheme.exact_max:  # a long 1-D tensor: a one-sided sign sketch
            r = proj(numel, scheme.k1 * scheme.k2, "vector")
            vals = (x.reshape(1, -1).float() @ r).reshape(-1) / (scheme.k1 * scheme.k2) ** 0.5
            return TensorPrint(
                name,
                info.shape,
                info.dtype,
                "sketch",
                digest,
                stats,
                vals.double().cpu().numpy(),
                _sample(x, info.shape, scheme),
            )
        return TensorPrint(
            name, info.shape, info.dtype, "exact", digest, stats, x.reshape(-1).double().cpu().numpy()
        )
    rows, cols = matrix_view(tuple(x.shape))
    w = x.reshape(rows, cols).float()
    g = proj(rows, scheme.k1, "rows")
    r = proj(cols, scheme.k2, "cols")
    sk = (g.T @ (w @ r)) / (scheme.k1 * scheme.k2) ** 0.5
    return TensorPrint(
        name,
        info.shape,
        info.dtype,
        "sketch",
        digest,
        stats,
        sk.reshape(-1).double().cpu().numpy(),
        _sample(x, info.shape, scheme),
    )


def _exact_print(name: str, info: TensorInfo, tensor: torch.Tensor, digest: str) -> TensorPrint:
    """Small tensors: values kept as they are; stats in numpy (cheaper than torch dispatch here)."""
    v = tensor.detach().cpu().reshape(-1).to(torch.float64).numpy()
    n = v.size
    nan = int(np.isnan(v).sum())
    inf = int(np.isinf(v).sum())
    if nan or inf:
        v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    if n:
        l2 = float(np.sqrt(v @ v))
        mean = float(v.mean())
        stats = [n, mean, float(v.std()), l2, float(np.abs(v).max()), float((v == 0).mean()), nan, inf]
    else:
        stats = [0, 0, 0, 0, 0, 0, 0, 0]
    return TensorPrint(name, info.shape, info.dtype, "exact", digest, np.array(stats, dtype=np.float64), v)


def _sample(x: torch.Tensor, shape: tuple[int, ...], scheme: Scheme) -> np.ndarray:
    pos = torch.from_numpy(sample_positions(tuple(shape), scheme.samples)).to(x.device)
    return x.reshape(-1)[pos].double().cpu().numpy()
