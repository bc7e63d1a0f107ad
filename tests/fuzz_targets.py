"""Fuzz targets for the checkpoint readers: seed corpora, mutators and the contract they check.

Shared by ``tests/readers/test_fuzz.py`` (a short hypothesis run in CI) and ``bench/fuzz.py`` (the long
run). Every input is a *mutated copy of a valid seed*, built by one of five targets:

==============  ==========================================================================
``safetensors``  byte flips/truncation/splices, header JSON tree edits, header length lies,
                 consistent re-encodes with odd dtypes, shapes and names
``pickle``       torch zip, legacy and hostile pickles: opcode-aware edits of ``data.pkl``
                 (zip rebuilt with correct CRCs so the edit reaches the unpickler), raw bytes
``zip``          torch zips: member list edits (rename, duplicate, drop, deflate, flags, CRC,
                 local-name lies, declared sizes, ZIP64 end records, prepend/append, cut
                 directory) and raw central-directory / local-header / EOCD field edits
``diffusers``    small diffusers folders: ``model_index.json``/``config.json`` edits, weight
                 mutations, missing parts, symlinks out of the folder, loops, ``.py`` files
``sharded``      ``*.safetensors.index.json`` checkpoints: ``weight_map`` edits, shard edits
==============  ==========================================================================

The contract (:func:`exercise`): ``open_checkpoint`` then ``format()``, ``infos()`` and every
tensor of ``tensors()`` (bounded), plus the static scanner on the same input, raise nothing but
:class:`~sdforensics.core.errors.SdfError`; every yielded tensor matches its ``TensorInfo``; no tensor
is inflated far beyond the input's size; a planted payload never runs. Anything else is a bug,
reported with the target and the integer seed that rebuilds the input
(``python bench/fuzz.py --replay TARGET:SEED``).

Mutators take a :class:`random.Random`; the CI test passes hypothesis' ``st.randoms()`` (so
failures shrink), the long run passes ``random.Random(f"{target}:{seed}")``.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import pickletools
import random
import shutil
import signal
import struct
import tempfile
import time
import traceback
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from hostile_pickles import (
    CASES,
    GOOD_STORAGES,
    REAL_FILES,
    Entry,
    emit,
    good_state_pickle,
    make_zip,
    sd1_checkpoint,
    torch_zip,
)

from sdforensics.core.dtypes import DTYPES, FP8_CODES
from sdforensics.core.errors import SdfError

MAX_TENSORS = 20_000
"""Tensors iterated per input at most (the bound of the contract's ``tensors()`` pass)."""
AMPLIFY_BYTES = 64 << 20
"""A tensor larger than this and than ``AMPLIFY_RATIO`` x the input is a memory-bomb bug."""
AMPLIFY_RATIO = 64
MAX_INPUT = 4 << 20

# ------------------------------------------------------------------------------------ outcome


class FuzzBug(Exception):
    """A contract violation the harness detects itself (payload ran, tensor mismatch, bomb)."""


class InputTimeout(BaseException):  # noqa: N818 - BaseException so readers' `except Exception` can't eat it
    """Raised by the per-input alarm."""


@dataclass(frozen=True)
class Outcome:
    """What one input did: ``accepted`` (opened and read), ``rejected`` (SdfError), ``bug``, or
    ``harness`` (building the input failed: a fuzzer bug)."""

    target: str
    seed: int
    status: str
    error: str = ""
    where: str = ""
    """For bugs: the innermost ``sdforensics`` frame (file:line function)."""
    seconds: float = 0.0

    @property
    def signature(self) -> str:
        return f"{self.target} {self.error.split(':', 1)[0]} @ {self.where}"


def _where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "sdforensics" in f.filename] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{Path(f.filename).name}:{f.lineno} {f.name}"


# ------------------------------------------------------------------------------- byte mutators

INTERESTING = (0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFF, 0x100000000, 2**62, 2**63 - 1, 2**63, 2**64 - 1)


