"""The scan corpus: hostile and legitimate checkpoints, generated here (nothing binary committed).

Every file is built by code: the BAD_INPUTS pickle cases of :mod:`hostile_pickles`, the defects
of issue 20, the published bypass classes of picklescan, modelscan and fickling (callables
outside their denylists, nested loaders, zip differentials, polyglots), and legitimate
checkpoints written by ``torch.save`` itself. Each payload only creates its own marker file
(``<name>.MARKER`` beside it), so whether a file runs code under
``torch.load(weights_only=False)`` is *checked*, by :func:`check_runs` (one subprocess that
forks once per file, in the corpus folder), not assumed.

Used by ``tests/readers/test_scan_corpus.py`` and ``bench/scanners.py``::

    python tests/scan_corpus.py DIR          # write the corpus into DIR, print its manifest (JSON)
    python tests/scan_corpus.py --check DIR  # load each file with torch.load, print {name: ran code}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import pickle
import signal
import struct
import sys
import tarfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile_pickles import (  # noqa: E402
    CASES,
    GOOD_STORAGES,
    Entry,
    G,
    R,
    dumps,
    good_state_pickle,
    make_zip,
    py_code,
    sd1_checkpoint,
    system_call,
    torch_zip,
)


@dataclass(frozen=True)
class Item:
    """One corpus file: ``legit`` files must scan clean (exit 0), every other one non-zero."""

    name: str
    suffix: str
    build: Callable[[Path], bytes]
    """Bytes of the file, given the marker path its payload may create."""
    legit: bool
    group: str
    """Where the class comes from: ``bad-inputs``, ``issue-20``, ``bypass`` or ``legit``."""
    runs: bool | None = None
    """Whether it runs code under torch.load on this Python (None: not stated, only checked)."""


def _z(pkl: bytes) -> bytes:
    return torch_zip(pkl, GOOD_STORAGES)


def _sh(m: Path) -> str:
    return f"touch {m}"


def _chain(resolver: G, dotted: str, m: Path) -> bytes:
    """``resolver(dotted)(touch marker)``: a resolver that returns a callable, called by a second REDUCE."""
    return dumps(R(R(resolver, (dotted,)), (_sh(m),)))


def _torch_save(obj: object, **kw: object) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def _rename_main(blob: bytes, new: str) -> bytes:
    """A torch zip whose data.pkl is stored under another spelling (same length keeps offsets)."""
    old = b"archive/data.pkl"
    assert len(new) == len(old)
    return blob.replace(old, new.encode())


def _deflated_bomb(m: Path) -> bytes:
    """data.pkl deflated: 70 MB of bytes (inflating past the 64 MB member cap), then the payload."""
    pkl = b"\x80\x02\x8e" + struct.pack("<Q", 70 << 20) + b"\x00" * (70 << 20) + b"0" + dumps(system_call(m))[2:]
    return make_zip([Entry("archive/data.pkl", pkl, method=8), Entry("archive/data/0", GOOD_STORAGES["0"]),
                     Entry("archive/version", b"3\n")])


def _many_entries_one_member(_m: Path, n: int = 2000) -> bytes:
    """n central-directory entries that all point at one 64 MB deflated member (defect 5)."""
    payload = zlib.compress(b"\x00" * (64 << 20), 9)[2:-4]
    crc = zlib.crc32(b"\x00" * (64 << 20))
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x800, 8, 0, 0x21, crc, len(payload), 64 << 20, 16, 0)
    out = bytearray(local + b"archive/data.pkl" + payload)
    central = bytearray()
    for i in range(n):
        name = f"archive/x{i:05d}.pkl".encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x800, 8, 0, 0x21, crc, len(payload),
                               64 << 20, len(name), 0, 0, 0, 0, 0, 0) + name
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0)
    return bytes(out + central + eocd)


def _tar_format(m: Path) -> bytes:
    """torch 0.1.x tar checkpoint whose ``storages`` member is a payload (torch unpickles it first)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("sys_info", pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                                      "type_sizes": {"short": 2, "int": 4, "long": 4}})),
                           ("pickle", pickle.dumps({})), ("storages", dumps(system_call(m))),
                           ("tensors", pickle.dumps(0))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _safetensors_pickle_polyglot(m: Path) -> bytes:
    """Sniffs as safetensors (8-byte length, then ``{``) but torch.load unpickles it: BINFLOAT eats
    the 8 bytes after ``G``, whose last one is the ``{``."""
    head = b"G" + b"\x00" * 7 + b"{"
    pkl = b"0" + dumps(system_call(m))[2:]  # POP the float, then the payload
    return head + pkl


