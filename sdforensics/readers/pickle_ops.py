"""Static pickle analysis: the allowlist of globals and an opcode walker that never runs code.

:func:`walk` reads the opcodes of one pickle the way ``pickletools.genops`` does, but it keeps
going past nothing it does not understand: it stops at the first broken or over-limit opcode
and returns what it found before (globals included) with the reason it stopped. It simulates
just enough of the stack and memo to resolve ``STACK_GLOBAL`` operands, and bounds the opcode
count, memo indices, ``MARK`` depth, container nesting and shared-reference expansion, so that
a hostile pickle cannot make the unpickler that runs afterwards use unbounded memory, time or
recursion.

:func:`verdict` rates a ``module.name`` global ``safe``, ``dangerous`` or ``suspicious`` from
``data/pickle_allowlist.json``; it is the one source of truth for the scanner and the reader.

>>> import pickle
>>> result = walk(pickle.dumps({"a": 1}, protocol=2))
>>> result.stopped, result.globals
(True, ())
"""

from __future__ import annotations

import _compat_pickle
import codecs
import fnmatch
import json
import struct
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

SAFE = "safe"
SUSPICIOUS = "suspicious"
DANGEROUS = "dangerous"
_RANK = {SAFE: 0, SUSPICIOUS: 1, DANGEROUS: 2}


def worst(verdicts: Any) -> str:
    """The most severe of some verdicts (``safe`` when there are none).

    >>> worst(["safe", "dangerous", "suspicious"])
    'dangerous'
    """
    return max(verdicts, key=_RANK.__getitem__, default=SAFE)


@dataclass(frozen=True)
class Allowlist:
    """The parsed allowlist: safe patterns, dangerous modules/names, dangerous bare names."""

    safe: dict[str, tuple[str, ...]]
    dangerous: dict[str, tuple[str, ...] | None]
    """module -> names, or None for the whole module and its submodules."""
    dangerous_names: frozenset[str]


@lru_cache(maxsize=1)
def load_allowlist() -> Allowlist:
    """Load ``sdforensics/data/pickle_allowlist.json`` (cached)."""
    text = resources.files("sdforensics").joinpath("data/pickle_allowlist.json").read_text("utf-8")
    raw = json.loads(text)
    if raw.get("schema") != "sdforensics.pickle_allowlist/1":
        raise ValueError("pickle_allowlist.json: unknown schema")
    safe = {m: tuple(v) for m, v in raw["safe"].items()}
    dangerous = {m: (None if v == "*" else tuple(v)) for m, v in raw["dangerous"].items()}
    return Allowlist(safe, dangerous, frozenset(raw["dangerous_names"]))


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Map a protocol 0-2 (Python 2) name the way the unpickler's ``fix_imports`` does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _rate(module: str, name: str, allow: Allowlist) -> str:
    qual = f"{module}.{name}"
    parts = qual.split(".")
    if any(p in allow.dangerous_names for p in name.split(".")):
        return DANGEROUS
    for i in range(1, len(parts)):
        mod, rest = ".".join(parts[:i]), ".".join(parts[i:])
        if mod not in allow.dangerous:
            continue
        names = allow.dangerous[mod]
        if names is None or any(rest == n or rest.startswith(n + ".") for n in names):
            return DANGEROUS
    if any(fnmatch.fnmatchcase(name, pat) for pat in allow.safe.get(module, ())):
        return SAFE
    return SUSPICIOUS


def verdict(module: str, name: str) -> str:
    """Rate the global ``module.name``: ``safe``, ``suspicious`` or ``dangerous``.

    Unknown globals are never safe; names that cannot be resolved (``unknown.unknown``)
    are dangerous. Python 2 names are rated under their Python 3 mapping too.

    >>> verdict("torch._utils", "_rebuild_tensor_v2"), verdict("os", "system"), verdict("a", "b")
    ('safe', 'dangerous', 'suspicious')
    """
    if module == "unknown" and name == "unknown":
        return DANGEROUS
    allow = load_allowlist()
    mapped = _py3_name(module, name)
    return worst([_rate(module, name, allow), _rate(*mapped, allow)])


