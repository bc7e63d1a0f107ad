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
from pathlib import Path
from typing import Any

import numpy as np

from sdforensics.core.errors import FingerprintError, SdfError
from sdforensics.fingerprinting.fingerprint import (
    FORMAT,
    READ_VERSIONS,
    VERSION,
    Fingerprint,
    Scheme,
    TensorPrint,
    scheme_from_json,
)
from sdforensics.readers.safetensors_reader import SafetensorsCheckpoint, open_safetensors

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
    _write(arrays, meta, tmp)
    tmp.replace(path)
    return path


_DTYPE_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                np.dtype(np.int16): "I16"}  # fmt: skip


def _write(arrays: dict[str, np.ndarray], meta: dict[str, str], path: Path) -> None:
    """Write a safetensors file whose bytes depend only on ``arrays`` and ``meta``: the same
    fingerprint gives the same file in every process (``safetensors.save_file`` orders the metadata
    by a randomly seeded hash map, so two saves of one fingerprint differed). Arrays are laid out
    widest dtype first, then by name, so each starts aligned to its item size; the header is padded
    with spaces to a multiple of 8 bytes, as safetensors does."""
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict[str, Any] = {"__metadata__": meta}
    offset = 0
    for name in order:
        a = arrays[name]
        span = [offset, offset + a.nbytes]
        header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": span}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for name in order:
            fh.write(np.ascontiguousarray(arrays[name], arrays[name].dtype.newbyteorder("<")).tobytes())


def _scheme(raw: dict[str, Any], where: str) -> Scheme:
    try:
        return scheme_from_json(raw)
    except (KeyError, TypeError, ValueError) as err:
        raise FingerprintError(f"{where}: the fingerprint's scheme is malformed ({err})") from err


def load_fingerprint(path: Path, samples_only: bool = False) -> Fingerprint:
    """Read and validate a fingerprint file. Its arrays come back as float32 (which holds every
    stored width exactly), 16-bit integers multiplied by their scale. ``samples_only``: read only the
    coordinate samples (a tenth of an SD1.5 fingerprint's bytes); every tensor's values come back
    empty and its structure None. Such a fingerprint serves :func:`~sdforensics.library.vectors.resave_of`
    (is one model a re-save of another) and nothing that compares values."""
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
        infos = {info.name: info for info in ckpt.header.infos}
        widths = ("f32", "f16") if version == 1 else tuple(_WIDTHS)
        needed = [f"{name}_{width}" for name, _ in _SPANS for width in widths] + ["stats"]
        missing = [name for name in needed if name not in infos]
        if missing:
            raise FingerprintError(
                f"{where}: the fingerprint lacks the {missing[0]!r} array (a damaged file or another format "
                "version); re-make it with 'sdf refs add'"
            )
        if not isinstance(identity, dict) or not isinstance(index, list) or infos["stats"].shape != (len(index), 8):
            raise FingerprintError(f"{where}: the fingerprint index does not match its arrays")
        rows = _rows(index, version, where)
        cols = list(zip(*rows, strict=True)) if rows else [()] * 17
        spans = {}
        for array, at in _SPANS:
            try:
                spans[array] = _spans(array, cols[at : at + 4], {w: infos[f"{array}_{w}"].numel for w in widths})
            except (TypeError, ValueError, OverflowError) as err:
                raise FingerprintError(f"{where}: fingerprint index {err}") from err
        scaled = {
            f"{array}_i16": sorted((o, n, sc) for w, o, n, sc in zip(*spans[array], strict=True) if w == "i16" and n)
            for array in spans
        }
        for array, ints in scaled.items():  # one value cannot have two scales
            if any(nxt[0] < off + n for (off, n, _), nxt in zip(ints, ints[1:], strict=False)):
                raise FingerprintError(f"{where}: the fingerprint index has overlapping spans in {array}")
        wanted = ("samples",) if samples_only else tuple(array for array, _ in _SPANS)
        try:
            arrays = _read_arrays(ckpt, scaled, {"stats", *(f"{a}_{w}" for a in wanted for w in widths)})
        except ValueError as err:
            raise FingerprintError(f"{where}: the fingerprint is malformed ({err})") from err
    views = [
        [arrays[f"{array}_{w}"][o : o + n] if n else None for w, o, n, _ in zip(*spans[array], strict=True)]
        if array in wanted
        else [None] * len(rows)
        for array, _ in _SPANS
    ]
    stats = arrays["stats"].astype(np.float64, copy=False)
    prints: dict[str, TensorPrint] = {}
    for i, (name, shape, dtype, kind, digest) in enumerate(zip(*cols[:5], strict=True)):
        vals = views[0][i]
        prints[str(name)] = TensorPrint(
            str(name), tuple(shape), str(dtype), kind, str(digest), stats[i],
            vals if vals is not None else _EMPTY, views[1][i], views[2][i],
        )  # fmt: skip
    return Fingerprint(scheme, identity, prints)