def _items() -> list[Item]:
    items: list[Item] = []
    for case in CASES:  # BAD_INPUTS 16-30 (their own scan verdicts are in test_scan.py)
        items.append(Item(case.name, case.suffix, case.build, case.scan == "clean", "bad-inputs"))

    def add(name: str, build: Callable[[Path], bytes], runs: bool | None = True, suffix: str = ".ckpt",
            group: str = "issue-20") -> None:
        items.append(Item(name, suffix, build, False, group, runs))

    # issue 20, defect 1: the pickle under another case
    add("d1_DATA_PKL_upper", lambda m: _rename_main(_z(dumps(system_call(m))), "archive/DATA.PKL"))
    add("d1_Data_Pkl_mixed", lambda m: _rename_main(_z(dumps(system_call(m))), "archive/Data.Pkl"))
    add("d1_two_candidates", lambda m: make_zip([
        Entry("archive/data.pkl", good_state_pickle()), Entry("archive/DATA.pkl", dumps(system_call(m))),
        Entry("archive/data/0", GOOD_STORAGES["0"]), Entry("archive/version", b"3\n")]), runs=None)
    # defect 2: incomplete walks, first bytes that do not look like a pickle
    add("d2_memo_2M", lambda m: b"\x80\x02Nr" + struct.pack("<I", 2_000_000) + b"0" + dumps(system_call(m))[2:])
    add("d2_deflated_past_cap", _deflated_bomb)
    add("d2_starts_K", lambda m: b"K\x010" + dumps(system_call(m))[2:])
    add("d2_starts_proto1", lambda m: b"\x80\x01" + dumps(system_call(m))[2:])
    add("d2_starts_newtrue", lambda m: b"\x880" + dumps(system_call(m))[2:])
    # defect 3: the tar format
    add("d3_tar_format", _tar_format, suffix=".pt")
    # defect 4: code-running globals outside the old denylist
    add("d4_logging_dictConfig", lambda m: _z(dumps(R(G("logging.config", "dictConfig"), ({
        "version": 1, "handlers": {"h": {"class": "logging.FileHandler", "filename": str(m)}},
        "root": {"handlers": ["h"]}},)))))
    add("d4_logging_resolve", lambda m: _z(_chain(G("logging.config", "_resolve"), "os.system", m)))
    add("d4_import_dotted_name", lambda m: _z(_chain(G("torch._utils", "_import_dotted_name"), "os.system", m)))
    add("d4_uuid_get_command_stdout", lambda m: _z(dumps(R(G("uuid", "_get_command_stdout"), ("touch", str(m))))))
    add("d4_osx_support_read_output", lambda m: _z(dumps(R(G("_osx_support", "_read_output"), (_sh(m),)))))
    add("d4_typing_eval_type", lambda m: _z(dumps(R(G("typing", "_eval_type"), (
        R(G("typing", "ForwardRef"), (f"__import__('os').system({_sh(m)!r})",)), None, None)))))
    add("d4_dataclasses_create_fn", lambda m: _z(dumps(R(R(G("dataclasses", "_create_fn"), (
        "f", [], [py_code(m)])), ()))))
    add("d4_os_spawnlp", lambda m: _z(dumps(R(G("os", "spawnlp"), (0, "touch", "touch", str(m))))))
    add("d4_os_posix_spawnp", lambda m: _z(dumps(R(G("os", "posix_spawnp"), ("touch", ["touch", str(m)], {})))))
    add("d4_codecs_open", lambda m: _z(dumps(R(G("codecs", "open"), (str(m), "w")))))
    # defect 5: a zip bomb of many entries (runs nothing; must be refused fast)
    add("d5_2000_entries_one_member", _many_entries_one_member, runs=False)
    # published bypass classes (picklescan / modelscan / fickling advisories and issues)
    add("b_torch_load_from_bytes", lambda m: _z(dumps(R(G("torch.storage", "_load_from_bytes"),
                                                       (_z(dumps(system_call(m))),)))), group="bypass")
    add("b_torch_dotted_os_system", lambda m: dumps(R(G("torch", "os.system", "STACK"), (_sh(m),)), 4),
        group="bypass")
    add("b_pickle_loads_nested", lambda m: _z(dumps(R(G("pickle", "loads"), (dumps(system_call(m)),)))),
        group="bypass")
    add("b_cprofile_run", lambda m: _z(dumps(R(G("cProfile", "run"), (py_code(m),)))), group="bypass")
    add("b_profile_run", lambda m: _z(dumps(R(G("profile", "run"), (py_code(m),)))), group="bypass")
    add("b_timeit", lambda m: _z(dumps(R(G("timeit", "timeit"), (py_code(m), "pass", G("time", "perf_counter"),
                                                                1)))), group="bypass")
    add("b_pydoc_pipepager", lambda m: _z(dumps(R(G("pydoc", "pipepager"), ("x", _sh(m))))), group="bypass")
    add("b_imaplib_stream", lambda m: _z(dumps(R(G("imaplib", "IMAP4_stream"), (_sh(m),)))), group="bypass")
    add("b_collect_env_run", lambda m: _z(dumps(R(G("torch.utils.collect_env", "run"), (_sh(m),)))),
        group="bypass")
    add("b_io_fileio", lambda m: _z(dumps(R(G("_io", "FileIO"), (str(m), "w")))), group="bypass")
    add("b_builtins_open", lambda m: _z(dumps(R(G("builtins", "open"), (str(m), "w")))), group="bypass")
    add("b_subprocess_run", lambda m: _z(dumps(R(G("subprocess", "run"), (["touch", str(m)],)))), group="bypass")
    add("b_ensurepip_run_pip", lambda m: _z(dumps(R(G("ensurepip", "_run_pip"), (["--version"],)))), runs=False,
        group="bypass")
    add("b_getattr_import_chain", lambda m: _z(dumps(R(R(G("builtins", "getattr"), (
        R(G("builtins", "__import__"), ("os",)), "system")), (_sh(m),)))), group="bypass")
    add("b_memo_stack_global", lambda m: _z(b"\x80\x04" + b"\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93"
                                           + dumps((_sh(m),))[2:-1] + b"R."), group="bypass")
    add("b_popped_call_result", lambda m: _z(b"\x80\x02" + dumps(system_call(m))[2:-1] + b"0}."), group="bypass")
    add("b_bad_crc", lambda m: make_zip([Entry("archive/data.pkl", dumps(system_call(m)), crc=0x1234),
                                         Entry("archive/version", b"3\n")]), group="bypass")
    add("b_local_name_mismatch", lambda m: make_zip([
        Entry("archive/data.pkl", dumps(system_call(m)), local_name="archive/data.txt"),
        Entry("archive/version", b"3\n")]), group="bypass")
    add("b_encrypted_flag", lambda m: make_zip([Entry("archive/data.pkl", dumps(system_call(m)), flags=0x801),
                                               Entry("archive/version", b"3\n")]), runs=False, group="bypass")
    add("b_pickle_then_zip_polyglot", lambda m: dumps(system_call(m)) + _z(good_state_pickle()), group="bypass")
    # torch 2.13 sniffs the safetensors header and refuses it; pickle.load runs it
    add("b_safetensors_pickle_polyglot", _safetensors_pickle_polyglot, runs=False, suffix=".safetensors",
        group="bypass")
    add("b_payload_in_storage_member", lambda m: torch_zip(good_state_pickle(), {"0": dumps(system_call(m), 4)}),
        runs=False, group="bypass")
    # modelscan issue 85: BUILD sets attributes of an allowed global to strings, fetched back as
    # globals and fed to STACK_GLOBAL through the memo
    add("b_build_setattr_stack_global", lambda m: _z(
        b"\x80\x04cnumpy\nprod\nN(Va\nVos\nd\x86bN(Vb\nVsystem\nd\x86b0"
        b"cnumpy\nprod.a\np0\ncnumpy\nprod.b\np1\n00g0\ng1\n\x93" + dumps((_sh(m),))[2:-1] + b"R."),
        group="bypass")
    # picklescan PR 69 / modelscan PR 346: mailcap.findmatch runs an entry's test command
    add("b_mailcap_findmatch", lambda m: _z(dumps(R(G("mailcap", "findmatch"), (
        {"text/plain": [{"view": "cat %s", "test": _sh(m)}]}, "text/plain")))), group="bypass")
    add("b_bin_suffix", lambda m: _z(dumps(system_call(m))), suffix=".bin", group="bypass")
    # picklescan #66 / #74 (GHSA-vvpj-8cmc-gx39 follow-up): resolvers that return any callable
    add("b_importlib_getattr_chain", lambda m: _z(dumps(R(R(G("builtins", "getattr"), (
        R(G("importlib", "import_module"), ("os",)), "system")), (_sh(m),)))), group="bypass")
    add("b_pkgutil_resolve_name", lambda m: _z(_chain(G("pkgutil", "resolve_name"), "os.system", m)), group="bypass")
    add("b_marshal_function", lambda m: _z(dumps(R(R(G("types", "FunctionType"), (
        R(G("marshal", "loads"), (_marshalled(m),)), {})), ()))), group="bypass")
    # GHSA-m273-6v24-x4m4 / GHSA-955r-x9j8-7rhh (fickling #210): operator.* on a module object
    add("b_operator_methodcaller", lambda m: _z(dumps(R(R(G("operator", "methodcaller"), ("system", _sh(m))), (
        R(G("importlib", "import_module"), ("os",)),)))), group="bypass")
    add("b_operator_attrgetter", lambda m: _z(dumps(R(R(R(G("_operator", "attrgetter"), ("system",)), (
        R(G("importlib", "import_module"), ("os",)),)), (_sh(m),)))), group="bypass")
    # fickling #210: functools.partial wrapper; runpy / shutil / venv (picklescan #29, modelscan #198)
    add("b_functools_partial", lambda m: _z(dumps(R(R(G("functools", "partial"), (G("posix", "system"), _sh(m))),
                                                    ()))), group="bypass")
    add("b_runpy_run_code", lambda m: _z(dumps(R(G("runpy", "_run_code"), (py_code(m), {})))), group="bypass")
    add("b_shutil_copyfile", lambda m: _z(dumps(R(G("shutil", "copyfile"), (os.devnull, str(m))))), group="bypass")
    add("b_venv_create", lambda m: _z(dumps(R(G("venv", "create"), (str(m),)))), group="bypass")

    # legitimate files (written by torch.save itself where possible)
    def legit(name: str, build: Callable[[Path], bytes], suffix: str = ".ckpt") -> None:
        items.append(Item(name, suffix, build, True, "legit", False))

    def state() -> OrderedDict[str, object]:
        import torch

        return OrderedDict([("w", torch.ones(2, 3)), ("b", torch.zeros(3, dtype=torch.float16))])

    legit("l_torch_save", lambda m: _torch_save(state()))
    legit("l_torch_save_proto4", lambda m: _torch_save(state(), pickle_protocol=4))
    legit("l_torch_save_legacy", lambda m: _torch_save(state(), _use_new_zipfile_serialization=False))
    legit("l_torch_save_legacy_proto4", lambda m: _torch_save(state(), _use_new_zipfile_serialization=False,
                                                              pickle_protocol=4))
    legit("l_lightning_handmade", lambda m: sd1_checkpoint()[0])

    def lightning_like(m: Path) -> bytes:
        import argparse

        import numpy as np

        return _torch_save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.1.0",
                            "state_dict": state(), "hyper_parameters": {"lr": 1e-4},
                            "hparams": argparse.Namespace(lr=1e-4, out=pathlib.PurePosixPath("/tmp/x")),
                            "best": np.float64(0.5), "n": np.int64(3), "path": pathlib.PosixPath("/logs"),
                            "ema": OrderedDict(decay=0.999)})

    legit("l_lightning_like_torch_save", lightning_like)
    legit("l_numpy_scalars", lambda m: _torch_save({"s": state(), "a": __import__("numpy").float32(1.5)}),
          suffix=".pt")
    legit("l_ordered_dict_p2", lambda m: _torch_save(OrderedDict(state()), pickle_protocol=2), suffix=".pth")
    legit("l_safetensors", lambda m: _safetensors_bytes())
    legit("l_plain_dict_bin", lambda m: _torch_save({"state_dict": state(), "step": 5}), suffix=".bin")
    return items


