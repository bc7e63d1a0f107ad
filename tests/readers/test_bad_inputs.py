"""Every case of ../shared/BAD_INPUTS.md (1-35), generated here, run through ``sdf analyze``.

Each file must give exit 0 with a finding (``problems`` in the JSON report) or exit 2 with
exactly one ``error:`` line on stderr: no traceback, no "bug in sdforensics", under 10 s, and no
planted payload run (its marker file never appears). Memory bombs run in a subprocess capped
at 2 GB of address space (``RLIMIT_AS``). Generators of tests/hostile_pickles.py (cases 16-30)
and tests/readers/test_safetensors_hostile.py (cases 1-15) are reused; the rest are built here.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import empty_library, sdf
from fuzz_targets import _tiny_sd1, st_bytes, to_zip64
from hostile_pickles import CASES as PICKLE_CASES
from hostile_pickles import GOOD_STORAGES, Entry, good_state_pickle, make_zip, sd1_checkpoint, torch_zip
from test_safetensors_hostile import BAD as ST_BAD
from test_safetensors_hostile import GOOD, f32, st

SPEC = Path(__file__).resolve().parents[3] / "shared" / "BAD_INPUTS.md"
if not SPEC.exists():
    SPEC = Path("/work/shared/BAD_INPUTS.md")
MEMORY_CAP = 2 << 30

Built = tuple[Path, Path | None]
"""(what to analyse, marker file a payload would create, or None)."""


@dataclass(frozen=True)
class Bad:
    number: int
    name: str
    build: Callable[[Path], Built]
    expect: int | None = None
    """0 or 2 when the outcome is known; None: either, as long as it is clean."""
    heavy: bool = False
    """Run in a subprocess under a 2 GB address-space cap."""
    known_bug: str = ""
    """A reported, not yet fixed bug: the case is a strict xfail until it is fixed."""

    @property
    def id(self) -> str:
        return f"{self.number:02d}-{self.name}"


def _file(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        path = tmp / name
        path.write_bytes(data() if callable(data) else data)
        return path, None

    return build


# ---------------------------------------------------------------------------- safetensors 1-15

ST_NUMBERS = {
    1: ["empty", "shorter_than_8"],
    2: ["header_len_beyond_file", "header_len_2_63", "header_len_over_cap"],
    3: ["header_not_utf8", "header_bom", "header_nul_padding"],
    4: ["header_array", "header_truncated_json", "header_trailing_garbage", "header_deep_nesting"],
    5: ["duplicate_name_same", "duplicate_name_other_offsets", "duplicate_metadata"],
    6: ["metadata_not_object"],
    7: ["unknown_dtype", "lowercase_dtype", "missing_dtype", "missing_shape", "missing_offsets"],
    8: ["negative_shape", "float_shape", "bool_shape", "huge_offset", "nan_literal"],
    9: ["overlap", "aliasing_dos", "gap", "end_before_begin", "first_not_at_zero"],
    10: ["size_mismatch", "shape_overflow"],
    11: ["missing_bytes_at_end"],
}


def _nonfinite(dtype: str) -> bytes:
    import torch

    dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn,
          "F8_E5M2": torch.float8_e5m2}[dtype]
    values = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1e-40, -0.0, 1.0, 2.0]).to(dt)
    raw = values.view(torch.uint8).numpy().tobytes()
    return st_bytes([(f"w.{dtype}", dtype, (8,), raw), ("zeros", dtype, (4,), b"\0" * (len(raw) // 2))])


def _safetensors_cases() -> list[Bad]:
    out = [Bad(n, name, _file(f"{name}.safetensors", ST_BAD[name]), 2) for n, names in ST_NUMBERS.items()
           for name in names]
    z8 = b"\0" * 8
    out += [
        Bad(6, "metadata_int_and_nested", _file("m.safetensors", st({"__metadata__": {"n": 3, "o": {"a": 1}},
                                                                    **f32("a", [2], 0, 8)}, z8)), 0),
        Bad(6, "metadata_90MB_string", _file("big.safetensors", lambda: st({"__metadata__": {"x": "a" * (90 << 20)},
                                                                           **f32("a", [2], 0, 8)}, z8)),
            heavy=True),
        Bad(7, "extra_unknown_fields", _file("x.safetensors", st({"a": {"dtype": "F32", "shape": [2],
                                                                        "data_offsets": [0, 8], "evil": 1}}, z8)), 0),
        Bad(8, "infinity_literal", _file("i.safetensors", st('{"a":{"dtype":"F32","shape":[Infinity],'
                                                             '"data_offsets":[0,8]}}', z8)), 2),
        Bad(8, "true_offset", _file("t.safetensors", st(f32("a", [2], True, 8), z8)), 2),
        Bad(8, "offset_over_2_64", _file("o.safetensors", st(f32("a", [2], 2**64 + 1, 2**64 + 9), z8)), 2),
        Bad(10, "odd_element_F4", _file("f4.safetensors", st({"a": {"dtype": "F4", "shape": [3],
                                                                    "data_offsets": [0, 2]}}, b"\0\0")), 2),
        Bad(10, "odd_element_F6", _file("f6.safetensors", st({"a": {"dtype": "F6_E3M2", "shape": [3],
                                                                    "data_offsets": [0, 3]}}, b"\0" * 3)), 2),
        Bad(11, "appended_zip", _file("z.safetensors", st(GOOD, b"\0" * 16 + make_zip([Entry("x", b"y")]))), 0),
        Bad(11, "appended_pdf", _file("p.safetensors", st(GOOD, b"\0" * 16 + b"%PDF-1.4\n%%EOF\n")), 0),
        Bad(12, "zero_dim_and_scalar", _file("z.safetensors", st({**f32("empty", [2, 0], 0, 0),
                                                                  **f32("scalar", [], 0, 4)}, b"\0" * 4)), 0),
    ]
    out += [Bad(13, f"nonfinite_{d}", _file(f"{d}.safetensors", _nonfinite(d)), 0)
            for d in ("F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")]
    out += [
        Bad(14, "million_tiny_tensors", _file("many.safetensors", _million), heavy=True),
        Bad(14, "name_1MB", _file("n.safetensors", lambda: st(f32("n" * (1 << 20), [2], 0, 8), z8)), 0),
        Bad(14, "control_chars_and_dotdot", _file("c.safetensors", st({**f32("a\x1b[2J\x07\r", [2], 0, 8),
                                                                      **f32("../../etc/passwd", [2], 8, 16)},
                                                                     b"\0" * 16)), 0),
        Bad(15, "truncated_inside_tensor", _file("t.safetensors", st(GOOD, b"\0" * 12)), 2),
        Bad(15, "directory_named_safetensors", _dir_named, 2),
    ]
    return out


def _million() -> bytes:
    n = 1_000_000
    parts = ",".join(f'"t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{i + 1}]}}' for i in range(n))
    raw = ("{" + parts + "}").encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * n


def _dir_named(tmp: Path) -> Built:
    path = tmp / "model.safetensors"
    path.mkdir()
    return path, None


# ------------------------------------------------------------------------------- pickles 16-30

PICKLE_NUMBERS = [
    (16, r"^(os_system_|reduce_)"), (17, r"^(stack_global|inst_|obj_)"), (18, r"^memo_"),
    (19, r"^(importlib|pkgutil|operator|functools|inspect|popped)"), (20, r"^nested_"),
    (21, r"^(broken_after|early_eof)"), (22, r"^(non_utf8|unknown_opcode|proto_twice|not_pickle)"),
    (23, r"^(binbytes8|binunicode8|billion|ten_million|deep_|huge_memo)"), (24, r"^(legacy_|tar_format)"),
    (25, r"^(crc_|zip_flag|local_central|duplicate_data|two_data|pickle_hidden|pickle_member|truncated_central|"
         r"prepended)"),
    (26, r"^(deflate_bomb|declared_size)"), (27, r"^path_traversal"), (28, r"^(safetensors_named|ckpt_that)"),
    (29, r"^torchscript"), (30, r"^(missing_storage|storage_too_small|offset_past|negative_stride)"),
]


def _number_of(case_name: str) -> int:
    for n, pattern in PICKLE_NUMBERS:
        if re.search(pattern, case_name):
            return n
    raise AssertionError(f"hostile_pickles case {case_name} has no BAD_INPUTS number")


def _pickle_case(case: Any) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        marker = tmp / f"{case.name}.MARKER"
        path = tmp / f"{case.name}{case.suffix}"
        path.write_bytes(case.build(marker))
        return path, marker

    return build


def _deflate_bomb() -> bytes:
    """A lone ``archive/data.pkl`` deflated 1000:1, declaring 200 MB."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    payload = b"".join(comp.compress(chunk) for _ in range(200)) + comp.flush()
    name = b"archive/data.pkl"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0x800, 8, 0, 0x21, 0, len(payload), 200 << 20,
                        len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0x800, 8, 0, 0x21, 0, len(payload), 200 << 20,
                          len(name), 0, 0, 0, 0, 0, 0) + name
    body = local + payload
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(body), 0)
    return body + central + eocd


