"""Generate hostile and legitimate pickle checkpoints on the fly (BAD_INPUTS cases 16-30).

Nothing binary is committed: every file is built here, by a tiny opcode emitter and a tiny zip
writer that can produce the malformed structures ``pickle`` and ``zipfile`` refuse to write.
Every executable payload creates ``marker`` when run, so a test can prove it never ran.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
"""Real small weight files shared by the project (see its README and index.json)."""
REAL_FILES = (
    sorted(p for p in REALDATA.rglob("*") if p.suffix in (".pt", ".bin", ".pth")) if REALDATA.exists() else []
)

# ------------------------------------------------------------------------------- opcode emitter


@dataclass(frozen=True)
class G:
    """A global: emitted with GLOBAL (``how="GLOBAL"``) or STACK_GLOBAL (``how="STACK"``)."""

    module: str
    name: str
    how: str = "GLOBAL"


@dataclass
class R:
    """``func(*args)`` via REDUCE."""

    func: object
    args: tuple = ()


@dataclass
class Build:
    obj: object
    state: object


@dataclass
class PID:
    """A persistent id (BINPERSID)."""

    value: object


@dataclass
class OD:
    """``collections.OrderedDict`` with items, as torch pickles state dicts."""

    items: list = field(default_factory=list)


@dataclass
class Raw:
    data: bytes


def _str(s: str) -> bytes:
    b = s.encode("utf-8", "surrogatepass")
    return (b"\x8c" + bytes([len(b)]) if len(b) < 256 else b"X" + struct.pack("<I", len(b))) + b


def emit(v: object) -> bytes:
    """Binary opcodes (protocol 2+ flavour) that rebuild ``v``."""
    if v is None:
        return b"N"
    if v is True or v is False:
        return b"\x88" if v else b"\x89"
    if isinstance(v, int):
        if 0 <= v < 2**31:
            return b"J" + struct.pack("<i", v)
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return b"\x8a" + bytes([len(raw)]) + raw
    if isinstance(v, float):
        return b"G" + struct.pack(">d", v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, bytes):
        return b"C" + bytes([len(v)]) + v if len(v) < 256 else b"B" + struct.pack("<I", len(v)) + v
    if isinstance(v, tuple):
        return b"(" + b"".join(emit(x) for x in v) + b"t"
    if isinstance(v, list):
        return b"](" + b"".join(emit(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(emit(k) + emit(x) for k, x in v.items()) + b"u"
    if isinstance(v, OD):
        return (
            emit(R(G("collections", "OrderedDict")))
            + b"("
            + b"".join(emit(k) + emit(x) for k, x in v.items)
            + b"u"
        )
    if isinstance(v, G):
        if v.how == "STACK":
            return _str(v.module) + _str(v.name) + b"\x93"
        return (
            b"c"
            + v.module.encode("utf-8", "surrogateescape")
            + b"\n"
            + v.name.encode("utf-8", "surrogateescape")
            + b"\n"
        )
    if isinstance(v, R):
        return emit(v.func) + emit(tuple(v.args)) + b"R"
    if isinstance(v, Build):
        return emit(v.obj) + emit(v.state) + b"b"
    if isinstance(v, PID):
        return emit(v.value) + b"Q"
    if isinstance(v, Raw):
        return v.data
    raise TypeError(type(v))


def dumps(v: object, proto: int = 2) -> bytes:
    return (b"\x80" + bytes([proto]) if proto >= 2 else b"") + emit(v) + b"."


# ------------------------------------------------------------------------------------- zip writer


@dataclass
class Entry:
    name: str
    data: bytes
    method: int = 0
    flags: int = 0x800
    crc: int | None = None
    local_name: str | None = None
    declared_size: int | None = None


def make_zip(entries: list[Entry], prepend: bytes = b"", append: bytes = b"", cut_cd: int = 0) -> bytes:
    """A zip written by hand, so every field can lie. ``cut_cd`` drops bytes from the directory end."""
    out, central = bytearray(prepend), bytearray()
    for e in entries:
        payload = zlib.compress(e.data)[2:-4] if e.method == 8 else e.data
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        size = len(e.data) if e.declared_size is None else e.declared_size
        csize = len(payload) if e.declared_size is None else e.declared_size
        name = e.name.encode("utf-8")
        lname = (e.local_name if e.local_name is not None else e.name).encode("utf-8")
        offset = len(out) - len(prepend)
        out += (
            struct.pack(
                "<IHHHHHIIIHH", 0x04034B50, 20, e.flags, e.method, 0, 0x21, crc, csize, size, len(lname), 0
            )
            + lname
            + payload
        )
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                e.flags,
                e.method,
                0,
                0x21,
                crc,
                csize,
                size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    cd_off = len(out) - len(prepend)
    out += central
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), cd_off, 0)
    if cut_cd:
        del out[len(out) - cut_cd :]
    return bytes(out + eocd + append)


# --------------------------------------------------------------------------- torch-style pickles


def tensor(
    key: str,
    storage: str,
    numel: int,
    shape: tuple,
    stride: tuple | None = None,
    offset: int = 0,
    param: bool = False,
) -> R:
    """``_rebuild_tensor_v2`` of storage ``key`` as torch's zip format pickles it."""
    if stride is None:
        stride, acc = [], 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
    pid = PID(("storage", G("torch", storage), key, "cpu", numel))
    t = R(G("torch._utils", "_rebuild_tensor_v2"), (pid, offset, tuple(shape), tuple(stride), False, OD()))
    return R(G("torch._utils", "_rebuild_parameter"), (t, True, OD())) if param else t