def _pick_int(rng: random.Random, width: int) -> int:
    if rng.random() < 0.6:
        return rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
    return rng.randrange(1 << (8 * width))


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def mutate_bytes(rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
    """1-4 of: bit flip, random byte, interesting int (1/2/4/8 bytes LE), truncate, delete,
    duplicate a range, insert random bytes, append junk."""
    buf = bytearray(data)
    for _ in range(rounds or rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if n == 0:
            buf += _rand_bytes(rng, rng.randint(1, 16))
            continue
        pos = rng.randrange(n)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            width = rng.choice((1, 2, 4, 8))
            buf[pos:pos + width] = _pick_int(rng, width).to_bytes(width, "little")
        elif op == 3:
            del buf[rng.randrange(n + 1):]
        elif op == 4:
            del buf[pos:pos + rng.randint(1, 64)]
        elif op == 5:
            start = rng.randrange(n)
            buf[pos:pos] = buf[start:start + rng.randint(1, 256)]
        elif op == 6:
            buf[pos:pos] = _rand_bytes(rng, rng.randint(1, 16))
        elif op == 7:
            buf += rng.choice((b"PK\x05\x06" + b"\0" * 18, b"%PDF-1.4\n", _rand_bytes(rng, 32), b"\0" * 100))
        else:
            buf[pos:pos + 1] = bytes([rng.choice(b"\x00\x80\xff{}[]\"\\,:.(tR")])
        if len(buf) > MAX_INPUT:
            del buf[MAX_INPUT:]
    return bytes(buf)


# --------------------------------------------------------------------------- JSON tree mutators

JSON_VALUES: tuple[Any, ...] = (
    -1, 0, 1, 3, 2**31, 2**53 + 1, 2**63, 2**64, 2**70, 1.5, -0.0, 1e308, True, False, None, "", "F32",
    "f16", "F8_E4M3", "BOOL", [], {}, [0], [0, 0], [2**64, 0], [-1, 8], [[1]], [1.5], ["2"], "x" * 300,
    {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
)


def _nodes(doc: Any, path: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    out = [path]
    if depth > 6:
        return out
    if isinstance(doc, dict):
        for k, v in list(doc.items())[:200]:
            out += _nodes(v, (*path, k), depth + 1)
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            out += _nodes(v, (*path, i), depth + 1)
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


WEIRD_NAMES = ("", "__metadata__", "../../etc/passwd", "a\x1b[31mb\x07", "x" * 5000, "\u202e", "a\x00b",
               "model.diffusion_model.input_blocks.0.0.weight", "state_dict", "\ud800")


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """Replace, delete, rename or duplicate a random node of a parsed JSON document."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        paths = _nodes(doc)
        path = rng.choice(paths)
        op = rng.randrange(5)
        if not path:
            if op == 0:
                doc = copy.deepcopy(rng.choice(JSON_VALUES))
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op <= 1:
            parent[key] = copy.deepcopy(rng.choice(JSON_VALUES))  # never share (and later mutate) a constant
        elif op == 2:
            del parent[key]
        elif op == 3 and isinstance(parent, dict):
            new = rng.choice(WEIRD_NAMES) if rng.random() < 0.5 else key + rng.choice(("_", ".x", "0"))
            parent[new] = parent.pop(key)
        elif op == 4 and isinstance(parent, list):
            parent.insert(key, parent[key])
        elif isinstance(parent, dict):
            other = rng.choice(paths)
            if other and not _is_prefix(path, other):
                parent[key] = json.loads(json.dumps(_get(doc, other)))
    return doc


def _is_prefix(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return b[: len(a)] == a or a[: len(b)] == b


def json_text(rng: random.Random, doc: Any) -> bytes:
    """Serialise, sometimes with textual tricks JSON trees cannot express."""
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    op = rng.randrange(12)
    if op == 0 and text.startswith("{") and len(text) > 2:  # duplicate the first key
        first = text[1:].split(",", 1)[0]
        text = "{" + first + "," + text[1:]
    elif op == 1:
        text = text.replace("0", "NaN", 1)
    elif op == 2:
        depth = rng.choice((40, 1000, 100_000))
        text = text[:-1] + (", " if len(text) > 2 else "") + '"deep": ' + "[" * depth + "]" * depth + "}"
    elif op == 3:
        text = "\ufeff" + text
    elif op == 4:
        text = text + rng.choice(("  ", "\0\0", "xx", "}"))
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------- safetensors


def st_bytes(tensors: list[tuple[str, str, tuple[int, ...], bytes]], metadata: dict[str, Any] | None = None,
             tail: bytes = b"") -> bytes:
    """A safetensors file from (name, dtype, shape, raw bytes), offsets computed."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata is not None else {}
    data, pos = bytearray(), 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(raw)]}
        data += raw
        pos += len(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + bytes(data) + tail


def st_split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(header dict, data section) of a well-formed file, or None."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    try:
        doc = json.loads(data[8:8 + n])
    except (ValueError, RecursionError):
        return None
    return (doc, data[8 + n:]) if isinstance(doc, dict) else None


def _st_tensors(doc: dict[str, Any], body: bytes) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    out = []
    for name, e in doc.items():
        if name != "__metadata__":
            b, end = e["data_offsets"]
            out.append((name, e["dtype"], tuple(e["shape"]), body[b:end]))
    return sorted(out, key=lambda t: doc[t[0]]["data_offsets"][0])


def _raw(rng: random.Random, n: int, kind: str) -> bytes:
    if n > 4096:  # values only matter in the first bytes; keep big tensors cheap to build
        return _raw(rng, 4096, kind) + bytes(n - 4096)
    specials = {"F32": struct.pack("<5f", float("nan"), float("inf"), -float("inf"), 1e-45, 0.0),
                "F16": struct.pack("<5e", float("nan"), float("inf"), -float("inf"), 6e-8, 0.0)}
    pool = specials.get(kind, b"\x00\x7f\x80\xff\x01")
    return bytes(rng.choice(pool) if rng.random() < 0.5 else rng.randrange(256) for _ in range(n))


def st_reencode(rng: random.Random, data: bytes) -> bytes:
    """A *consistent* file with one tensor changed (dtype, shape, name, values) or added/removed."""
    parts = st_split(data)
    if parts is None:
        return mutate_bytes(rng, data)
    doc, body = parts
    meta = doc.get("__metadata__")
    try:
        tensors = _st_tensors(doc, body)
        ok = all(c in DTYPES and all(type(d) is int and d >= 0 for d in s) for _, c, s, _ in tensors)
    except (KeyError, TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        return mutate_bytes(rng, data)
    op = rng.randrange(6)
    i = rng.randrange(len(tensors)) if tensors else 0
    if op == 0 or not tensors:
        code = rng.choice(list(DTYPES))
        shape = tuple(rng.choice((0, 1, 2, 3, 5)) for _ in range(rng.randint(0, 4)))
        n = DTYPES[code].itemsize
        for d in shape:
            n *= d
        tensors.insert(i, (rng.choice(("new", *WEIRD_NAMES[:6])), code, shape, _raw(rng, n, code)))
    elif op == 1:
        del tensors[i]
    else:
        name, code, shape, raw = tensors[i]
        if op == 2:
            code = rng.choice(list(DTYPES))
        elif op == 3:
            shape = tuple(rng.choice((0, 1, 2, 4, 16)) for _ in range(rng.randint(0, 5)))
        elif op == 4:
            name = rng.choice(WEIRD_NAMES[1:]) if rng.random() < 0.5 else name + ".x"
        n = DTYPES[code].itemsize
        for d in shape:
            n *= d
        if n > MAX_INPUT:
            return mutate_bytes(rng, data)
        tensors[i] = (name, code, shape, raw[:n] + _raw(rng, max(0, n - len(raw)), code))
    names = [t[0] for t in tensors]
    if len(set(names)) != len(names):
        tensors = list({t[0]: t for t in tensors}.values())
    tail = _rand_bytes(rng, rng.randint(1, 64)) if rng.random() < 0.1 else b""
    return st_bytes(tensors, meta if isinstance(meta, dict) else None, tail)


def mutate_safetensors(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(10)
    if op < 3:
        return mutate_bytes(rng, data)
    if op < 5:
        return st_reencode(rng, data)
    parts = st_split(data)
    if parts is None:
        return mutate_bytes(rng, data)
    doc, body = parts
    if op == 5:  # header length lies
        (n,) = struct.unpack("<Q", data[:8])
        new = rng.choice((n + rng.randint(-8, 8), _pick_int(rng, 8), len(data), len(data) - 8, 2**63, 0, 1))
        return struct.pack("<Q", max(0, new) & (2**64 - 1)) + data[8:]
    raw = json_text(rng, mutate_json(rng, doc) if op < 9 else doc)
    if op == 9:
        body = mutate_bytes(rng, body) if body else body
    return struct.pack("<Q", len(raw)) + raw + body


@cache
def safetensors_seeds() -> tuple[bytes, ...]:
    from safetensors.torch import save

    g = torch.Generator().manual_seed(7)
    mixed = {
        "a": torch.randn(2, 3, generator=g),
        "b": torch.randn(4, generator=g).half(),
        "c": torch.randn(2, 2, generator=g).bfloat16(),
        "d": torch.arange(3),
        "e": torch.arange(5, dtype=torch.uint8),
        "f": torch.tensor([True, False, True]),
        "g": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "h": torch.randn(1, generator=g).double(),
        "zero": torch.zeros(2, 0),
        "scalar": torch.tensor(1.5),
    }
    sd_like = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(4, 4, 3, 3, generator=g).half(),
        "model.diffusion_model.input_blocks.0.0.bias": torch.randn(4, generator=g).half(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(7).reshape(1, 7),
        "first_stage_model.decoder.conv_out.weight": torch.randn(3, 4, 3, 3, generator=g).half(),
    }
    meta = {"format": "pt", "sd_merge_recipe": json.dumps({"type": "merge", "models": ["a", "b"]}),
            "modelspec.title": "seed", "ss_network_dim": "4"}
    return (
        save(mixed, metadata=meta),
        save(sd_like),
        save({"only": torch.ones(1)}),
        st_bytes([], None),
        st_bytes([("x", "F32", (2,), b"\0" * 8)], {"k": "v"}, tail=b"PK\x03\x04appended"),
    )


# ----------------------------------------------------------------------------------- pickles

_TOKENS = (b"(", b"t", b")", b"]", b"}", b"e", b"u", b"s", b"R", b"b", b"0", b"2", b"1", b".", b"N",
           b"\x85", b"\x86", b"\x87", b"\x88", b"h\x00", b"h\x05", b"q\x00", b"\x94", b"\x93", b"Q", b"o",
           b"J\xff\xff\xff\xff", b"K\x00", b"M\xff\xff", b"\x8a\x01\xff", b"X\x00\x00\x00\x00",
           b"ccollections\nOrderedDict\n", b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n",
           b"ctorch\nHalfStorage\n", b"cbuiltins\nset\n", b"c_codecs\nencode\n", b"cnumpy\ndtype\n",
           b"cfoo.bar\nBaz\n", b"\x8c\x07storage", b"\x8c\x06module", b"\x8c\x010", b"\x8c\x03cpu",
           b"(\x8c\x07storage\x8c\x010\x8c\x03cpuK\x04tQ")


def _ops(data: bytes) -> list[tuple[str, Any, int, int]]:
    """(opcode name, arg, start, end) of every opcode of the consecutive pickles in ``data``."""
    out: list[tuple[str, Any, int, int]] = []
    f = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickletools warns on odd protocol-0 string escapes
        try:
            while f.tell() < len(data) and len(out) < 100_000:
                prev = None
                for op, arg, pos in pickletools.genops(f):
                    if prev is not None:
                        out.append((*prev, pos or 0))
                    prev = (op.name, arg, pos or 0)
                if prev is not None:
                    out.append((*prev, f.tell()))
        except Exception:  # noqa: BLE001 - a damaged pickle: keep the opcodes read so far
            pass
    return out


def _int_op(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return emit(v)


def mutate_pickle(rng: random.Random, data: bytes) -> bytes:
    """Opcode-aware edits: int/str arguments, delete/duplicate/swap opcodes, insert tokens."""
    ops = _ops(data)
    if not ops or rng.random() < 0.15:
        return mutate_bytes(rng, data)
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        ops = _ops(bytes(buf)) or ops
        name, arg, start, end = rng.choice(ops)
        op = rng.randrange(6)
        if op == 0 and isinstance(arg, int) and not isinstance(arg, bool):
            new = rng.choice((*INTERESTING, -1, -(2**31), arg + 1, arg - 1, arg * 1000, 0))
            if "PUT" in name or "GET" in name or name == "MEMOIZE":
                continue
            buf[start:end] = _int_op(new)
        elif op == 1 and isinstance(arg, str) and name not in ("GLOBAL", "INST"):
            new_s = rng.choice(("HalfStorage", "FloatStorage", "LongStorage", "UntypedStorage", "QInt8Storage",
                                "0", "1", "../x", "module", "storage", "cuda:0", "", "\x00", "é" * 40,
                                "_rebuild_tensor_v2", "_rebuild_parameter", "OrderedDict", arg + "x"))
            buf[start:end] = emit(new_s)
        elif op == 2:
            del buf[start:end]
        elif op == 3:
            buf[start:start] = buf[start:end]
        elif op == 4:
            buf[start:start] = rng.choice(_TOKENS)
        else:
            a, b = rng.choice(ops), rng.choice(ops)
            if a[3] <= b[2]:
                buf[a[2]:b[3]] = buf[b[2]:b[3]] + buf[a[3]:b[2]] + buf[a[2]:a[3]]
        if len(buf) > MAX_INPUT:
            break
    return bytes(buf)


@dataclass(frozen=True)
class ZipSeed:
    """A clean torch zip as its member list, so mutations can rebuild it with correct CRCs."""

    members: tuple[tuple[str, bytes], ...]

    @property
    def pkl(self) -> int:
        return next(i for i, (n, _) in enumerate(self.members) if n.endswith("data.pkl"))


def _members(blob: bytes) -> ZipSeed:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        return ZipSeed(tuple((i.filename, z.read(i)) for i in z.infolist()))


@cache
def marker_path() -> Path:
    """Where every planted payload in the seeds would write: it must never appear."""
    return Path(tempfile.mkdtemp(prefix="sdf-fuzz-marker-")) / "PAYLOAD_RAN"


def _torch_save(obj: object, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@cache
def pickle_seeds() -> tuple[tuple[bytes, ...], tuple[ZipSeed, ...]]:
    """(every pickle seed as bytes, the clean torch zips as member lists)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=g)
    sd = {
        "w": base.half(),
        "view": base[:, 1:3],
        "t": base.t(),
        "p": torch.nn.Parameter(torch.randn(3, generator=g)),
        "i": torch.arange(4),
        "bf": torch.randn(2, 2, generator=g).bfloat16(),
        "b": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.0),
    }
    top = {"state_dict": sd, "epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.4.2"}
    zips = [_torch_save(top), _torch_save({"a": torch.ones(2, 2).half()}), sd1_checkpoint()[0],
            torch_zip(good_state_pickle(2), GOOD_STORAGES), torch_zip(good_state_pickle(4), GOOD_STORAGES)]
    zips += [p.read_bytes() for p in REAL_FILES if p.stat().st_size < 64 << 10 and zipfile.is_zipfile(p)]
    legacy = [_torch_save(top, legacy=True), _torch_save({"x": torch.ones(3)}, legacy=True),
              pickle.dumps({"a": 1, "b": [1.5, "x"]}, protocol=2)]
    hostile = []
    mark = marker_path()
    for case in CASES:
        if any(s in case.name for s in ("pip", "webbrowser")):
            continue
        blob = case.build(mark)
        if len(blob) < 32 << 10:
            hostile.append(blob)
    clean = tuple(_members(z) for z in zips)
    weight = max(1, 3 * len(hostile) // (len(zips) + len(legacy)))  # ~3 clean seeds for 1 hostile
    return tuple((zips + legacy) * weight + hostile), clean


def _rebuild(rng: random.Random, seed: ZipSeed, pkl: bytes) -> bytes:
    members = list(seed.members)
    members[seed.pkl] = (members[seed.pkl][0], pkl)
    return make_zip([Entry(n, d) for n, d in members])


def mutate_pickle_file(rng: random.Random, data: bytes) -> bytes:
    seeds, zips = pickle_seeds()
    if data[:4] == b"PK\x03\x04" and rng.random() < 0.8:
        try:
            seed = _members(data)
            pkl = seed.members[seed.pkl][1]
        except Exception:  # noqa: BLE001 - a hostile seed zipfile cannot read: mutate its bytes instead
            return mutate_bytes(rng, data)
        return _rebuild(rng, seed, mutate_pickle(rng, pkl))
    if rng.random() < 0.6:
        return mutate_pickle(rng, data)
    return mutate_bytes(rng, data)


# ---------------------------------------------------------------------------------------- zip

ZIP_FIELDS = {  # signature -> [(offset, width)] of its numeric fields
    b"PK\x03\x04": [(4, 2), (6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
    b"PK\x01\x02": [(6, 2), (8, 2), (10, 2), (16, 4), (20, 4), (24, 4), (28, 2), (30, 2), (32, 2), (34, 2),
                    (42, 4)],
    b"PK\x05\x06": [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
    b"PK\x06\x06": [(24, 8), (32, 8), (40, 8), (48, 8)],
    b"PK\x06\x07": [(4, 4), (8, 8), (16, 4)],
}
ZIP_NAMES = ("archive/data.pkl", "../../x", "/abs/data.pkl", "C:\\evil", "archive/data/0", "archive/data/99",
             "other/data.pkl", "archive/code/__torch__.py", "archive/constants.pkl", "archive/byteorder",
             "data.pkl", "archive/data.pkl/", "archive/DATA.PKL", "archive/version", "a\x00b", "archive/x.zip")


def zip_fields(rng: random.Random, data: bytes) -> bytes:
    """Overwrite one numeric field of a local header, directory entry, EOCD or ZIP64 record."""
    buf = bytearray(data)
    spots = [(i, sig) for sig in ZIP_FIELDS for i in _find_all(data, sig)]
    if not spots:
        return mutate_bytes(rng, data)
    for _ in range(rng.randint(1, 2)):
        at, sig = rng.choice(spots)
        off, width = rng.choice(ZIP_FIELDS[sig])
        if at + off + width <= len(buf):
            old = int.from_bytes(buf[at + off:at + off + width], "little")
            new = rng.choice((_pick_int(rng, width), old + 1, max(0, old - 1), old + rng.randint(2, 64)))
            buf[at + off:at + off + width] = (new & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    return bytes(buf)


def _find_all(data: bytes, sig: bytes) -> list[int]:
    out: list[int] = []
    i = data.find(sig)
    while i >= 0 and len(out) < 1000:
        out.append(i)
        i = data.find(sig, i + 1)
    return out


def to_zip64(blob: bytes) -> bytes:
    """Move a plain zip's end record into ZIP64 form (ZIP64 EOCD record + locator)."""
    eocd = blob.rfind(b"PK\x05\x06")
    if eocd < 0 or eocd + 22 > len(blob):
        return blob
    _, _, _, n_disk, n_total, cd_size, cd_off, _ = struct.unpack("<IHHHHIIH", blob[eocd:eocd + 22])
    rec = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n_disk, n_total, cd_size, cd_off)
    loc = struct.pack("<IIQI", 0x07064B50, 0, eocd, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return blob[:eocd] + rec + loc + end + blob[eocd + 22:]


def zip_structure(rng: random.Random, seed: ZipSeed) -> bytes:
    """Rebuild ``seed`` with its member list edited (and maybe its pickle mutated)."""
    entries = [Entry(n, d) for n, d in seed.members]
    kw: dict[str, Any] = {}
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(entries))
        e = entries[i]
        op = rng.randrange(13)
        if op == 0:
            e.name = rng.choice(ZIP_NAMES)
        elif op == 1:
            entries.insert(rng.randrange(len(entries) + 1), Entry(e.name, mutate_bytes(rng, e.data)))
        elif op == 2 and len(entries) > 1:
            del entries[i]
        elif op == 3:
            rng.shuffle(entries)
        elif op == 4:
            e.method = 8
        elif op == 5:
            e.flags = rng.choice((0, 0x1, 0x8, 0x20, 0x40, 0x800 | 0x1, 0xFFFF))
        elif op == 6:
            e.crc = rng.choice((0, 0xDEADBEEF, _pick_int(rng, 4)))
        elif op == 7:
            e.local_name = rng.choice(ZIP_NAMES)
        elif op == 8:
            e.declared_size = _pick_int(rng, 4)
        elif op == 9:
            e.data = mutate_pickle(rng, e.data) if e.name.endswith(".pkl") else mutate_bytes(rng, e.data)
        elif op == 10:
            entries.append(Entry(rng.choice(ZIP_NAMES), rng.choice((b"x", good_state_pickle(), make_zip([])))))
        elif op == 11:
            kw[rng.choice(("prepend", "append"))] = rng.choice((b"MZ" + b"\0" * 60, b"PK\x05\x06" + b"\0" * 18,
                                                               _rand_bytes(rng, 40)))
        else:
            kw["cut_cd"] = rng.randint(1, 60)
    blob = make_zip(entries, **kw)
    return to_zip64(blob) if rng.random() < 0.1 else blob


def mutate_zip(rng: random.Random, data: bytes) -> bytes:
    _, zips = pickle_seeds()
    op = rng.randrange(10)
    if op < 5:
        return zip_structure(rng, rng.choice(zips))
    if op < 8:
        return zip_fields(rng, data)
    if op == 8:
        return zip_fields(rng, to_zip64(data))
    return mutate_bytes(rng, data)


# ---------------------------------------------------------------------------------- folders


def _tiny_sd1() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).half()

    sd = {f"first_stage_model.decoder.mid.attn_1.{p}.{leaf}": r(8, 8, 1, 1) if leaf == "weight" else r(8)
          for p in "qkv" for leaf in ("weight", "bias")}
    sd.update({
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": r(8, 8, 1, 1),
        "first_stage_model.decoder.conv_in.weight": r(8, 4, 3, 3),
        "first_stage_model.decoder.conv_in.bias": r(8),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": r(16, 12),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": r(7, 12),
        "model.diffusion_model.input_blocks.0.0.weight": r(5, 4, 3, 3),
        "model.diffusion_model.input_blocks.0.0.bias": r(5),
        "model.diffusion_model.time_embed.0.weight": r(20, 5),
        "model.diffusion_model.time_embed.0.bias": r(20),
    })
    return sd


@cache
def folder_seeds() -> tuple[Path, ...]:
    """Small diffusers folders (full pipeline, lone UNet component, sharded VAE) and a sharded file."""
    from safetensors.torch import save_file

    from sdforensics.synth.diffusers import write_diffusers

    root = Path(tempfile.mkdtemp(prefix="sdf-fuzz-seeds-"))
    full = write_diffusers(_tiny_sd1(), "sd1", root / "pipe")
    lone = root / "lone"
    shutil.copytree(full / "unet", lone)
    sharded_vae = root / "pipe_sharded"
    shutil.copytree(full, sharded_vae)
    _shard(sharded_vae / "vae", "diffusion_pytorch_model", 2)
    plain = root / "sharded"
    plain.mkdir()
    save_file({k: v for k, v in _tiny_sd1().items() if "attn" in k}, str(plain / "model.safetensors"))
    _shard(plain, "model", 3)
    return full, lone, sharded_vae, plain


def _shard(folder: Path, base: str, n: int) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / f"{base}.safetensors")
    (folder / f"{base}.safetensors").unlink()
    wmap: dict[str, str] = {}
    keys = sorted(tensors)
    for i in range(n):
        name = f"{base}-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::n]}
        save_file(part, str(folder / name))
        wmap.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / f"{base}.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": wmap}))


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _mutate_json_file(rng: random.Random, path: Path) -> None:
    raw = path.read_bytes()
    if rng.random() < 0.2:
        path.write_bytes(mutate_bytes(rng, raw))
        return
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        doc = {}
    path.write_bytes(json_text(rng, mutate_json(rng, doc)))


def mutate_folder(rng: random.Random, folder: Path, outside: Path) -> None:
    """Edit a copied diffusers/sharded folder in place; ``outside`` is a file beyond its root."""
    for _ in range(rng.randint(1, 3)):
        files = _files(folder)
        if not files:
            return
        jsons = [p for p in files if p.suffix == ".json"]
        weights = [p for p in files if p.suffix == ".safetensors"]
        op = rng.randrange(10)
        if op < 3 and jsons:
            _mutate_json_file(rng, rng.choice(jsons))
        elif op < 5 and weights:
            w = rng.choice(weights)
            w.write_bytes(mutate_safetensors(rng, w.read_bytes()))
        elif op == 5:
            victim = rng.choice(files)
            if rng.random() < 0.3 and victim.parent != folder:
                shutil.rmtree(victim.parent)
            else:
                victim.unlink()
        elif op == 6:
            victim = rng.choice(weights or files)
            victim.unlink()
            target = rng.choice((outside, victim, victim.parent / "nowhere", rng.choice(files),
                                 Path("/etc/hostname"), victim.parent))
            os.symlink(target, victim)
        elif op == 7:
            sub = rng.choice([folder, *(p for p in folder.iterdir() if p.is_dir())])
            name = rng.choice(("pipeline.py", "diffusion_pytorch_model.bin", "model.fp16.safetensors",
                               "diffusion_pytorch_model.fp16.safetensors", "model.safetensors.index.json",
                               "diffusion_pytorch_model.safetensors.index.json", "config.json"))
            src = rng.choice(files)
            if (sub / name).is_symlink():  # an earlier op linked or made a folder there: replace it
                (sub / name).unlink()
            elif (sub / name).is_dir():
                shutil.rmtree(sub / name)
            (sub / name).write_bytes(src.read_bytes() if rng.random() < 0.7 else b"print('x')\n")
        elif op == 8 and weights:
            w = rng.choice(weights)
            w.write_bytes(st_reencode(rng, w.read_bytes()))
        elif op == 9:
            idx = [p for p in jsons if p.name.endswith(".index.json")]
            if idx:
                p = rng.choice(idx)
                doc = json.loads(p.read_bytes() or b"{}") if _is_json(p) else {}
                wmap = doc.get("weight_map") if isinstance(doc, dict) else None
                if isinstance(wmap, dict) and wmap:
                    k = rng.choice(sorted(wmap))
                    wmap[k] = rng.choice(("../outside.safetensors", "/etc/passwd", "missing.safetensors", "",
                                          "C:\\x.safetensors", "sub/../../x", *(v for v in wmap.values())))
                    if rng.random() < 0.3:
                        wmap["extra.key"] = wmap[k]
                    p.write_text(json.dumps(doc))


def _is_json(p: Path) -> bool:
    try:
        json.loads(p.read_bytes())
        return True
    except (ValueError, RecursionError):
        return False


# ------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Target:
    """One fuzz target: builds a mutated input at ``workdir`` from a rng; returns the path to open."""

    name: str
    build: Callable[[random.Random, Path], Path]


def _file_target(name: str, suffix: str, seeds: Callable[[], tuple[bytes, ...]],
                 mutate: Callable[[random.Random, bytes], bytes]) -> Target:
    def build(rng: random.Random, workdir: Path) -> Path:
        data = rng.choice(seeds())
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            data = mutate(rng, data)
        path = workdir / f"input{rng.choice((suffix, suffix, '.bin', '.safetensors', '.ckpt'))}"
        path.write_bytes(data)
        return path

    return Target(name, build)


def _folder_target(name: str, pick: Callable[[tuple[Path, ...]], tuple[Path, ...]], entry: str | None) -> Target:
    def build(rng: random.Random, workdir: Path) -> Path:
        src = rng.choice(pick(folder_seeds()))
        folder = workdir / "model"
        shutil.copytree(src, folder, symlinks=True)
        outside = workdir / "outside.safetensors"
        outside.write_bytes(safetensors_seeds()[2])
        mutate_folder(rng, folder, outside)
        if entry is None:
            return folder
        idx = sorted(folder.glob("*.index.json"))
        return idx[0] if idx else folder / entry

    return Target(name, build)


@cache
def _zip_bytes() -> tuple[bytes, ...]:
    return tuple(make_zip([Entry(n, d) for n, d in z.members]) for z in pickle_seeds()[1]) + tuple(
        b for b in pickle_seeds()[0] if b[:4] == b"PK\x03\x04")


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        _file_target("safetensors", ".safetensors", safetensors_seeds, mutate_safetensors),
        _file_target("pickle", ".ckpt", lambda: pickle_seeds()[0], mutate_pickle_file),
        _file_target("zip", ".pt", lambda: tuple(_zip_bytes()), mutate_zip),
        _folder_target("diffusers", lambda s: s[:3], None),
        _folder_target("sharded", lambda s: s[3:], "model.safetensors.index.json"),
    )
}


