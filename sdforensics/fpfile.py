"""Fingerprint files: arrays in safetensors, scheme and identity in its header.

A fingerprint file (``*.sdfp``) is a plain safetensors file whose arrays hold every tensor's
exact values or CountSketch (``values_*``), coordinate sample (``samples_*``) and two-sided
sketch (``structure_*``), concatenated by storage width, plus ``stats`` (float64, n x 8).
``__metadata__`` holds ``format``/``version``, the scheme, the identity and the per-tensor index
(name, shape, dtype, kind, digest, then width/offset/length/scale of each of the three spans),
as JSON strings. Widths:

* ``f16`` -- exact values and samples of tensors float16 holds exactly (fp16/fp8 sources);
* ``f32`` -- the same for other sources;
* ``i16`` -- sketches and structure (version 2): integers times a per-tensor scale, max |x| /
  32767. The rounding error is ~4e-5 of a tensor's typical sketch value, a seventh of what storing
  the weights in fp16 already adds, and halving the bytes made room for 2.3x the buckets.

Version 1 files (sketches in float32, spans without a scale) are still read. Files are read back
through the validating safetensors reader: fingerprints are shared between users, so they are
untrusted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from sdforensics.errors import FingerprintError, SdfError
from sdforensics.fingerprint import (
    FORMAT,
    READ_VERSIONS,
    VERSION,
    Fingerprint,
    Scheme,
    TensorPrint,
    scheme_from_json,
)
from sdforensics.readers.safetensors_reader import open_safetensors

_LOSSLESS_16 = ("F16", "F8_E4M3", "F8_E5M2")
"""Source dtypes whose values float16 holds exactly: their exact values and samples are stored
as float16, halving the file at no loss."""
_WIDTHS = {"f32": np.float32, "f16": np.float16, "i16": np.int16}
_I16_MAX = 32767


class _Packer:
    def __init__(self) -> None:
        self.parts: dict[str, list[np.ndarray]] = {w: [] for w in _WIDTHS}
        self.size = dict.fromkeys(_WIDTHS, 0)

    def add(self, arr: np.ndarray | None, width: str) -> list[Any]:
        """Append ``arr`` stored as ``width``; returns its index entry [width, offset, length, scale]."""
        if arr is None or arr.size == 0:
            return ["f32", 0, 0, 1.0]
        scale = 1.0
        if width == "i16":
            peak = float(np.max(np.abs(arr)))
            scale = peak / _I16_MAX if peak > 0 and np.isfinite(peak) else 1.0
            a = np.clip(np.rint(arr / scale), -_I16_MAX, _I16_MAX).astype(np.int16)
        else:
            a = arr.astype(_WIDTHS[width])
        off = self.size[width]
        self.parts[width].append(a)
        self.size[width] += a.size
        return [width, off, int(a.size), scale]

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{w}": np.concatenate(v) if v else np.zeros(0, _WIDTHS[w]) for w, v in self.parts.items()}


def save_fingerprint(fp: Fingerprint, path: Path) -> Path:
    """Write ``fp`` to ``path`` atomically."""
    values, samples, structure = _Packer(), _Packer(), _Packer()
    stats, index = [], []
    for t in fp.tensors.values():
        exact = "f16" if t.dtype in _LOSSLESS_16 else "f32"
        index.append(
            [t.name, list(t.shape), t.dtype, t.kind, t.digest]
            + values.add(t.values, exact if t.kind == "exact" else "i16")
            + samples.add(t.sample, exact)
            + structure.add(t.structure, "i16")
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
        if version not in READ_VERSIONS:
            raise FingerprintError(
                f"{where}: fingerprint format version {meta.get('version')!r}; this sdforensics reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}. Upgrade sdforensics or re-make the fingerprint with "
                "'sdf refs add'."
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
            (name, width): arrays[f"{name}_{width}"] if width == "i16" else arrays[f"{name}_{width}"].astype(np.float64)
            for name in ("values", "samples", "structure")
            for width in (("f32", "f16") if version == 1 else tuple(_WIDTHS))
        }
        stats = arrays["stats"].astype(np.float64)
    except KeyError as err:
        raise FingerprintError(
            f"{where}: the fingerprint lacks the {err} array (a damaged file or another format version); "
            "re-make it with 'sdf refs add'"
        ) from err
    if not isinstance(identity, dict) or not isinstance(index, list) or stats.shape != (len(index), 8):
        raise FingerprintError(f"{where}: the fingerprint index does not match its arrays")

    def span(array: str, width: Any, off: Any, n: Any, scale: Any = 1.0) -> np.ndarray | None:
        data = store.get((array, width))
        if data is None or type(off) is not int or type(n) is not int or off < 0 or n < 0:
            raise ValueError(f"bad {array} span")
        if off + n > len(data):
            raise ValueError(f"{array} span outside the array")
        if type(scale) not in (int, float) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"bad {array} scale")
        if not n:
            return None
        if width == "i16":
            return np.multiply(data[off : off + n], float(scale), dtype=np.float64)
        return data[off : off + n]

    fields = 14 if version == 1 else 17

    empty = np.zeros(0)
    prints: dict[str, TensorPrint] = {}
    for i, row in enumerate(index):  # 1,131 rows per SD1.5 reference: kept to plain Python calls
        try:
            if type(row) is not list or len(row) != fields:
                raise ValueError(f"{len(row) if type(row) is list else 'not a list of'} fields, not {fields}")
            if version == 1:  # no scales: everything was stored in floats
                row = row[:8] + [1.0] + row[8:11] + [1.0] + row[11:] + [1.0]
            name, shape, dtype, kind, digest, vw, v_off, v_len, v_sc, sw, s_off, s_len, s_sc, gw, g_off, g_len, g_sc = (
                row
            )
            if kind not in ("exact", "sketch"):
                raise ValueError(f"unknown kind {kind!r}")
            if type(shape) is not list or not all(type(d) is int for d in shape):
                raise ValueError("bad shape")
            vals = span("values", vw, v_off, v_len, v_sc)
            prints[str(name)] = TensorPrint(
                str(name),
                tuple(shape),
                str(dtype),
                kind,
                str(digest),
                stats[i],
                vals if vals is not None else empty,
                span("samples", sw, s_off, s_len, s_sc),
                span("structure", gw, g_off, g_len, g_sc),
            )
        except (TypeError, ValueError) as err:
            raise FingerprintError(f"{where}: fingerprint index row {i} is malformed ({err})") from err
    return Fingerprint(scheme, identity, prints)