def torch_zip(
    pkl: bytes,
    storages: dict[str, bytes],
    folder: str = "archive",
    extra: list[Entry] | None = None,
    **kw: object,
) -> bytes:
    entries = [Entry(f"{folder}/data.pkl", pkl)]
    entries += [Entry(f"{folder}/data/{k}", v) for k, v in storages.items()]
    entries += [Entry(f"{folder}/version", b"3\n"), *(extra or [])]
    return make_zip(entries, **kw)  # type: ignore[arg-type]


def sd1_checkpoint() -> tuple[bytes, dict[str, np.ndarray]]:
    """A tiny SD-1.x-style lightning checkpoint: lightning callback, numpy scalar, fp16 + fp32,
    a parameter, a transposed view sharing a storage. Returns (zip bytes, expected tensors)."""
    w = np.arange(12, dtype=np.float16).reshape(3, 4)
    b = np.linspace(-1, 1, 4).astype(np.float32)
    emb = np.arange(6, dtype=np.float32).reshape(2, 3)
    dtype_f8 = Build(R(G("numpy", "dtype"), ("f8", False, True)), (3, "<", None, None, None, -1, -1, 0))
    score = R(
        G("numpy.core.multiarray", "scalar"),
        (dtype_f8, R(G("_codecs", "encode"), ("\x00" * 7 + "@", "latin1"))),
    )
    sd = OD(
        [
            ("model.diffusion_model.input_blocks.0.0.weight", tensor("0", "HalfStorage", 12, (3, 4))),
            ("model.diffusion_model.input_blocks.0.0.bias", tensor("1", "FloatStorage", 4, (4,), param=True)),
            (
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                tensor("2", "FloatStorage", 6, (2, 3)),
            ),
            (
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weightT",
                tensor("2", "FloatStorage", 6, (3, 2), stride=(1, 3)),
            ),
        ]
    )
    callbacks = {
        G("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"): {
            "monitor": None,
            "best_model_score": score,
            "best_model_path": "",
            "dirpath": "/logs/ckpt",
        }
    }
    top = {
        "epoch": 6,
        "global_step": 470000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": callbacks,
        "hparams": R(G("argparse", "Namespace")),
    }
    blob = torch_zip(dumps(top), {"0": w.tobytes(), "1": b.tobytes(), "2": emb.tobytes()})
    expected = {
        "model.diffusion_model.input_blocks.0.0.weight": w,
        "model.diffusion_model.input_blocks.0.0.bias": b,
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": emb,
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weightT": emb.T.copy(),
    }
    return blob, expected


def good_state_pickle(proto: int = 2) -> bytes:
    return dumps(OD([("w", tensor("0", "FloatStorage", 4, (2, 2)))]), proto)