def _marshalled(m: Path) -> bytes:
    import marshal

    return marshal.dumps(compile(py_code(m), "<payload>", "exec"))


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * 8


CORPUS: tuple[Item, ...] = tuple(_items())


def write_corpus(folder: Path, items: tuple[Item, ...] = CORPUS) -> dict[str, Path]:
    """Write every item into ``folder``; returns name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for it in items:
        path = folder / f"{it.name}{it.suffix}"
        path.write_bytes(it.build(folder / f"{it.name}.MARKER"))
        out[it.name] = path
    return out


def _load_one(path: Path) -> None:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    with contextlib.suppress(BaseException):  # only whether the marker appears matters
        torch.load(path, weights_only=False, map_location="cpu")


def check_runs(folder: Path, names: list[str], suffixes: dict[str, str], timeout: float = 30.0) -> dict[str, bool]:
    """For each file, whether ``torch.load(weights_only=False)`` makes its payload create its marker.

    Run in the caller's process: import torch once, then fork per file (the child chdirs into
    ``folder``, loads, exits); a child past ``timeout`` is killed. Call it in a subprocess.
    """
    import time

    import torch  # noqa: F401 - imported once, before forking

    result = {}
    for name in names:
        marker = folder / f"{name}.MARKER"
        pid = os.fork()
        if pid == 0:
            os.chdir(folder)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # payload output (pip, shells) must not reach our stdout
                os.dup2(null, fd)
            try:
                _load_one(folder / f"{name}{suffixes[name]}")
            finally:
                os._exit(0)
        deadline = time.monotonic() + timeout
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        result[name] = marker.exists()
    time.sleep(0.3)  # payloads that spawn a child (posix_spawn, Popen) finish a moment later
    return {name: ran or (folder / f"{name}.MARKER").exists() for name, ran in result.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--check", action="store_true", help="load each written file with torch.load")
    args = ap.parse_args()
    if args.check:
        manifest = json.loads((args.folder / "manifest.json").read_text())
        suffixes = {it["name"]: it["suffix"] for it in manifest}
        print(json.dumps(check_runs(args.folder, [it["name"] for it in manifest], suffixes)))
        return
    write_corpus(args.folder)
    manifest = [{"name": it.name, "suffix": it.suffix, "legit": it.legit, "group": it.group, "runs": it.runs}
                for it in CORPUS]
    (args.folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