def _nested_archive(kind: bytes) -> Callable[[], bytes]:
    return lambda: torch_zip(good_state_pickle(), GOOD_STORAGES, extra=[Entry("archive/inner.bin", kind)])


def _pickle_cases() -> list[Bad]:
    out = []
    for case in PICKLE_CASES:
        n = _number_of(case.name)
        heavy = n in (23, 26) or case.name in ("deep_marks",)
        expect = 2 if case.error == "UnsafeFileError" else None  # the others: sniffing may read them fine
        out.append(Bad(n, case.name, _pickle_case(case), expect, heavy))
    good = torch_zip(good_state_pickle(), GOOD_STORAGES)
    out += [
        Bad(16, "torch_save_of_os_system", _torch_save_evil, 2),
        Bad(25, "zip64_end_record", _file("z64.ckpt", to_zip64(good)), None),
        Bad(25, "appended_blob", _file("app.ckpt", good + b"\0" * 100 + b"%PDF-1.4"), None),
        Bad(26, "deflate_bomb_200MB_pickle", _file("bomb.ckpt", _deflate_bomb), 2, heavy=True),
        Bad(27, "nested_zip", _file("nz.ckpt", _nested_archive(make_zip([Entry("a/data.pkl", b"N.")]))), None),
        Bad(27, "nested_7z", _file("n7.ckpt", _nested_archive(b"7z\xbc\xaf\x27\x1c" + b"\0" * 26)), None),
        Bad(28, "safetensors_that_is_a_zip", _file("zip.safetensors", good), None),
        Bad(28, "safetensors_that_is_lightning_ckpt", _file("l.safetensors", lambda: sd1_checkpoint()[0]), 0),
        Bad(28, "ckpt_that_is_valid_safetensors", _file("s.ckpt", st(GOOD, b"\0" * 16)), 0),
        Bad(29, "torchscript_jit_save", _jit_save, 2),
        Bad(30, "storage_key_traversal", _file("k.ckpt", _storage_key_traversal), 2),
        Bad(30, "zero_stride_4GB_view", _file("zs.ckpt", _zero_stride), 2, heavy=True,
),
    ]
    return out


