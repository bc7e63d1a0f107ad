"""Read torch pickle checkpoints (``.ckpt/.pt/.pth/.bin``) without running any pickle code.

Two containers are read: the torch zip format (``<any folder>/data.pkl`` plus raw
``<folder>/data/<key>`` storages) and the legacy format (five consecutive pickles -- magic
number, protocol version, sys info, the object, the storage keys -- then the raw storages).

Before anything is unpickled, every pickle is walked statically
(:func:`sdforensics.readers.pickle_ops.walk`, bounded in opcodes, memo and nesting) and every global
it names is rated by ``data/pickle_allowlist.json``; one dangerous or unknown global and the
file is refused with :class:`UnsafeFileError`. Only then does a restricted unpickler run, in
which every global is an inert stand-in (lightning callbacks, numpy scalars ...) and tensors
are lazy references checked against the storage sizes. Data is read later, one storage at a
time, with bounds checks.

>>> import torch, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "lora.pt"
>>> torch.save({"w": torch.ones(2, 3)}, p)
>>> ckpt = open_pickle(p)
>>> [(i.name, i.shape, i.dtype) for i in ckpt.infos()]
[('w', (2, 3), 'F32')]
"""

from __future__ import annotations

import io
import pickle
import re
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..core.dtypes import DTYPES, FP8_CODES, STORAGE_CLASSES, DType, widen_fp8
from ..core.errors import CorruptFileError, SdfError, UnsafeFileError, UnsupportedFormatError
from ..core.safetext import terminal_safe as _esc
from .base import ClosingCheckpoint, FormatInfo, PickleGlobal, TensorInfo
from .containers import sniff_bytes
from .pickle_ops import DANGEROUS, SAFE, WalkResult, verdict, walk, walk_all
from .shape_bounds import shape_overflows
from .zip_archive import (
    MAX_PICKLE_BYTES,
    ZipLayout,
    crc_ok,
    is_torchscript,
    legacy_main_results,
    main_pickle,
    member_pickles,
    read_member,
    read_zip_layout,
)
from .zip_members import resolve_main_pickle

MAX_NODES = 5_000_000
MAX_DEPTH = 64
LEGACY_PROTOCOL = 1001


# ------------------------------------------------------------------------------ inert stand-ins


class StandIn:
    """An inert object standing for an instance of a class we never import."""

    _module = ""
    _name = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None
        self.items: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<stand-in {self._module}.{self._name}>"


@dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends."""

    name: str

    @property
    def dtype(self) -> DType | None:
        return DTYPES["U8"] if self.name == "UntypedStorage" else STORAGE_CLASSES.get(self.name)


@dataclass(frozen=True)
class StorageRef:
    key: str
    dtype: DType
    numel: int


@dataclass(frozen=True)
class LazyTensor:
    """A tensor as the pickle describes it: storage, element offset, shape, stride."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def extent(self) -> int:
        """Elements of the storage the tensor spans from its offset (0 when it is empty)."""
        if any(d == 0 for d in self.shape):
            return 0
        return 1 + sum((d - 1) * s for d, s in zip(self.shape, self.stride, strict=True))


class _Refuse(Exception):
    """Raised inside the unpickler for a structural problem; becomes CorruptFileError."""


def _int_tuple(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, (tuple, list)) or not all(type(x) is int for x in v):
        raise _Refuse(f"tensor {what} is not a tuple of integers")
    return tuple(v)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise _Refuse("a tensor is rebuilt from something that is not a storage")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if type(offset) is not int or offset < 0 or len(shape) != len(strides):
        raise _Refuse("a tensor has a bad storage offset or a stride/size length mismatch")
    if any(d < 0 for d in shape) or any(s < 0 for s in strides):
        raise _Refuse("a tensor has a negative size or stride")
    if shape_overflows(shape, storage.dtype.itemsize):
        raise _Refuse(f"a tensor has a size {list(shape)} whose storage size overflows 64 bits (torch cannot "
                      "build it, even with a 0 dimension)")
    return LazyTensor(storage, offset, shape, strides)


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, _new_type: Any, args: Any, _state: Any = None) -> Any:
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(args, tuple):
        raise _Refuse("_rebuild_from_type_v2 wraps something other than a tensor rebuild")
    return func(*args)


