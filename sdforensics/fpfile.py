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
from sdforensics.fingerprint import FORMAT, VERSION, Fingerprint, Scheme, TensorPrint
from sdforensics.readers.safetensors_reader import open_safetensors


def save_fingerprint(fp: Fingerprint, path: Path) -> Path:
    """Write ``fp`` to ``path`` atomically."""
    values, samples, stats, index = [], [], [], []
    v_off = s_off = 0
    for t in fp.tensors.values():
        v = t.values.astype(np.float32)
        s = t.sample.astype(np.float32) if t.sample is not None else np.zeros(0, np.float32)
        index.append([t.name, list(t.shape), t.dtype, t.kind, t.digest, v_off, len(v), s_off, len(s)])
        values.append(v)
        samples.append(s)
        stats.append(t.stats)
        v_off += len(v)
        s_off += len(s)
    arrays = {
        "values": np.concatenate(values) if values else np.zeros(0, np.float32),
        "samples": np.concatenate(samples) if samples else np.zeros(0, np.float32),
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
        return Scheme(
            k1=int(raw["k1"]), k2=int(raw["k2"]), samples=int(raw["samples"]), exact_max=int(raw["exact_max"])
        )
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
        values = arrays["values"].astype(np.float64)
        samples = arrays["samples"].astype(np.float64)
        stats = arrays["stats"].astype(np.float64)
    except KeyError as err:
        raise FingerprintError(f"{where}: the fingerprint lacks the {err} array") from err
    if not isinstance(identity, dict) or not isinstance(index, list) or stats.shape != (len(index), 8):
        raise FingerprintError(f"{where}: the fingerprint index does not match its arrays")
    prints: dict[str, TensorPrint] = {}
    for i, row in enumerate(index):
        try:
            name, shape, dtype, kind, digest, v_off, v_len, s_off, s_len = row
            if v_off < 0 or s_off < 0 or v_off + v_len > len(values) or s_off + s_len > len(samples):
                raise ValueError("offsets outside the arrays")
            if kind not in ("exact", "sketch"):
                raise ValueError(f"unknown kind {kind!r}")
            prints[str(name)] = TensorPrint(
                name=str(name),
                shape=tuple(int(d) for d in shape),
                dtype=str(dtype),
                kind=kind,
                digest=str(digest),
                stats=stats[i],
                values=values[v_off : v_off + v_len],
                sample=samples[s_off : s_off + s_len] if kind == "sketch" else None,
            )
        except (TypeError, ValueError) as err:
            raise FingerprintError(f"{where}: fingerprint index row {i} is malformed ({err})") from err
    return Fingerprint(scheme, identity, prints)