GOOD_STORAGES = {"0": np.ones(4, np.float32).tobytes()}


# ---------------------------------------------------------------------------------- payloads


class _OsSystem:
    def __init__(self, marker: Path) -> None:
        self.cmd = f"touch {marker}"

    def __reduce__(self) -> tuple:
        return (os.system, (self.cmd,))


def system_call(marker: Path, how: str = "GLOBAL", module: str = "os") -> R:
    return R(G(module, "system", how), (f"touch {marker}",))


def py_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _cmd(marker: Path, proto: int) -> bytes:
    return b"V" + f"touch {marker}".encode() + b"\n" if proto < 2 else emit(f"touch {marker}")


def inst_payload(marker: Path, proto: int) -> bytes:
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return head + b"(" + _cmd(marker, proto) + b"ios\nsystem\n."


def obj_payload(marker: Path, proto: int) -> bytes:
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return (
        head
        + b"("
        + emit(G("os", "system", "STACK" if proto >= 4 else "GLOBAL"))
        + _cmd(marker, proto)
        + b"o."
    )


@dataclass(frozen=True)
class Case:
    """A hostile file: how to build it, what the reader must raise, what the scan must say."""

    name: str
    suffix: str
    build: Callable[[Path], bytes]
    error: str
    """``UnsafeFileError``, ``CorruptFileError`` or ``UnsupportedFormatError``."""
    scan: str = "dangerous"
    global_: str | None = None
    """A qualname the scan must list as dangerous."""


def _in_zip(payload: Callable[[Path], bytes]) -> Callable[[Path], bytes]:
    return lambda m: torch_zip(payload(m), GOOD_STORAGES)


def _legacy(parts: list[bytes], tail: bytes = b"") -> bytes:
    return b"".join(parts) + tail


MAGIC = 0x1950A86A20F9469CFC6C
_SYSINFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _nested(m: Path) -> bytes:
    return pickle.dumps(_OsSystem(m), protocol=2)


def _billion_laughs(_m: Path) -> bytes:
    b = bytearray(b"\x80\x02](" + b"N" * 10 + b"eq\x00")
    for i in range(1, 12):
        b += b"](" + (b"h" + bytes([i - 1])) * 10 + b"eq" + bytes([i])
    return bytes(b) + b"."