def _encode(obj: Any, encoding: str = "utf-8") -> Any:
    if isinstance(obj, str) and encoding.lower().replace("-", "") in ("latin1", "utf8", "ascii"):
        return obj.encode(encoding, "surrogatepass" if encoding.lower().startswith("utf") else "strict")
    raise _Refuse("_codecs.encode is used on something other than text")


def _reconstructor(cls: Any, _base: Any = None, _state: Any = None) -> Any:
    return cls.__new__(cls) if isinstance(cls, type) and issubclass(cls, StandIn) else StandIn()


_REAL: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("collections", "OrderedDict"): OrderedDict,
    ("collections", "defaultdict"): lambda *a: {},
    ("collections", "Counter"): lambda *a: dict(*a[:1]),
    ("collections", "deque"): lambda *a: list(*a[:1]),
    ("torch", "Size"): lambda v=(): tuple(v),
    ("_codecs", "encode"): _encode,
    ("codecs", "encode"): _encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
}
for _b in ("builtins", "__builtin__"):
    for _t in (set, frozenset, complex, slice, int, float, str, list, dict, tuple, bool):
        _REAL[(_b, _t.__name__)] = _t


class _RestrictedUnpickler(pickle.Unpickler):
    """Globals become stand-ins; persistent ids become :class:`StorageRef`; nothing is imported."""

    def __init__(self, data: bytes, refs: dict[str, StorageRef], legacy: bool) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.refs, self.legacy = refs, legacy
        self.classes: dict[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if verdict(module, name) != SAFE:  # the static walk refuses these first; belt and braces
            raise UnsafeFileError(f"the pickle names {_esc(module)}.{_esc(name)}")
        key = (module, name)
        if key in _REAL:
            return _REAL[key]
        if module in ("torch", "torch.storage") and name.endswith("Storage"):
            return StorageType(name)
        if key not in self.classes:
            self.classes[key] = type(name, (StandIn,), {"_module": module, "_name": name})
        return self.classes[key]

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
                raise UnsupportedFormatError("it holds a whole pickled nn.Module (with source), not weights")
            raise _Refuse("a persistent id is not a storage reference")
        if len(pid) != (6 if self.legacy else 5):
            raise _Refuse(f"a storage reference has {len(pid)} fields")
        stype, key, _location, numel = pid[1:5]
        if not isinstance(stype, StorageType) or not isinstance(key, str) or type(numel) is not int \
                or numel < 0:
            raise _Refuse("a storage reference is malformed")
        if stype.dtype is None:
            raise UnsupportedFormatError(f"it uses torch.{stype.name}, which sdforensics does not read")
        ref = StorageRef(key, stype.dtype, numel)
        old = self.refs.setdefault(key, ref)
        if old != ref:
            raise _Refuse(f"storage {key!r} is referenced with two different types or sizes")
        view = pid[5] if self.legacy else None
        if view is not None:
            raise UnsupportedFormatError("it uses legacy storage views, which sdforensics does not read")
        return ref


# ------------------------------------------------------------------------------------- reader


def _refuse_globals(path: Path, results: list[WalkResult], member: str,
                    broken_ok: bool = False) -> tuple[PickleGlobal, ...]:
    """Rate every global; raise UnsafeFileError/CorruptFileError before anything is unpickled."""
    seen: dict[tuple[str, str], PickleGlobal] = {}
    for r in results:
        for g in r.globals:
            rated = PickleGlobal(g.module, g.name, verdict(g.module, g.name), member)
            seen.setdefault((g.module, g.name), rated)
    found = tuple(seen.values())
    tail = f"; refusing to load it (sdforensics never runs pickle code). Run 'sdf scan {path}' for details."
    bad = [_esc(g.qualname) for g in found if g.verdict == DANGEROUS]
    if bad:
        which = "runs" if len(bad) == 1 else "run"
        raise UnsafeFileError(f"{path}: the pickle calls {', '.join(bad[:5])}, which {which} code{tail}")
    unknown = [_esc(g.qualname) for g in found if g.verdict != SAFE]
    if unknown:
        raise UnsafeFileError(f"{path}: the pickle names {', '.join(unknown[:5])}, which sdforensics does "
                              f"not know to be harmless{tail}")
    for r in results:
        if not r.stopped and not broken_ok:
            kind = "exceeds a safety limit" if r.over_limit else "is broken"
            raise CorruptFileError(f"{path}: the pickle {kind}: {r.error}")
        if r.notes and not broken_ok:
            raise CorruptFileError(f"{path}: the pickle is malformed: {r.notes[0]}")
    return found


def _unpickle(path: Path, data: bytes, refs: dict[str, StorageRef], legacy: bool) -> Any:
    try:
        return _RestrictedUnpickler(data, refs, legacy).load()
    except SdfError as err:
        msg = str(err)
        raise type(err)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except _Refuse as err:
        raise CorruptFileError(f"{path}: {err}") from None
    except Exception as err:  # any malformed-pickle failure of the restricted unpickler
        detail = _esc(str(err))[:200]
        raise CorruptFileError(f"{path}: the pickle is malformed ({type(err).__name__}: {detail})") from None


def _pick_state_dict(obj: Any) -> Any:
    if isinstance(obj, dict):
        sd = obj.get("state_dict")
        if isinstance(sd, dict):
            return sd
        for k in ("module", "model"):
            sub = obj.get(k)
            if isinstance(sub, dict) and any(isinstance(v, LazyTensor) for v in sub.values()):
                return sub
    return obj


def _flatten(path: Path, obj: Any) -> list[tuple[str, LazyTensor]]:
    if not isinstance(obj, (dict, list, tuple)):
        raise UnsupportedFormatError(f"{path}: the pickle holds a {type(obj).__name__}, not a state dict")
    out: list[tuple[str, LazyTensor]] = []
    budget = [MAX_NODES]

    def visit(prefix: str, node: Any, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise CorruptFileError(f"{path}: the pickle's object graph has more than {MAX_NODES:,} nodes "
                                   "(repeated shared references, a 'billion laughs' bomb?)")
        if isinstance(node, LazyTensor):
            out.append((prefix, node))
            return
        if depth > MAX_DEPTH:
            raise CorruptFileError(f"{path}: containers nested deeper than {MAX_DEPTH}")
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, (list, tuple)):
            items = enumerate(node)
        else:
            return
        for k, v in items:
            if type(k) not in (str, int):
                continue
            visit(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)

    visit("", obj, 0)
    if not out:
        raise UnsupportedFormatError(f"{path}: the pickle holds no tensors")
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise CorruptFileError(f"{path}: two tensors flatten to the same name")
    return out


@dataclass(frozen=True)
class _Storage:
    """Where a storage's bytes are: file offset and byte length, plus its CRC when zipped."""

    offset: int
    nbytes: int
    crc: int | None
    order: int


class PickleCheckpoint(ClosingCheckpoint):
    """A torch pickle checkpoint opened without running code (see module docs)."""

    def __init__(self, path: Path, container: str, tensors: list[tuple[str, LazyTensor]],
                 storages: dict[str, _Storage], globals_: tuple[PickleGlobal, ...],
                 findings: list[str]) -> None:
        self.path = path
        self._storages = storages
        self._format = FormatInfo(container, (path,), {}, globals_, tuple(findings))
        rank = {n: i for i, (n, _) in enumerate(tensors)}
        self._tensors = sorted(tensors, key=lambda nt: (storages[nt[1].storage.key].order, nt[1].offset,
                                                        rank[nt[0]]))
        for name, t in self._tensors:
            st = storages[t.storage.key]
            if t.storage.numel * t.storage.dtype.itemsize > st.nbytes:
                raise CorruptFileError(f"{path}: storage {t.storage.key!r} declares "
                                       f"{t.storage.numel * t.storage.dtype.itemsize:,} bytes but holds "
                                       f"{st.nbytes:,}")
            if _numel(t.shape) > max(t.storage.numel, 1) and _numel(t.shape) > 64 << 20:
                raise CorruptFileError(f"{path}: tensor {_esc(name)!r} declares {_numel(t.shape):,} elements over a "
                                       f"storage of {t.storage.numel:,} (a repeated-stride memory bomb)")
            if t.extent() and t.offset + t.extent() > t.storage.numel:
                raise CorruptFileError(f"{path}: tensor {_esc(name)!r} spans elements up to "
                                       f"{t.offset + t.extent():,} of a storage of {t.storage.numel:,}")

    def format(self) -> FormatInfo:
        return self._format

    def infos(self) -> list[TensorInfo]:
        """Every tensor from the pickle alone, in storage (file) order."""
        return [TensorInfo(n, t.shape, t.storage.dtype.code, _numel(t.shape) * t.storage.dtype.itemsize)
                for n, t in self._tensors]

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        """Every tensor as a CPU tensor, reading each storage once, in file order."""
        infos = self.infos()
        key, base = None, torch.empty(0)
        with open(self.path, "rb") as f:
            for info, (_, t) in zip(infos, self._tensors, strict=True):
                if t.storage.key != key:
                    key, base = t.storage.key, self._read_storage(f, t.storage)
                yield info, self.tensor_view(base, t)

    def _read_storage(self, f: io.BufferedReader, ref: StorageRef) -> torch.Tensor:
        offset, length = self.storage_span(ref)
        if length == 0:
            return torch.empty(0, dtype=ref.dtype.torch_dtype)
        buf = bytearray(length)
        f.seek(offset)
        if f.readinto(buf) != len(buf):
            raise CorruptFileError(f"{self.path}: storage {ref.key!r} is truncated")
        return self.storage_tensor(buf, ref)

    # -- for readers that bring the bytes themselves (readers.remote streams a URL once)
    def ordered_tensors(self) -> list[tuple[str, LazyTensor]]:
        """The tensors as :meth:`tensors` yields them (storage order)."""
        return list(self._tensors)

    def storage_span(self, ref: StorageRef) -> tuple[int, int]:
        """(file offset, bytes to read) of a storage; 0 bytes for an empty one."""
        st = self._storages[ref.key]
        nbytes = ref.numel * ref.dtype.itemsize
        if nbytes == 0:
            return st.offset, 0
        return st.offset, (st.nbytes if st.crc is not None else nbytes)

    def tensor_view(self, base: torch.Tensor, t: LazyTensor) -> torch.Tensor:
        out = torch.as_strided(base, t.shape, t.stride, t.offset) if base.numel() else \
            torch.empty(t.shape, dtype=t.storage.dtype.torch_dtype)
        return out.contiguous()

    def storage_tensor(self, buf: bytearray, ref: StorageRef) -> torch.Tensor:
        """A storage's bytes (as read from its span) as a typed tensor, CRC-checked when zipped."""
        st = self._storages[ref.key]
        nbytes = ref.numel * ref.dtype.itemsize
        if nbytes == 0:
            return torch.empty(0, dtype=ref.dtype.torch_dtype)
        if st.crc is not None and st.crc != 0 and _crc(buf) != st.crc:
            raise CorruptFileError(f"{self.path}: storage {ref.key!r} fails its CRC-32 check; the file is "
                                   "damaged. Download it again.")
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=nbytes)
        if ref.dtype.code in FP8_CODES:  # handed on as the fp16 values they exactly are
            return widen_fp8(raw, ref.dtype.code)
        return raw.view(ref.dtype.torch_dtype)

    def close(self) -> None:
        """Nothing to release: every read opens and closes the file itself."""