def build_corpus() -> None:
    """Build every seed once (slow part: torch.save, diffusers writer); call before timing."""
    safetensors_seeds()
    pickle_seeds()
    _zip_bytes()
    folder_seeds()


# ----------------------------------------------------------------------------------- contract


def _input_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    try:
        return path.stat().st_size
    except OSError:
        return 0


def exercise(path: Path) -> str:
    """Run the contract on ``path``: ``"accepted"`` or ``"rejected"``; any other exception is a bug."""
    from sdforensics.readers import open_checkpoint
    from sdforensics.readers.scan import render_scan_text, scan_path, scan_to_json

    try:
        report = scan_path(path)  # SdfError only when the path is missing; a bad file is a finding
    except SdfError:
        if path.exists() or path.is_symlink():
            raise
    else:
        render_scan_text(report)
        json.dumps(scan_to_json(report))
    try:
        ck = open_checkpoint(path)
    except SdfError:
        return "rejected"
    try:
        fmt = ck.format()
        str(fmt)
        if fmt.metadata:  # metadata decoding (recipes, kohya training fields) must not raise either
            from sdforensics.lora.files import training_summary
            from sdforensics.model.metadata import decode

            decode(fmt.metadata)
            training_summary(fmt.metadata)
        infos = ck.infos()
        cap = max(AMPLIFY_BYTES, AMPLIFY_RATIO * max(_input_size(path), 1))
        for info in infos:
            if info.nbytes > cap:
                raise FuzzBug(f"memory bomb: tensor {info.name[:60]!r} {info.shape} declares {info.nbytes:,} "
                              f"bytes from a {_input_size(path):,}-byte input")
        for n, (info, t) in enumerate(ck.tensors()):
            # fp8 values are handed on as the float16 values they exactly are (readers.base contract)
            want = torch.float16 if info.dtype in FP8_CODES else DTYPES[info.dtype].torch_dtype
            if tuple(t.shape) != info.shape or t.dtype != want:
                raise FuzzBug(f"tensor {info.name[:60]!r} is {tuple(t.shape)} {t.dtype}, its info says "
                              f"{info.shape} {want}")
            if t.numel():
                t.reshape(-1)[:16].float().sum()
            if n + 1 >= MAX_TENSORS:
                break
    except SdfError:
        return "rejected"
    finally:
        ck.close()
    return "accepted"


