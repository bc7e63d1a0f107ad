"""Fingerprint files: arrays in safetensors, scheme and identity in its header.

A fingerprint file (``*.sdfp``) is a plain safetensors file with three arrays -- ``values``
(float32, every tensor's exact values or sketch, concatenated), ``samples`` (float32) and
``stats`` (float64, n x 8) -- and ``__metadata__`` holding ``format``/``version``, the scheme,
the identity and the per-tensor index, as JSON strings. Files are read back through the
validating safetensors reader: fingerprints are shared between users, so they are untrusted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from sdforensics.errors import FingerprintError, SdfError
from sdforensics.fingerprint import FORMAT, VERSION, Fingerprint, Scheme, TensorPrint, scheme_from_json
from sdforensics.readers.safetensors_reader import open_safetensors

_LOSSLESS_16 = ("F16", "F8_E4M3", "F8_E5M2")
"""Source dtypes whose values float16 holds exactly: their exact values and samples are stored
as float16, halving the file at no loss."""


class _Packer:
    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {"f32": [], "f16": []}
        self.size = {"f32": 0, "f16": 0}

    def add(self, arr: np.ndarray | None, half: bool) -> list[Any]:
        if arr is None or arr.size == 0:
            return ["f32", 0, 0]
        kind = "f16" if half else "f32"
        a = arr.astype(np.float16 if half else np.float32)
        off = self.size[kind]
        self.parts[kind].append(a)
        self.size[kind] += a.size
        return [kind, off, int(a.size)]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}_{k}": np.concatenate(v) if v else np.zeros(0, np.float16 if k == "f16" else np.float32)
            for k, v in self.parts.items()
        }


def save_fingerprint(fp: Fingerprint, path: Path) -> Path:
    """Write ``fp`` to ``path`` atomically."""
    values, samples, structure = _Packer(), _Packer(), _Packer()
    stats, index = [], []
    for t in fp.tensors.values():
        exact16 = t.dtype in _LOSSLESS_16
        index.append(
            [t.name, list(t.shape), t.dtype, t.kind, t.digest]
            + values.add(t.values, half=exact16 and t.kind == "exact")
            + samples.add(t.sample, half=exact16)
            + structure.add(t.structure, half=False)  # fp32: LoRA residuals sit near fp16's rounding
        )
        stats.append(t.stats)
    arrays = {
        **values.arrays("values"),
        **samples.arrays("samples"),
        **structure.arrays("structure"),
        "stats": np.stack(stats) if stats else np.zeros((0, 8)),
    }
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "scheme": json.dumps(fp.scheme.to_json()),
        "identity": json.dumps(fp.identity, sort_keys=True),
        "index": json.dumps(index, separators=(",", ":")),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    safetensors.numpy.save_file(arrays, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def _scheme(raw: dict[str, Any], where: str) -> Scheme:
    try:
        return scheme_from_json(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise FingerprintError(f"{where}: the fingerprint's scheme is malformed ({err})") from err


def load_fingerprint(path: Path) -> Fingerprint:
    """Read and validate a fingerprint file."""
    where = str(path)
    try:
        ckpt = open_safetensors(Path(path))
    except SdfError as err:
        raise FingerprintError(f"{err} (reading it as a fingerprint)") from err
    with ckpt:
        meta = ckpt.format().metadata
        if meta.get("format") != FORMAT:
            raise FingerprintError(f"{where}: not an sdforensics fingerprint (format {meta.get('format')!r})")
        try:
            version = int(meta.get("version", "0"))
        except ValueError:
            version = -1
        if version != VERSION:
            raise FingerprintError(
                f"{where}: fingerprint format version {meta.get('version')!r}; this sdforensics reads version "
                f"{VERSION}. Upgrade sdforensics or re-make the fingerprint with 'sdf refs add'."
            )
        try:
            scheme = _scheme(json.loads(meta["scheme"]), where)
            identity = json.loads(meta["identity"])
            index = json.loads(meta["index"])
        except (KeyError, ValueError) as err:
            raise FingerprintError(f"{where}: the fingerprint header is malformed ({err})") from err
        arrays = {info.name: t.numpy() for info, t in ckpt.tensors()}
    try:
        store = {
            (name, width): arrays[f"{name}_{width}"].astype(np.float64)
            for name in ("values", "samples", "structure")
            for width in ("f32", "f16")
        }
        stats = arrays["stats"].astype(np.float64)
    except KeyError as err:
        raise FingerprintError(
            f"{where}: the fingerprint lacks the {err} array (a damaged file or another format version); "
            "re-make it with 'sdf refs add'"
        ) from err
    if not isinstance(identity, dict) or not isinstance(index, list) or stats.shape != (len(index), 8):
        raise FingerprintError(f"{where}: the fingerprint index does not match its arrays")

    def span(array: str, width: Any, off: Any, n: Any) -> np.ndarray | None:
        data = store.get((array, width))
        if data is None or type(off) is not int or type(n) is not int or off < 0 or n < 0:
            raise ValueError(f"bad {array} span")
        if off + n > len(data):
            raise ValueError(f"{array} span outside the array")
        return data[off : off + n] if n else None

    empty = np.zeros(0)
    prints: dict[str, TensorPrint] = {}
    for i, row in enumerate(index):  # 1,131 rows per SD1.5 reference: kept to plain Python calls
        try:
            name, shape, dtype, kind, digest, vw, v_off, v_len, sw, s_off, s_len, gw, g_off, g_len = row
            if kind not in ("exact", "sketch"):
                raise ValueError(f"unknown kind {kind!r}")
            if type(shape) is not list or not all(type(d) is int for d in shape):
                raise ValueError("bad shape")
            vals = span("values", vw, v_off, v_len)
            prints[str(name)] = TensorPrint(
                str(name),
                tuple(shape),
                str(dtype),
                kind,
                str(digest),
                stats[i],
                vals if vals is not None else empty,
                span("samples", sw, s_off, s_len),
                span("structure", gw, g_off, g_len),
            )
        except (TypeError, ValueError) as err:
            raise FingerprintError(f"{where}: fingerprint index row {i} is malformed ({err})") from err
    return Fingerprint(scheme, identity, prints)