_SPANS = (("values", 5), ("samples", 9), ("structure", 13))
"""Where each array's span (width, offset, length, scale) starts in an index row."""
_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I16": np.int16}
_EMPTY = np.zeros(0, np.float32)
_EMPTY.flags.writeable = False


def _rows(index: list[Any], version: int, where: str) -> list[list[Any]]:
    """The index rows, each checked for its field count, kind and shape (version 1 rows get the
    scales they lack: 1.0, everything was stored in floats)."""
    fields = 14 if version == 1 else 17
    for i, row in enumerate(index):
        problem = None
        if type(row) is not list or len(row) != fields:
            problem = f"{len(row) if type(row) is list else 'not a list of'} fields, not {fields}"
        elif row[3] not in ("exact", "sketch"):
            problem = f"unknown kind {row[3]!r}"
        elif type(row[1]) is not list or not all(type(d) is int for d in row[1]):
            problem = "bad shape"
        if problem:
            raise FingerprintError(f"{where}: fingerprint index row {i} is malformed ({problem})")
    if version == 1:
        return [row[:8] + [1.0] + row[8:11] + [1.0] + row[11:] + [1.0] for row in index]
    return index


def _integers(col: tuple[Any, ...]) -> np.ndarray:
    arr = np.array(col)
    if arr.shape != (len(col),) or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError("has a span that is not whole numbers")
    return arr.astype(np.int64)


def _spans(
    array: str, cols: list[tuple[Any, ...]], sizes: dict[str, int]
) -> tuple[tuple[Any, ...], list[int], list[int], list[float]]:
    """One array's (width, offset, length, scale) per index row, validated as columns (1,131 rows
    per SD1.5 reference, 50 references per analysis) against the array sizes."""
    widths, offs, lens, scales = cols
    off, n = _integers(offs), _integers(lens)
    scale = np.array(scales)
    if scale.shape != (len(scales),) or (scale.size and scale.dtype.kind not in "iuf"):
        raise ValueError(f"has a {array} scale that is not a number")
    scale = scale.astype(np.float64)
    size = np.array([sizes.get(w, -1) if type(w) is str else -1 for w in widths], np.int64)
    bad = (off < 0) | (n < 0) | (off > size) | (n > size) | (off + n > size) | ~np.isfinite(scale) | (scale <= 0)
    if bad.any():
        raise ValueError(f"row {int(np.flatnonzero(bad)[0])} is malformed (bad {array} span or scale)")
    return widths, off.tolist(), n.tolist(), scale.tolist()


def _read_arrays(
    ckpt: SafetensorsCheckpoint, scaled: dict[str, list[tuple[int, int, float]]], names: set[str]
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of a fingerprint file, converted straight off a memory map (no copy of the
    file): float32 for the value arrays, each 16-bit integer span times its scale (``scaled``: sorted,
    validated spans per array); float64 arrays (``stats``) as they are."""
    out: dict[str, np.ndarray] = {}
    with ckpt.mapped() as mapped:
        for info, offset in zip(ckpt.header.infos, ckpt.header.offsets, strict=True):
            if info.name not in names:
                continue
            kind = _NUMPY.get(info.dtype)
            if kind is None:
                raise ValueError(f"the array {info.name!r} is {info.dtype}")
            raw = np.frombuffer(mapped.view, kind, info.numel, offset)
            if kind == np.int16:
                out[info.name] = _scaled(raw, scaled.get(info.name, []))
            else:
                out[info.name] = raw.astype(np.float64 if kind == np.float64 else np.float32).reshape(info.shape)
            del raw  # the map closes only when no array uses it
    return out


def _scaled(raw: np.ndarray, spans: list[tuple[int, int, float]]) -> np.ndarray:
    """16-bit integers as float32, each (validated, disjoint) span times its scale; values no span
    covers are 0."""
    out = np.zeros(len(raw), np.float32)
    for off, n, scale in spans:
        np.multiply(raw[off : off + n], scale, out=out[off : off + n], dtype=np.float32)
    return out