def _torch_save_evil(tmp: Path) -> Built:
    import pickle

    marker = tmp / "MARKER"

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    path = tmp / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": Evil()}, protocol=2))
    return path, marker


def _jit_save(tmp: Path) -> Built:
    import torch

    path = tmp / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path, None


def _zero_stride() -> bytes:
    from hostile_pickles import OD, dumps, tensor

    return torch_zip(dumps(OD([("w", tensor("0", "FloatStorage", 4, (2**30,), stride=(0,)))])), GOOD_STORAGES)


def _storage_key_traversal() -> bytes:
    from hostile_pickles import OD, dumps, tensor

    pkl = dumps(OD([("w", tensor("../../etc/passwd", "FloatStorage", 4, (2, 2)))]))
    return torch_zip(pkl, {})


# --------------------------------------------------------------------------- diffusers 31-32, 35


def _pipeline(tmp: Path) -> Path:
    from sdforensics.synth.diffusers import write_diffusers

    return write_diffusers(_tiny_sd1(), "sd1", tmp / "pipe")


def _weights(folder: Path, comp: str = "unet") -> Path:
    return folder / comp / "diffusion_pytorch_model.safetensors"


def _symlink_out(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    _weights(folder).unlink()
    os.symlink("/etc/passwd", _weights(folder))
    return folder, None


def _symlink_loop(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    w = _weights(folder)
    w.unlink()
    os.symlink(w.parent / "loop_b", w)
    os.symlink(w, w.parent / "loop_b")
    return folder, None


def _fifo(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    _weights(folder, "vae").unlink()
    os.mkfifo(_weights(folder, "vae"))
    return folder, None


def _fifo_config(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    (folder / "model_index.json").unlink()
    os.mkfifo(folder / "model_index.json")
    return folder, None


def _device(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    _weights(folder).unlink()
    try:
        os.mknod(_weights(folder), stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    return folder, None


def _fifo_file(tmp: Path) -> Built:
    path = tmp / "model.safetensors"
    os.mkfifo(path)
    return path, None


def _hf_cache(tmp: Path) -> Built:
    """snapshots/<rev>/unet/x -> ../../../blobs/<sha>: legitimate, must be read."""
    repo = tmp / "models--org--name"
    folder = _pipeline(tmp)
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(folder, snap)
    blobs = repo / "blobs"
    blobs.mkdir()
    w = _weights(snap)
    shutil.move(w, blobs / "sha256deadbeef")
    os.symlink(Path("..") / ".." / ".." / "blobs" / "sha256deadbeef", w)
    return snap, None


def _index_edit(edit: Callable[[dict], object]) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        folder = _pipeline(tmp)
        path = folder / "model_index.json"
        doc = json.loads(path.read_text())
        new = edit(doc)
        path.write_bytes(new if isinstance(new, bytes) else json.dumps(doc).encode())
        return folder, None

    return build


def _config_edit(text: bytes) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        folder = _pipeline(tmp)
        (folder / "unet" / "config.json").write_bytes(text)
        return folder, None

    return build


def _remote_code(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    marker = tmp / "PY_MARKER"
    doc = json.loads((folder / "model_index.json").read_text())
    doc["_class_name"] = ["pipeline", "EvilPipeline"]
    doc["unet"] = ["my_module", "EvilUNet"]
    doc["auto_map"] = {"AutoModel": "pipeline.EvilPipeline"}
    (folder / "model_index.json").write_text(json.dumps(doc))
    (folder / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "unet" / "my_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return folder, marker


def _missing_component(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    shutil.rmtree(folder / "vae")
    return folder, None


def _no_components(tmp: Path) -> Built:
    folder = _pipeline(tmp)
    for comp in ("unet", "vae", "text_encoder"):
        shutil.rmtree(folder / comp)
    return folder, None


def _sharded(tmp: Path, target: str, make_target: bool = False) -> Built:
    from safetensors.torch import save_file

    folder = tmp / "sharded"
    folder.mkdir()
    sd = _tiny_sd1()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:3]}, str(folder / "model-00001-of-00002.safetensors"))
    wmap = dict.fromkeys(keys[:3], "model-00001-of-00002.safetensors")
    wmap.update(dict.fromkeys(keys[3:5], target))
    if make_target:
        outside = (folder / target).resolve()
        outside.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: sd[k] for k in keys[3:5]}, str(outside))
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wmap}))
    return index, None


def _folder_cases() -> list[Bad]:
    deep = b'{"_class_name": "StableDiffusionPipeline", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    return [
        Bad(31, "symlink_to_etc_passwd", _symlink_out, 2),
        Bad(31, "symlink_loop", _symlink_loop, 2),
        Bad(31, "fifo_weights", _fifo, 2),
        Bad(31, "fifo_model_index", _fifo_config, 2),
        Bad(31, "fifo_given_as_file", _fifo_file, 2),
        Bad(31, "char_device_weights", _device, 2),
        Bad(31, "hf_cache_blob_links_are_fine", _hf_cache, 0),
        Bad(32, "model_index_malformed", _index_edit(lambda d: b'{"_class_name": '), 2),
        Bad(32, "model_index_huge", _index_edit(lambda d: b'{"x": "' + b"a" * (11 << 20) + b'"}'), 2),
        Bad(32, "model_index_deep", _index_edit(lambda d: deep), 2),
        Bad(32, "model_index_duplicate_keys", _index_edit(lambda d: b'{"unet": 1, "unet": 2}'), 2),
        Bad(32, "model_index_not_object", _index_edit(lambda d: b"[1, 2]"), 2),
        Bad(32, "config_malformed", _config_edit(b"{,}"), 2),
        Bad(32, "config_duplicate_keys", _config_edit(b'{"_class_name": "A", "_class_name": "B"}'), 2),
        Bad(32, "missing_component", _missing_component, 0),
        Bad(32, "no_components", _no_components, 2),
        Bad(32, "custom_classes_auto_map_py_files", _remote_code, 0),
        Bad(35, "weight_map_outside_folder", lambda t: _sharded(t, "../outside.safetensors", True), 2),
        Bad(35, "weight_map_absolute", lambda t: _sharded(t, "/etc/passwd"), 2),
        Bad(35, "weight_map_missing_shard", lambda t: _sharded(t, "model-00002-of-00002.safetensors"), 2),
        Bad(35, "weight_map_windows_path", lambda t: _sharded(t, "C:\\model.safetensors"), 2),
    ]