def _alarm(_sig: int, _frame: object) -> None:
    raise InputTimeout()


def run_one(target: str, seed: int | random.Random, workdir: Path, timeout: float | None = None,
            keep: Path | None = None) -> Outcome:
    """Build input ``seed`` of ``target`` in ``workdir`` (emptied first) and check the contract.

    ``seed`` is an int (rng ``Random(f"{target}:{seed}")``) or a ready rng (hypothesis). With
    ``timeout`` (main thread only) an input running longer is a bug. ``keep``: copy failing
    inputs there.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(f"{target}:{seed}")
    num = seed if isinstance(seed, int) else -1
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    marker = marker_path()
    t0 = time.perf_counter()
    if timeout:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            path = TARGETS[target].build(rng, workdir)
        except InputTimeout:
            return Outcome(target, num, "harness", f"HarnessTimeout: building the input took over {timeout} s")
        except Exception as err:  # noqa: BLE001 - a mutator bug, not a reader bug: say so
            return Outcome(target, num, "harness", f"{type(err).__name__}: {str(err)[:300]}", _where(err))
        finally:
            if timeout:  # re-arm: the input itself gets the full limit
                signal.setitimer(signal.ITIMER_REAL, timeout)
        t0 = time.perf_counter()
        status = exercise(path)
        if marker.exists():
            raise FuzzBug("a planted payload ran (marker file written)")
        out = Outcome(target, num, status, seconds=time.perf_counter() - t0)
    except InputTimeout:
        out = Outcome(target, num, "bug", f"Timeout: over {timeout} s", "", time.perf_counter() - t0)
    except BaseException as err:  # noqa: BLE001 - everything not SdfError is what we are hunting
        if isinstance(err, KeyboardInterrupt):
            raise
        msg = f"{type(err).__name__}: {str(err)[:300]}"
        out = Outcome(target, num, "bug", msg, _where(err), time.perf_counter() - t0)
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
    if marker.exists():
        marker.unlink()
    if out.status == "bug" and keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        dest = keep / f"{target}-{num}"
        if not dest.exists():
            shutil.copytree(workdir, dest, symlinks=True)
    return out