def _cases() -> list[Case]:
    c: list[Case] = []
    U, C, S = "UnsafeFileError", "CorruptFileError", "UnsupportedFormatError"
    # 16: reduce to code-running callables (real pickle.dumps), plain and inside a torch zip
    for proto in (0, 2, 4, 5):
        c.append(
            Case(
                f"os_system_reduce_p{proto}",
                ".ckpt",
                lambda m, p=proto: pickle.dumps(_OsSystem(m), protocol=p),
                U,
                global_="posix.system",
            )
        )
    c.append(
        Case("os_system_in_zip", ".ckpt", _in_zip(lambda m: dumps(system_call(m))), U, global_="os.system")
    )
    for mod, name, arg in [
        ("nt", "system", None),
        ("builtins", "eval", "code"),
        ("builtins", "exec", "code"),
        ("__builtin__", "eval", "code"),
        ("subprocess", "Popen", "argv"),
        ("runpy", "_run_code", "code"),
        ("pip", "main", "pip"),
        ("webbrowser", "open", "url"),
    ]:

        def build(m: Path, mod: str = mod, name: str = name, arg: str | None = arg) -> bytes:
            args: tuple = {
                None: (f"touch {m}",),
                "code": (py_code(m),),
                "argv": (["touch", str(m)],),
                "pip": (["download", "-d", str(m), "x"],),
                "url": (f"file://{m}",),
            }[arg]
            if name == "_run_code":
                args = (py_code(m), {})
            return dumps(R(G(mod, name), args))

        c.append(Case(f"reduce_{mod}_{name}", ".pt", _in_zip(build), U, global_=f"{mod}.{name}"))
    # 17: the same payload via GLOBAL, STACK_GLOBAL, INST, OBJ in protocols 0, 2, 4, 5
    for proto in (2, 4, 5):
        c.append(
            Case(
                f"stack_global_p{proto}",
                ".pt",
                lambda m, p=proto: dumps(system_call(m, "STACK"), p),
                U,
                global_="os.system",
            )
        )
    for proto in (0, 2, 4, 5):
        c.append(Case(f"inst_p{proto}", ".pt", lambda m, p=proto: inst_payload(m, p), U, global_="os.system"))
        c.append(Case(f"obj_p{proto}", ".pt", lambda m, p=proto: obj_payload(m, p), U, global_="os.system"))
    # 18: memo tricks
    c.append(
        Case(
            "memo_binput_memoize_mix",
            ".pt",
            lambda m: (
                b"\x80\x04"
                + _str("os")
                + b"\x94"
                + _str("x")
                + b"q\x05"
                + b"0"
                + _str("system")
                + b"q\x07h\x00h\x07\x93"
                + emit((f"touch {m}",))
                + b"R."
            ),
            U,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "memo_get_missing",
            ".pt",
            lambda m: dumps(system_call(m))[:-1] + b"h\x09.",
            U,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "memo_non_string_stack_global",
            ".pt",
            lambda m: (
                b"\x80\x04J\x01\x00\x00\x00\x94"
                + _str("system")
                + b"h\x00\x93"
                + emit((f"touch {m}",))
                + b"R."
            ),
            U,
            global_="unknown.unknown",
        )
    )
    # 19: indirection
    imp = R(G("importlib", "import_module"), ("os",))
    c.append(
        Case(
            "importlib_getattr",
            ".pt",
            lambda m: dumps(R(R(G("builtins", "getattr"), (imp, "system")), (f"touch {m}",))),
            U,
            global_="importlib.import_module",
        )
    )
    c.append(
        Case(
            "pkgutil_resolve_name",
            ".pt",
            lambda m: dumps(R(R(G("pkgutil", "resolve_name"), ("os:system",)), (f"touch {m}",))),
            U,
            global_="pkgutil.resolve_name",
        )
    )
    c.append(
        Case(
            "operator_attrgetter",
            ".pt",
            lambda m: dumps(R(R(R(G("operator", "attrgetter"), ("system",)), (imp,)), (f"touch {m}",))),
            U,
            global_="operator.attrgetter",
        )
    )
    c.append(
        Case(
            "functools_partial",
            ".pt",
            lambda m: dumps(R(R(G("functools", "partial"), (G("os", "system"), f"touch {m}")), ())),
            U,
            global_="functools.partial",
        )
    )
    c.append(
        Case(
            "inspect_getattr_static",
            ".pt",
            lambda m: dumps(R(R(G("inspect", "getattr_static"), (imp, "system")), (f"touch {m}",))),
            U,
            global_="inspect.getattr_static",
        )
    )
    c.append(
        Case(
            "popped_call_result",
            ".pt",
            lambda m: b"\x80\x02" + emit(system_call(m)) + b"0" + emit(OD()) + b".",
            U,
            global_="os.system",
        )
    )
    # 20: nested loaders
    for mod, name in [
        ("torch", "load"),
        ("pickle", "loads"),
        ("numpy", "load"),
        ("marshal", "loads"),
        ("types", "CodeType"),
        ("torch.serialization", "load"),
    ]:
        c.append(
            Case(
                f"nested_{mod}_{name}",
                ".ckpt",
                _in_zip(lambda m, mod=mod, name=name: dumps(R(G(mod, name), (_nested(m),)))),
                U,
                global_=f"{mod}.{name}",
            )
        )
    # 21: broken pickles that still name a dangerous global
    c.append(
        Case(
            "broken_after_reduce",
            ".ckpt",
            lambda m: dumps(system_call(m))[:-1] + b"\xff\xfe garbage",
            U,
            global_="os.system",
        )
    )
    c.append(Case("early_eof", ".ckpt", lambda m: dumps(system_call(m))[:-6], U, global_="os.system"))
    # 22: odd opcodes and names
    c.append(
        Case(
            "non_utf8_module",
            ".pt",
            lambda m: b"\x80\x02co\xffs\nsystem\n" + emit((f"touch {m}",)) + b"R.",
            U,
        )
    )
    c.append(
        Case(
            "non_utf8_unknown", ".pt", _in_zip(lambda m: b"\x80\x02cfo\xffo\nbar\n)R."), U, scan="suspicious"
        )
    )
    c.append(Case("unknown_opcode", ".pt", _in_zip(lambda m: b"\x80\x02}\xff."), C, scan="suspicious"))
    c.append(Case("proto_twice", ".pt", _in_zip(lambda m: b"\x80\x02}\x80\x02."), C, scan="suspicious"))
    c.append(
        Case("not_pickle_text", ".ckpt", lambda m: b"hello, this is not a checkpoint\n", C, scan="error")
    )
    # 23: memory bombs
    c.append(
        Case(
            "binbytes8_2_62",
            ".pt",
            _in_zip(lambda m: b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx."),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "binunicode8_2_62",
            ".pt",
            lambda m: b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"xx.",
            C,
            scan="suspicious",
        )
    )
    c.append(Case("billion_laughs", ".pt", _in_zip(_billion_laughs), C, scan="suspicious"))
    c.append(
        Case(
            "ten_million_opcodes",
            ".pt",
            _in_zip(lambda m: b"\x80\x02" + b"N0" * 5_000_000 + b"N."),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "deep_marks", ".pt", _in_zip(lambda m: b"\x80\x02" + b"(" * 100_000 + b"."), C, scan="suspicious"
        )
    )
    c.append(
        Case(
            "deep_tuples",
            ".pt",
            _in_zip(lambda m: b"\x80\x02N" + b"\x85" * 100_000 + b"."),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "huge_memo_index", ".pt", _in_zip(lambda m: b"\x80\x02Nr\xff\xff\xff\xff."), C, scan="suspicious"
        )
    )
    # 24: legacy format variants
    c.append(
        Case(
            "legacy_wrong_magic",
            ".ckpt",
            lambda m: _legacy([dumps(12345), dumps(1001), dumps(_SYSINFO), dumps({}), dumps([])]),
            S,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "legacy_magic_by_eval",
            ".ckpt",
            lambda m: _legacy(
                [dumps(R(G("builtins", "eval"), (f"{MAGIC} if {py_code(m)} is None else 0",))), dumps(1001)]
            ),
            U,
            global_="builtins.eval",
        )
    )
    c.append(
        Case(
            "legacy_too_few_pickles",
            ".ckpt",
            lambda m: _legacy([dumps(MAGIC), dumps(1001)]),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "legacy_payload_in_main",
            ".ckpt",
            lambda m: _legacy([dumps(MAGIC), dumps(1001), dumps(_SYSINFO), dumps(system_call(m)), dumps([])]),
            U,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "tar_format",
            ".ckpt",
            lambda m: b"\x00" * 257 + b"ustar\x0000" + b"\x00" * 250,
            S,
            scan="error",  # tarfile (which torch tries first) rejects its checksum; not a pickle either
        )
    )
    # 25-27: zip differentials and anomalies
    pkl, st = good_state_pickle(), GOOD_STORAGES
    c.append(
        Case(
            "crc_mismatch",
            ".ckpt",
            lambda m: make_zip(
                [Entry("archive/data.pkl", pkl, crc=0xDEADBEEF), Entry("archive/data/0", st["0"])]
            ),
            C,
            scan="suspicious",
        )
    )
    for flag in (0x1, 0x20, 0x40):
        c.append(
            Case(
                f"zip_flag_{flag:#x}",
                ".ckpt",
                lambda m, f=flag: make_zip(
                    [Entry("archive/data.pkl", pkl, flags=0x800 | f), Entry("archive/data/0", st["0"])]
                ),
                C,
                scan="suspicious",
            )
        )
    c.append(
        Case(
            "local_central_mismatch",
            ".ckpt",
            lambda m: make_zip(
                [
                    Entry("archive/data.pkl", pkl, local_name="archive/evil.pk"),
                    Entry("archive/data/0", st["0"]),
                ]
            ),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "duplicate_data_pkl",
            ".ckpt",
            lambda m: make_zip(
                [
                    Entry("archive/data.pkl", pkl),
                    Entry("archive/data.pkl", dumps(system_call(m))),
                    Entry("archive/data/0", st["0"]),
                ]
            ),
            C,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "two_data_pkl",
            ".ckpt",
            lambda m: make_zip(
                [Entry("a/data.pkl", pkl), Entry("b/data.pkl", pkl), Entry("a/data/0", st["0"])]
            ),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "pickle_hidden_in_data0",
            ".ckpt",
            lambda m: make_zip(
                [
                    Entry("archive/data.pkl", pkl),
                    Entry("archive/data/0", st["0"]),
                    Entry("archive/data/1", dumps(system_call(m))),
                ]
            ),
            U,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "pickle_member_no_extension",
            ".ckpt",
            lambda m: make_zip(
                [
                    Entry("archive/data.pkl", pkl),
                    Entry("archive/data/0", st["0"]),
                    Entry("archive/extra", dumps(system_call(m), 4)),
                ]
            ),
            U,
            global_="os.system",
        )
    )
    c.append(
        Case(
            "truncated_central_directory",
            ".ckpt",
            lambda m: torch_zip(pkl, st, cut_cd=30),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "prepended_blob",
            ".ckpt",
            lambda m: torch_zip(pkl, st, prepend=b"MZ" + b"\x00" * 100),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "deflate_bomb",
            ".ckpt",
            lambda m: make_zip(
                [Entry("archive/data.pkl", pkl), Entry("archive/data/0", b"\x00" * 1_000_000, method=8)]
            ),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "declared_size_past_file",
            ".ckpt",
            lambda m: make_zip(
                [Entry("archive/data.pkl", pkl), Entry("archive/data/0", st["0"], declared_size=2**31)]
            ),
            C,
            scan="suspicious",
        )
    )
    for i, bad in enumerate(["../../x", "/abs/data.pkl", "C:\\evil"]):
        c.append(
            Case(
                f"path_traversal_{i}",
                ".ckpt",
                lambda m, bad=bad: torch_zip(pkl, st, extra=[Entry(bad, b"x")]),
                U,
                scan="suspicious",
            )
        )
    # 28: extension lies
    c.append(
        Case(
            "safetensors_named_pickle",
            ".safetensors",
            lambda m: dumps(system_call(m)),
            U,
            global_="os.system",
        )
    )
    c.append(
        Case("ckpt_that_is_safetensors", ".ckpt", lambda m: struct.pack("<Q", 2) + b"{}", S, scan="clean")
    )
    # 29: TorchScript
    c.append(
        Case(
            "torchscript",
            ".pt",
            lambda m: torch_zip(
                pkl,
                st,
                extra=[
                    Entry("archive/constants.pkl", dumps(())),
                    Entry("archive/code/__torch__.py", b"def f(): pass\n"),
                ],
            ),
            S,
            scan="suspicious",
        )
    )
    # 30: storages
    c.append(Case("missing_storage", ".ckpt", lambda m: torch_zip(pkl, {}), C, scan="suspicious"))
    c.append(
        Case("storage_too_small", ".ckpt", lambda m: torch_zip(pkl, {"0": b"\x00" * 8}), C, scan="suspicious")
    )
    c.append(
        Case(
            "offset_past_storage",
            ".ckpt",
            lambda m: torch_zip(dumps(OD([("w", tensor("0", "FloatStorage", 4, (2, 2), offset=3))])), st),
            C,
            scan="suspicious",
        )
    )
    c.append(
        Case(
            "negative_stride",
            ".ckpt",
            lambda m: torch_zip(
                dumps(OD([("w", tensor("0", "FloatStorage", 4, (2, 2), stride=(-2, 1)))])), st
            ),
            C,
            scan="suspicious",
        )
    )
    return c


CASES: list[Case] = _cases()


def write_case(case: Case, folder: Path) -> tuple[Path, Path]:
    """Write ``case`` into ``folder``; returns (file, marker path that must never appear)."""
    marker = folder / f"{case.name}.MARKER"
    path = folder / f"{case.name}{case.suffix}"
    path.write_bytes(case.build(marker))
    return path, marker