# ------------------------------------------------------------------------------------ GGUF 33-34


def _gstr(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def gguf(version: int = 3, n_tensors: int = 0, kvs: bytes = b"", n_kv: int | None = None, tail: bytes = b"",
         magic: bytes = b"GGUF") -> bytes:
    """A GGUF header: magic, version, tensor count, kv count, raw kv bytes, then anything."""
    count = n_kv if n_kv is not None else (1 if kvs else 0)
    return magic + struct.pack("<IQQ", version, n_tensors, count) + kvs + tail


def _kv(key: bytes, vtype: int, value: bytes) -> bytes:
    return _gstr(key) + struct.pack("<I", vtype) + value


GGUF_STRING, GGUF_ARRAY, GGUF_BOOL, GGUF_U32 = 8, 9, 7, 4


def _tensor_info(name: bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    return _gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ggml_type, offset)


def _gguf_cases() -> list[Bad]:
    align = _kv(b"general.alignment", GGUF_U32, struct.pack("<I", 32))
    cases = {
        "bad_magic": gguf(magic=b"GGUX"),
        "big_endian_magic": gguf(magic=b"FUGG"),
        "version_0": gguf(0), "version_1": gguf(1), "version_4": gguf(4),
        "tensor_count_2_64": gguf(n_tensors=2**64 - 1),
        "kv_count_2_64": gguf(n_kv=2**64 - 1),
        "string_len_2_63": gguf(kvs=_gstr(b"k") + struct.pack("<IQ", GGUF_STRING, 2**63)),
        "array_count_huge": gguf(kvs=_kv(b"a", GGUF_ARRAY, struct.pack("<IQ", GGUF_U32, 2**62))),
        "array_nested": gguf(kvs=_kv(b"a", GGUF_ARRAY, struct.pack("<IQ", GGUF_ARRAY, 1) * 1000)),
        "unknown_value_type": gguf(kvs=_kv(b"k", 99, b"\0" * 8)),
        "bool_not_0_1": gguf(kvs=_kv(b"b", GGUF_BOOL, b"\x07")),
        "duplicate_key": gguf(kvs=align + align, n_kv=2),
        "duplicate_tensor": gguf(n_tensors=2, tail=_tensor_info(b"t", [4], 0, 0) * 2),
        "n_dims_over_4": gguf(n_tensors=1, tail=_tensor_info(b"t", [1] * 9, 0, 0)),
        "dim_product_overflow": gguf(n_tensors=1, tail=_tensor_info(b"t", [2**40, 2**40], 0, 0)),
        "unknown_ggml_type": gguf(n_tensors=1, tail=_tensor_info(b"t", [4], 999, 0)),
        "offset_unaligned": gguf(n_tensors=1, tail=_tensor_info(b"t", [4], 0, 3)),
        "offset_out_of_file": gguf(n_tensors=1, tail=_tensor_info(b"t", [4], 0, 2**40)),
        "alignment_0": gguf(kvs=_kv(b"general.alignment", GGUF_U32, struct.pack("<I", 0))),
        "alignment_not_power_of_2": gguf(kvs=_kv(b"general.alignment", GGUF_U32, struct.pack("<I", 48))),
        "alignment_wrong_type": gguf(kvs=_kv(b"general.alignment", GGUF_STRING, _gstr(b"32"))),
        "data_truncated": gguf(n_tensors=1, tail=_tensor_info(b"t", [1024], 0, 0)),
    }
    out = [Bad(33, name, _file(f"{name}.gguf", data), 2) for name, data in cases.items()]
    ssti = b"{{ ''.__class__.__mro__[1].__subclasses__() }}{% for x in range(10**9) %}{% endfor %}"
    out += [
        Bad(34, "chat_template_ssti", _file("chat.gguf", gguf(kvs=_kv(b"tokenizer.chat_template", GGUF_STRING,
                                                                     _gstr(ssti)))), 2),
        Bad(34, "ansi_in_metadata", _file("ansi.gguf", gguf(kvs=_kv(b"general.name", GGUF_STRING,
                                                                    _gstr(b"\x1b]0;pwned\x07\x1b[2J"))))),
        Bad(34, "ansi_in_file_name", _file("evil\x1b[31m\x07.gguf", gguf()), 2),
    ]
    return out


BAD: list[Bad] = _safetensors_cases() + _pickle_cases() + _folder_cases() + _gguf_cases()


def spec_numbers() -> set[int]:
    """The case numbers of BAD_INPUTS.md (1-35 when the file is not there)."""
    if not SPEC.exists():
        return set(range(1, 36))
    return {int(m.group(1)) for m in re.finditer(r"^(\d+)\. ", SPEC.read_text(), re.M)}


def test_every_numbered_case_has_a_generator() -> None:
    numbers = spec_numbers()
    assert numbers >= set(range(1, 36))
    assert numbers <= {b.number for b in BAD}, sorted(numbers - {b.number for b in BAD})


# ------------------------------------------------------------------------------------- runner


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _run(args: list[str], heavy: bool) -> tuple[int, str, str]:
    if not heavy:
        res = sdf(*args)
        return res.exit_code, res.stdout, res.stderr
    code = "import sys; from sdforensics.cli import app; app(sys.argv[1:], prog_name='sdf')"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDF_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60,
                          preexec_fn=_limit_memory, env=env, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _hung(_sig: int, _frame: object) -> None:
    raise TimeoutError("sdf analyze hung for 60 s")


def _params() -> list[object]:
    return [pytest.param(b, id=b.id, marks=[pytest.mark.xfail(strict=True, reason=b.known_bug)] if b.known_bug
                         else []) for b in BAD]


@pytest.mark.parametrize("bad", _params())
def test_bad_input(bad: Bad, tmp_path: Path) -> None:
    path, marker = bad.build(tmp_path)
    old = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(60)
    try:
        code, out, err = _run(["analyze", str(path), "--format", "json", "--library", str(empty_library(tmp_path)), "-q"],
                              bad.heavy)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "Traceback" not in out + err, err[-3000:]
    assert "bug in sdforensics" not in err, err
    assert code in (0, 2), (code, err[-2000:])
    if bad.expect is not None:
        assert code == bad.expect, (code, err[:500], out[:300])
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err[:2000]
        assert "\x1b" not in err and "\x07" not in err
        assert out == ""
    else:
        doc = json.loads(out)
        assert doc["problems"], "exit 0 must come with a finding"
        assert "\x1b" not in out and "\x07" not in out
    if bad.number in (33, 34) and bad.name not in ("bad_magic", "big_endian_magic"):
        assert "GGUF" in err, err
    # a hang is caught by the alarm above; how long each input takes is measured by bench/fuzz.py
    if marker is not None:
        assert not marker.exists(), "a planted payload ran"