def _crc(buf: bytearray) -> int:
    import zlib

    return zlib.crc32(buf)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _open_zip(path: Path, f: BinaryIO) -> PickleCheckpoint:
    try:
        layout: ZipLayout = read_zip_layout(f)
    except ValueError as err:
        raise CorruptFileError(f"{path}: {err}") from None
    for kind, cls in (("unsafe", UnsafeFileError), ("corrupt", CorruptFileError)):
        bad = [a.text for a in layout.anomalies if a.kind == kind]
        if bad:
            raise cls(f"{path}: zip {bad[0]}; refusing to read it")
    findings = [a.text for a in layout.anomalies]
    if is_torchscript(layout):
        raise UnsupportedFormatError(f"{path}: a TorchScript archive; sdforensics never loads TorchScript")
    pkls = [m for m in layout.members if m.name.lower() == "data.pkl" or m.name.lower().endswith("/data.pkl")]
    resolved = resolve_main_pickle(layout.members)
    main = main_pickle(layout)
    if len(pkls) != 1 or main is None:
        why = f" ({_esc(resolved.problem)})" if resolved.problem else ""
        raise CorruptFileError(f"{path}: zip holds {len(pkls)} data.pkl members, expected one "
                               f"<folder>/data.pkl{why}; not a torch checkpoint")
    prefix = resolved.prefix
    main_walk: WalkResult | None = None
    for m, results, notes in member_pickles(f, layout):
        findings += notes
        if m is main and results:
            main_walk = results[0]
            if len(results) > 1:
                findings.append(f"{m.name} has bytes after its STOP opcode (not read)")
        elif results:
            findings.append(f"extra pickle member {m.name!r} (not read)")
        _refuse_globals(path, results, m.name, broken_ok=True)
    order = layout.member(prefix + "byteorder")
    try:
        byteorder = read_member(f, order, 16).strip() if order is not None else b""
    except (ValueError, zlib.error) as err:
        raise CorruptFileError(f"{path}: unreadable byteorder member ({err})") from None
    if byteorder not in (b"little", b""):
        raise UnsupportedFormatError(f"{path}: big-endian checkpoint; not supported")
    try:
        data = read_member(f, main)
    except ValueError as err:
        raise CorruptFileError(f"{path}: {err}") from None
    if not crc_ok(data, main):
        raise CorruptFileError(f"{path}: {main.name} fails its CRC-32 check; the file is damaged")
    found = _refuse_globals(path, [main_walk or walk(data)], main.name)
    refs: dict[str, StorageRef] = {}
    tensors = _flatten(path, _pick_state_dict(_unpickle(path, data, refs, legacy=False)))
    storages = {}
    for key in {t.storage.key for _, t in tensors}:
        sm = layout.member(f"{prefix}data/{key}")
        if sm is None:
            raise CorruptFileError(f"{path}: a tensor refers to storage data/{_esc(key)}, which the zip "
                                   "lacks")
        storages[key] = _Storage(sm.data_offset, sm.size, sm.crc, sm.index)
    return PickleCheckpoint(path, "pickle-zip", tensors, storages, found, findings)