@dataclass(frozen=True)
class Limits:
    """Bounds that make hostile pickles fail fast instead of exhausting memory or time."""

    max_opcodes: int = 1_000_000
    max_memo_index: int = 1_000_000
    max_mark_depth: int = 1_000
    max_depth: int = 200
    max_weight: int = 50_000_000
    """Objects reachable when shared references are expanded (a "billion laughs" bomb)."""
    deadline: float | None = None
    """``time.monotonic()`` past which the walk stops (over limit); None: no time bound."""

    @classmethod
    def for_contents(cls, n_records: int = 0, deadline: float | None = None) -> Limits:
        """Limits scaled to what the file declares: a torch zip of ``n_records`` members needs
        about 30 opcodes and 5 memo entries per storage (a ``torch.save`` of 40,000 tensors
        takes 1.3 M opcodes), so each record allows 64 more of both on top of the defaults.

        >>> Limits.for_contents(40_000).max_opcodes
        3560000
        """
        extra = 64 * max(n_records, 0)
        return cls(max_opcodes=1_000_000 + extra, max_memo_index=1_000_000 + extra, deadline=deadline)


@dataclass(frozen=True)
class FoundGlobal:
    """A global named by a pickle: where, how, and (``resolved=False``) whether we could tell."""

    module: str
    name: str
    opcode: str
    pos: int
    resolved: bool = True


@dataclass(frozen=True)
class WalkResult:
    """What :func:`walk` saw in one pickle starting at ``start``."""

    start: int
    end: int
    """Offset just after ``STOP`` (or where the walk broke)."""
    stopped: bool
    """True when the pickle ended with ``STOP`` and nothing was wrong."""
    error: str | None
    over_limit: bool
    globals: tuple[FoundGlobal, ...]
    n_opcodes: int
    protocol: int | None
    notes: tuple[str, ...]


class _Box:
    """A container on the simulated stack: its nesting depth and expanded object count."""

    __slots__ = ("depth", "weight")

    def __init__(self, depth: int, weight: int) -> None:
        self.depth, self.weight = depth, weight


def _weight(items: list[Any]) -> int:
    return sum(x.weight if isinstance(x, _Box) else 1 for x in items)


class _Stop(Exception):
    def __init__(self, msg: str, over_limit: bool = False) -> None:
        super().__init__(msg)
        self.over_limit = over_limit


_MARK = object()
_ANY = object()

# opcode byte -> (name, argument kind)
_OPS: dict[int, tuple[str, str]] = {}
for _code, _name, _arg in [
    ("(", "MARK", ""), (".", "STOP", ""), ("0", "POP", ""), ("1", "POP_MARK", ""), ("2", "DUP", ""),
    ("F", "FLOAT", "line"), ("I", "INT", "line"), ("J", "BININT", "4"), ("K", "BININT1", "1"),
    ("L", "LONG", "line"), ("M", "BININT2", "2"), ("N", "NONE", ""), ("P", "PERSID", "line"),
    ("Q", "BINPERSID", ""), ("R", "REDUCE", ""), ("S", "STRING", "line"), ("T", "BINSTRING", "s4"),
    ("U", "SHORT_BINSTRING", "s1"), ("V", "UNICODE", "line"), ("X", "BINUNICODE", "s4"),
    ("a", "APPEND", ""), ("b", "BUILD", ""), ("c", "GLOBAL", "line2"), ("d", "DICT", ""),
    ("}", "EMPTY_DICT", ""), ("e", "APPENDS", ""), ("g", "GET", "line"), ("h", "BINGET", "1"),
    ("i", "INST", "line2"), ("j", "LONG_BINGET", "4"), ("l", "LIST", ""), ("]", "EMPTY_LIST", ""),
    ("o", "OBJ", ""), ("p", "PUT", "line"), ("q", "BINPUT", "1"), ("r", "LONG_BINPUT", "4"),
    ("s", "SETITEM", ""), ("t", "TUPLE", ""), (")", "EMPTY_TUPLE", ""), ("u", "SETITEMS", ""),
    ("G", "BINFLOAT", "8"), ("\x80", "PROTO", "1"), ("\x81", "NEWOBJ", ""), ("\x82", "EXT1", "1"),
    ("\x83", "EXT2", "2"), ("\x84", "EXT4", "4"), ("\x85", "TUPLE1", ""), ("\x86", "TUPLE2", ""),
    ("\x87", "TUPLE3", ""), ("\x88", "NEWTRUE", ""), ("\x89", "NEWFALSE", ""), ("\x8a", "LONG1", "s1"),
    ("\x8b", "LONG4", "s4"), ("B", "BINBYTES", "s4"), ("C", "SHORT_BINBYTES", "s1"),
    ("\x8c", "SHORT_BINUNICODE", "s1"), ("\x8d", "BINUNICODE8", "s8"), ("\x8e", "BINBYTES8", "s8"),
    ("\x8f", "EMPTY_SET", ""), ("\x90", "ADDITEMS", ""), ("\x91", "FROZENSET", ""),
    ("\x92", "NEWOBJ_EX", ""), ("\x93", "STACK_GLOBAL", ""), ("\x94", "MEMOIZE", ""),
    ("\x95", "FRAME", "8"), ("\x96", "BYTEARRAY8", "s8"), ("\x97", "NEXT_BUFFER", ""),
    ("\x98", "READONLY_BUFFER", ""),
]:
    _OPS[ord(_code)] = (_name, _arg)