def _open_legacy(path: Path, f: BinaryIO, size: int) -> PickleCheckpoint:
    f.seek(0)
    data = f.read(MAX_PICKLE_BYTES)
    results = legacy_main_results(data)
    if results is None:
        _refuse_globals(path, walk_all(data), "")
        raise UnsupportedFormatError(f"{path}: a pickle but not a torch checkpoint (no torch magic number); "
                                     f"run 'sdf scan {path}' to see what it holds")
    found = _refuse_globals(path, results, "")
    if len(results) < 5:
        raise CorruptFileError(f"{path}: legacy torch file holds {len(results)} pickles, expected 5")
    parts = [data[r.start:r.end] for r in results]
    refs: dict[str, StorageRef] = {}
    proto, sys_info = _unpickle(path, parts[1], refs, True), _unpickle(path, parts[2], refs, True)
    if proto != LEGACY_PROTOCOL or not isinstance(sys_info, dict):
        raise CorruptFileError(f"{path}: legacy torch header is invalid (protocol {proto!r:.20})")
    if sys_info.get("little_endian") is not True:
        raise UnsupportedFormatError(f"{path}: big-endian checkpoint; not supported")
    tensors = _flatten(path, _pick_state_dict(_unpickle(path, parts[3], refs, legacy=True)))
    keys = _unpickle(path, parts[4], refs, True)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise CorruptFileError(f"{path}: the legacy storage key list is malformed")
    storages, pos = {}, results[4].end
    for i, key in enumerate(keys):
        ref = refs.get(key)
        if ref is None:
            raise CorruptFileError(f"{path}: storage key {_esc(key)!r} is not referenced by the pickle")
        f.seek(pos)
        head = f.read(8)
        numel = int.from_bytes(head, "little", signed=True)
        if len(head) < 8 or numel != ref.numel:
            raise CorruptFileError(f"{path}: legacy storage {_esc(key)!r} header says {numel:,} elements, "
                                   f"the pickle says {ref.numel:,} (truncated or corrupt file)")
        storages[key] = _Storage(pos + 8, numel * ref.dtype.itemsize, None, i)
        pos += 8 + numel * ref.dtype.itemsize
        if pos > size:
            raise CorruptFileError(f"{path}: legacy storage {_esc(key)!r} runs past the end of the file")
    missing = {t.storage.key for _, t in tensors} - set(storages)
    if missing:
        raise CorruptFileError(f"{path}: the pickle refers to storage {_esc(sorted(missing)[0])!r}, "
                               "which the file lacks")
    findings = [f"{size - pos:,} bytes after the last storage"] if pos < size else []
    return PickleCheckpoint(path, "pickle-legacy", tensors, storages, found, findings)