_PUSH_ANY = {"FLOAT", "INT", "BININT", "BININT1", "LONG", "BININT2", "NONE", "BINBYTES", "SHORT_BINBYTES",
             "BINBYTES8", "BYTEARRAY8", "EMPTY_DICT", "EMPTY_LIST", "NEWTRUE", "NEWFALSE", "LONG1", "LONG4",
             "BINFLOAT", "EMPTY_SET", "NEXT_BUFFER", "PERSID"}
_EMPTY = {"EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"}
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
            "BINUNICODE8"}
_POP_N = {"APPEND": 1, "SETITEM": 2, "BUILD": 1}
_POP_N_PUSH = {"BINPERSID": 1, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}
_TO_MARK_PUSH = {"DICT", "LIST", "OBJ", "INST"}
_TO_MARK = {"APPENDS", "SETITEMS", "ADDITEMS", "POP_MARK"}


def _decode_name(raw: bytes, notes: list[str], pos: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        notes.append(f"global name at byte {pos} is not valid UTF-8")
        return raw.decode("utf-8", "backslashreplace")


def _string_value(name: str, raw: bytes) -> str:
    if name == "STRING":
        body = raw.strip()
        if len(body) >= 2 and body[:1] == body[-1:] and body[:1] in (b"'", b'"'):
            body = body[1:-1]
        return codecs.escape_decode(body)[0].decode("latin-1")
    if name == "UNICODE":
        return raw.decode("raw-unicode-escape")
    if name in ("BINSTRING", "SHORT_BINSTRING"):
        return raw.decode("latin-1")
    return raw.decode("utf-8", "surrogatepass")


CLOCK_EVERY = 0x1000
"""Opcodes walked between two reads of the clock (``Limits.deadline``): reading it per opcode would
cost more than the walk."""
HIGHEST_PROTOCOL = 5
"""The newest pickle protocol Python knows; a higher ``PROTO`` is noted."""


def walk(data: bytes, start: int = 0, limits: Limits = Limits()) -> WalkResult:
    """Walk one pickle from ``start`` without running it; never raises on bad input.

    >>> import pickle, collections
    >>> r = walk(pickle.dumps(collections.OrderedDict(), protocol=4))
    >>> [(g.module, g.name, g.opcode) for g in r.globals]
    [('collections', 'OrderedDict', 'STACK_GLOBAL')]
    """
    w = _Walker(bytes(data), start, limits)
    try:
        while True:
            opname, arg = w.read_op()
            if opname == "STOP":
                return w.result(True, None, False)
            w.apply(opname, arg)
    except _Stop as stop:
        return w.result(False, str(stop), stop.over_limit)
    except (ValueError, struct.error, IndexError) as err:  # defensive: report, never raise
        return w.result(False, f"{w.opname} at byte {w.op_pos}: {err}", False)


class _Walker:
    """The state of one :func:`walk`: a simulated stack of placeholders, marks and memo, never objects.

    :meth:`read_op` decodes the next opcode and its argument, :meth:`apply` does to the stack what the
    opcode would, in groups (pushes, marks, globals, memo, stack moves, containers)."""

    def __init__(self, buf: bytes, start: int, limits: Limits) -> None:
        self.buf, self.size, self.start, self.limits = buf, len(buf), start, limits
        self.pos = start
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.found: list[FoundGlobal] = []
        self.notes: list[str] = []
        self.n = 0
        self.protocol: int | None = None
        self.opname = ""
        self.op_pos = start

    def result(self, stopped: bool, error: str | None, over_limit: bool) -> WalkResult:
        return WalkResult(self.start, self.pos, stopped, error, over_limit, tuple(self.found), self.n,
                          self.protocol, tuple(self.notes))

    # ------------------------------------------------------------------ decoding

    def _need(self, k: int, what: str) -> None:
        if k < 0 or self.pos + k > self.size:
            raise _Stop(f"{what} declares {k:,} bytes at byte {self.pos} but only {self.size - self.pos:,} remain",
                        over_limit=k > self.size)

    def read_op(self) -> tuple[str, Any]:
        """The next opcode's name and argument (bytes, int, a list of lines or None); checks the limits."""
        buf, limits = self.buf, self.limits
        if self.pos >= self.size:
            raise _Stop(f"pickle ends at byte {self.pos} without STOP")
        self.op_pos = self.pos
        code = buf[self.pos]
        self.pos += 1
        self.n += 1
        if self.n > limits.max_opcodes:
            raise _Stop(f"more than {limits.max_opcodes:,} opcodes", over_limit=True)
        if limits.deadline is not None and not self.n % CLOCK_EVERY and time.monotonic() > limits.deadline:
            raise _Stop(f"the time limit was reached at byte {self.op_pos}", over_limit=True)
        spec = _OPS.get(code)
        if spec is None:
            raise _Stop(f"unknown opcode 0x{code:02x} at byte {self.op_pos}")
        self.opname, kind = spec
        return self.opname, self._argument(self.opname, kind)

    def _argument(self, opname: str, kind: str) -> Any:
        buf = self.buf
        if kind == "":
            return None
        if kind in ("1", "2", "4", "8"):
            k = int(kind)
            self._need(k, opname)
            raw = buf[self.pos:self.pos + k]
            self.pos += k
            return raw if k == 8 else int.from_bytes(raw, "little", signed=opname == "BININT")
        if kind in ("s1", "s4", "s8"):
            k = int(kind[1])
            self._need(k, opname)
            length = int.from_bytes(buf[self.pos:self.pos + k], "little", signed=kind == "s4")
            self.pos += k
            self._need(length, opname)
            arg = buf[self.pos:self.pos + length] if opname in _STRINGS else None
            self.pos += length
            return arg
        lines = []  # one or two newline-terminated lines
        for _ in range(2 if kind == "line2" else 1):
            end = buf.find(b"\n", self.pos)
            if end < 0:
                raise _Stop(f"{opname} at byte {self.op_pos} has no end of line")
            lines.append(buf[self.pos:end])
            self.pos = end + 1
        return lines

    # ------------------------------------------------------------------ effects

    def apply(self, opname: str, arg: Any) -> None:
        """What ``opname`` does to the simulated stack (FRAME and READONLY_BUFFER change nothing we track)."""
        if opname in _PUSH_ANY:
            self.stack.append(_Box(0, 1) if opname in _EMPTY else _ANY)
        elif opname in _STRINGS:
            raw_s = arg[0] if isinstance(arg, list) else arg
            try:
                self.stack.append(_string_value(opname, raw_s))
            except (UnicodeDecodeError, ValueError):
                self.stack.append(_ANY)
        elif opname == "MARK":
            if len(self.marks) >= self.limits.max_mark_depth:
                raise _Stop(f"MARKs nested deeper than {self.limits.max_mark_depth}", over_limit=True)
            self.marks.append(len(self.stack))
        elif opname == "PROTO":
            self._proto(arg)
        elif opname in ("GLOBAL", "INST", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"):
            self._global(opname, arg)
        elif opname in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            self._put(opname, arg)
        elif opname in ("GET", "BINGET", "LONG_BINGET"):
            self._get(opname, arg)
        elif opname in ("POP", "DUP"):
            self._pop_or_dup(opname)
        else:
            self._container(opname)

    def _proto(self, arg: int) -> None:
        if self.protocol is not None or self.op_pos != self.start:
            self.notes.append(f"PROTO opcode repeated or not first (byte {self.op_pos})")
        self.protocol = arg
        if arg > HIGHEST_PROTOCOL:
            self.notes.append(f"unsupported pickle protocol {arg}")

    def _add_global(self, module: str, name: str, resolved: bool = True) -> Any:
        self.found.append(FoundGlobal(module, name, self.opname, self.op_pos, resolved))
        return _ANY

    def _global(self, opname: str, arg: Any) -> None:
        stack, op_pos = self.stack, self.op_pos
        if opname in ("GLOBAL", "INST"):
            self._add_global(_decode_name(arg[0], self.notes, op_pos), _decode_name(arg[1], self.notes, op_pos))
            if opname == "INST":
                self._pop_mark()
            stack.append(_ANY)
        elif opname == "STACK_GLOBAL":
            if len(stack) < 2:
                raise _Stop(f"STACK_GLOBAL at byte {op_pos} on a short stack")
            name_v, module_v = stack.pop(), stack.pop()
            if isinstance(name_v, str) and isinstance(module_v, str):
                self._add_global(module_v, name_v)
            else:
                self.notes.append(f"STACK_GLOBAL at byte {op_pos} takes operands that cannot be resolved")
                self._add_global("unknown", "unknown", resolved=False)
            stack.append(_ANY)
        else:  # EXT1/2/4
            self.notes.append(f"{opname} at byte {op_pos} names a global through the copyreg registry")
            stack.append(self._add_global("unknown", "unknown", resolved=False))

    def _put(self, opname: str, arg: Any) -> None:
        if opname == "PUT":
            try:
                idx = int(arg[0])
            except ValueError as err:
                raise _Stop(f"PUT at byte {self.op_pos} has a bad index") from err
        else:
            idx = len(self.memo) if opname == "MEMOIZE" else arg
        if idx < 0 or idx > self.limits.max_memo_index:
            raise _Stop(f"memo index {idx:,} at byte {self.op_pos} is over the limit", over_limit=True)
        if not self.stack or (self.marks and self.marks[-1] == len(self.stack)):
            raise _Stop(f"{opname} at byte {self.op_pos} on an empty stack")
        self.memo[idx] = self.stack[-1]

    def _get(self, opname: str, arg: Any) -> None:
        try:
            idx = int(arg[0]) if opname == "GET" else arg
        except ValueError as err:
            raise _Stop(f"GET at byte {self.op_pos} has a bad index") from err
        if idx not in self.memo:
            raise _Stop(f"{opname} at byte {self.op_pos} reads memo key {idx}, which was never set")
        self.stack.append(self.memo[idx])

    def _pop_or_dup(self, opname: str) -> None:
        stack, marks = self.stack, self.marks
        if opname == "DUP":
            if not stack:
                raise _Stop(f"DUP at byte {self.op_pos} on an empty stack")
            stack.append(stack[-1])
        elif stack and not (marks and marks[-1] == len(stack)):
            stack.pop()
        elif marks:
            marks.pop()
        else:
            raise _Stop(f"POP at byte {self.op_pos} on an empty stack")

    def _container(self, opname: str) -> None:
        stack, marks = self.stack, self.marks
        if opname == "EMPTY_TUPLE":
            stack.append(_Box(1, 1))
        elif opname in ("TUPLE1", "TUPLE2", "TUPLE3"):
            k = int(opname[-1])
            if len(stack) - (marks[-1] if marks else 0) < k:
                raise _Stop(f"{opname} at byte {self.op_pos} on a short stack")
            items = stack[-k:]
            del stack[-k:]
            stack.append(self._box(items))
        elif opname in ("TUPLE", "FROZENSET") or opname in _TO_MARK_PUSH:
            stack.append(self._box(self._pop_mark()))
        elif opname in _TO_MARK:
            items = self._pop_mark()
            if opname != "POP_MARK" and stack:
                self._grow(stack[-1], items)
        elif opname in _POP_N or opname in _POP_N_PUSH:
            k = _POP_N.get(opname) or _POP_N_PUSH[opname]
            floor = marks[-1] if marks else 0
            if len(stack) - floor < k + (opname in _POP_N):
                raise _Stop(f"{opname} at byte {self.op_pos} on a short stack")
            items = stack[-k:]
            del stack[-k:]
            if opname in _POP_N_PUSH:
                stack.append(self._box(items))
            else:
                self._grow(stack[-1], items)

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Stop(f"{self.opname} at byte {self.op_pos} without a MARK")
        m = self.marks.pop()
        items = self.stack[m:]
        del self.stack[m:]
        return items

    def _box(self, items: list[Any]) -> _Box:
        return self._grow(_Box(1, 1), items)

    def _grow(self, target: Any, items: list[Any]) -> Any:
        limits = self.limits
        if isinstance(target, _Box):
            target.weight += _weight(items)
            target.depth = max(target.depth, 1 + max((x.depth for x in items if isinstance(x, _Box)), default=0))
            if target.depth > limits.max_depth:
                raise _Stop(f"containers nested deeper than {limits.max_depth} at byte {self.op_pos}", True)
            if target.weight > limits.max_weight:
                raise _Stop(f"shared references expand to over {limits.max_weight:,} objects at byte "
                            f"{self.op_pos} (a 'billion laughs' bomb)", over_limit=True)
        return target


def walk_all(data: bytes, limits: Limits = Limits(), max_pickles: int = 64) -> list[WalkResult]:
    """Walk consecutive pickles (legacy torch files hold five) until the data ends or one breaks."""
    results: list[WalkResult] = []
    pos = 0
    while (pos < len(data) or not results) and len(results) < max_pickles:
        r = walk(data, pos, limits)
        results.append(r)
        if not r.stopped:
            break
        pos = r.end
    return results