def open_pickle(path: Path) -> PickleCheckpoint:
    """Open a torch pickle checkpoint (zip or legacy), refusing anything that would run code.

    Raises :class:`UnsafeFileError`, :class:`CorruptFileError` or :class:`UnsupportedFormatError`
    with a one-line message naming the file.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise CorruptFileError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            return open_pickle_file(path, f, size)
    except OSError as err:
        raise CorruptFileError(f"{path}: cannot read the file ({err.strerror or err})") from None


def open_pickle_file(path: Path, f: BinaryIO, size: int) -> PickleCheckpoint:
    """:func:`open_pickle` on an open, seekable file of ``size`` bytes (``path`` names it in messages;
    readers.remote passes a file over range requests)."""
    f.seek(0)
    head = f.read(512)
    fmt = sniff_bytes(head, size)
    if fmt == "zip" or (fmt in ("unknown", "safetensors-like") and re.search(b"PK\x05\x06", _tail(f, size))):
        return _open_zip(path, f)
    if fmt in ("pickle", "pickle-text"):
        return _open_legacy(path, f, size)
    what = {"safetensors": "a safetensors file, not a pickle; open it with the safetensors reader",
            "torch-tar": "a torch 0.1.x tar checkpoint, which sdforensics does not read"}
    if fmt in what:
        raise UnsupportedFormatError(f"{path}: {what[fmt]}")
    raise CorruptFileError(f"{path}: not a torch checkpoint (neither a zip nor a pickle)")


def _tail(f: BinaryIO, size: int) -> bytes:
    f.seek(max(0, size - 65557))
    return f.read()
