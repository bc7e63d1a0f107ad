"""Readers for diffusers folders and sharded safetensors checkpoints.

:func:`open_diffusers` reads a diffusers pipeline folder (``model_index.json`` with ``unet/``,
``text_encoder/``, ``text_encoder_2/``, ``vae/``) or one lone component folder (``config.json``
+ weights) and yields **canonical** single-file tensors (see :mod:`sdforensics.readers.diffusers_keys`):
OpenCLIP ``in_proj`` is assembled from q/k/v, VAE attention linears become 1x1 convolutions.
Components are read in the order ``unet, text_encoder, text_encoder_2, vae``, each file in file
order; a canonical tensor comes out as soon as its last part has been read. Diffusers tensors
with no canonical name come out as ``<component>.<key>`` and are listed in the findings.
The family (SD1/SD2/SDXL/refiner) is inferred from tensor shapes, never from class names.

:func:`open_sharded` reads a plain ``*.safetensors.index.json`` checkpoint; names stay as stored.

Folders are untrusted. JSON files are capped at 10 MB and 32 levels, duplicate keys rejected.
Every file is resolved (symlinks followed) and must stay inside the *confinement root* and be a
regular file (FIFOs, devices, sockets and symlink loops are refused). The root is the folder
given, except inside a Hugging Face cache: when the nearest ancestor named ``snapshots`` sits
next to a ``blobs/`` folder, the root is that repository folder (``models--org--name/``), so the
cache's ``snapshots/<rev>/x -> ../../blobs/<sha>`` links work and nothing outside that one repo
is reachable. Custom classes, ``auto_map`` and ``.py`` files are reported as findings and never
imported.

>>> ckpt = open_diffusers(Path("stable-diffusion-v1-5"))   # doctest: +SKIP
>>> ckpt.family, ckpt.infos()[0].name                      # doctest: +SKIP
('sd1', 'model.diffusion_model.conv_in.bias')
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from sdforensics.core.errors import CorruptFileError, UnsafeFileError, UnsupportedFormatError
from sdforensics.readers.base import Checkpoint, ClosingCheckpoint, FormatInfo, TensorInfo
from sdforensics.readers.diffusers_keys import (
    COMPONENTS,
    Rule,
    canonical_shape,
    diffusers_configs,
    plan_from_diffusers,
    to_canonical,
)
from sdforensics.readers.safetensors_reader import open_safetensors

JSON_CAP = 10 * 1024 * 1024
JSON_DEPTH_CAP = 32
SHARD_CAP = 1024
SCAN_CAP = 10_000
_WEIGHTS = re.compile(
    r"^(diffusion_pytorch_model|model)(?:\.([A-Za-z0-9_-]{1,32}))?\.safetensors(\.index\.json)?$"
)
_PICKLES = (".bin", ".ckpt", ".pt", ".pth")


def _show(text: object, limit: int = 120) -> str:
    """A name or path made safe for a one-line message (control characters escaped, truncated)."""
    s = str(text)
    s = s if len(s) <= limit else s[: limit - 3] + "..."
    return s.encode("unicode_escape").decode("ascii")


# ---------------------------------------------------------------- confinement


def confinement_root(folder: Path) -> Path:
    """The folder files may resolve into: ``folder`` itself, or its Hugging Face cache repo.

    >>> confinement_root(Path("/nonexistent/models--a--b/snapshots/abc"))  # no blobs/ there
    PosixPath('/nonexistent/models--a--b/snapshots/abc')
    """
    real = folder.resolve()
    for anc in (real, *real.parents):
        if anc.name == "snapshots":
            return anc.parent if (anc.parent / "blobs").is_dir() else real
    return real


def _resolve(path: Path, what: str) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError as err:
        kind = "is a dangling symlink" if path.is_symlink() else "does not exist"
        raise CorruptFileError(f"{_show(path)}: {what} {kind}") from err
    except RuntimeError as err:  # Python < 3.13 reports symlink loops this way
        raise UnsafeFileError(f"{_show(path)}: symlink loop; refusing to read it") from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFileError(f"{_show(path)}: symlink loop; refusing to read it") from err
        raise CorruptFileError(f"{_show(path)}: cannot access {what}: {err.strerror}") from err


def _confine(path: Path, root: Path, what: str = "file", kind: str = "file") -> Path:
    """Resolve ``path``; it must stay inside ``root`` and be a regular file (or a directory)."""
    real = _resolve(path, what)
    if not real.is_relative_to(root):
        raise UnsafeFileError(
            f"{_show(path)}: resolves to {_show(real)}, outside the model folder {_show(root)}; "
            "refusing to read it"
        )
    mode = os.stat(real).st_mode
    ok = stat.S_ISDIR(mode) if kind == "dir" else stat.S_ISREG(mode)
    if not ok:
        got = "a directory" if stat.S_ISDIR(mode) else "not a regular file (FIFO, device or socket)"
        raise UnsafeFileError(f"{_show(path)}: {what} is {got}; refusing to read it")
    return real


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_show(key, 60)!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _depth(doc: Any) -> int:
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def load_json(path: Path, root: Path) -> dict[str, Any]:
    """Read a small JSON object from an untrusted folder: confined, capped, no duplicate keys."""
    real = _confine(path, root, "JSON file")
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{_show(path)}: not a regular file; refusing to read it")
        if st.st_size > JSON_CAP:
            raise CorruptFileError(
                f"{_show(path)}: {st.st_size:,} bytes exceeds the {JSON_CAP:,}-byte cap for JSON"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(JSON_CAP + 1)
    finally:
        os.close(fd)
    if len(raw) > JSON_CAP:
        raise CorruptFileError(f"{_show(path)}: exceeds the {JSON_CAP:,}-byte cap for JSON")
    try:
        text = raw.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError as err:
        raise CorruptFileError(f"{_show(path)}: JSON nested too deeply") from err
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"{_show(path)}: not valid UTF-8 (byte {err.start})") from err
    except ValueError as err:
        raise CorruptFileError(f"{_show(path)}: not valid JSON: {_show(err)}") from err
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{_show(path)}: JSON is not an object")
    if _depth(doc) > JSON_DEPTH_CAP:
        raise CorruptFileError(f"{_show(path)}: JSON nested deeper than {JSON_DEPTH_CAP} levels")
    return doc


# ---------------------------------------------------------------- sharded checkpoints


class ShardedCheckpoint(ClosingCheckpoint):
    """A ``*.safetensors.index.json`` checkpoint: every shard, in shard-name order, names as stored."""

    def __init__(self, index_path: Path, root: Path | None = None) -> None:
        self.path = Path(index_path)
        root = root or confinement_root(self.path.parent)
        doc = load_json(self.path, root)
        where = _show(self.path)
        wmap = doc.get("weight_map")
        if not isinstance(wmap, dict) or not wmap:
            raise CorruptFileError(f"{where}: 'weight_map' is missing, empty or not an object")
        if not all(isinstance(v, str) for v in wmap.values()):
            raise CorruptFileError(f"{where}: 'weight_map' values must be shard file names")
        names = sorted(set(wmap.values()))
        if len(names) > SHARD_CAP:
            raise CorruptFileError(f"{where}: {len(names):,} shards exceeds the cap of {SHARD_CAP}")
        self._files: list[tuple[Path, Checkpoint]] = []
        self._findings: list[str] = []
        with ExitStack() as on_error:  # closes the shards opened so far unless all validate
            on_error.callback(self.close)
            for name in names:
                shard = self._shard_path(name, root)
                self._files.append((self.path.parent / name, open_safetensors(shard)))
            self._check(wmap, doc.get("metadata"))
            on_error.pop_all()

    def _shard_path(self, name: str, root: Path) -> Path:
        parts = name.replace("\\", "/").split("/")
        absolute = name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None
        if not name or "\x00" in name or absolute or ".." in parts:
            raise UnsafeFileError(
                f"{_show(self.path)}: weight_map names shard {_show(name)!r} outside the folder; refusing it"
            )
        path = self.path.parent / name
        if not os.path.lexists(path):
            raise CorruptFileError(
                f"{_show(self.path)}: weight_map names shard {_show(name)!r}, which is missing"
            )
        return _confine(path, root, "shard")

    def _check(self, wmap: dict[str, str], meta: Any) -> None:
        where: dict[str, str] = {}
        total = 0
        for path, ck in self._files:
            for info in ck.infos():
                if info.name in where:
                    raise CorruptFileError(
                        f"{_show(self.path)}: tensor {_show(info.name)!r} is in both "
                        f"{where[info.name]} and {path.name}"
                    )
                where[info.name] = path.name
                total += info.nbytes
        for key, shard in wmap.items():
            if where.get(key) != shard:
                got = f"it is in {where[key]}" if key in where else "no shard has it"
                raise CorruptFileError(
                    f"{_show(self.path)}: weight_map puts {_show(key)!r} in {_show(shard)} but {got}"
                )
        extra = [k for k in where if k not in wmap]
        if extra:
            self._findings.append(
                f"{len(extra)} tensor(s) in shards but not in weight_map, e.g. {_show(extra[0])!r}"
            )
        declared = meta.get("total_size") if isinstance(meta, dict) else None
        if isinstance(declared, int) and declared != total:
            self._findings.append(f"index metadata total_size {declared:,} != {total:,} bytes of tensors")

    def format(self) -> FormatInfo:
        meta = self._files[0][1].format().metadata if self._files else {}
        files = (self.path, *(p for p, _ in self._files))
        return FormatInfo("sharded-safetensors", files, dict(meta), findings=tuple(self._findings))

    def infos(self) -> list[TensorInfo]:
        return [_sourced(i, p.name) for p, ck in self._files for i in ck.infos()]

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        for path, ck in self._files:
            for info, tensor in ck.tensors():
                yield _sourced(info, path.name), tensor

    def close(self) -> None:
        for _, ck in self._files:
            ck.close()


def _sourced(info: TensorInfo, source: str) -> TensorInfo:
    return TensorInfo(info.name, info.shape, info.dtype, info.nbytes, source)


def open_sharded(index_json: Path) -> ShardedCheckpoint:
    """Open a sharded safetensors checkpoint from its ``*.safetensors.index.json``.

    >>> ckpt = open_sharded(Path("model.safetensors.index.json"))   # doctest: +SKIP
    """
    return ShardedCheckpoint(Path(index_json))


# ---------------------------------------------------------------- diffusers folders


def _component_weights(folder: Path, root: Path, variant: str | None, findings: list[str]) -> Path:
    """Pick the weights file (or index) of one component folder."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise CorruptFileError(f"{_show(folder)}: cannot list the folder: {err.strerror}") from err
    found: dict[str | None, list[str]] = {}
    for name in names:
        m = _WEIGHTS.match(name)
        if m:
            found.setdefault(m.group(2), []).append(name)
        elif name.endswith(_PICKLES):
            findings.append(f"{_show(folder.name)}/{_show(name)}: pickle weights present; not read here")
    if not found:
        raise UnsupportedFormatError(
            f"{_show(folder)}: no safetensors weights (expected diffusion_pytorch_model.safetensors, "
            "model.safetensors, a .fp16 variant or a .safetensors.index.json)"
        )
    if variant is not None and variant not in found:
        have = ", ".join(sorted(v or "(none)" for v in found))
        if None not in found:
            raise UnsupportedFormatError(
                f"{_show(folder)}: no weights of variant {variant!r} (found: {have})"
            )
        findings.append(
            f"{_show(folder.name)}: no {variant!r} weights; read the plain ones (as diffusers does)"
        )
        variant = None
    if variant is None:
        variant = None if None in found else "fp16" if "fp16" in found else sorted(v for v in found if v)[0]
    others = sorted(v or "(none)" for v in found if v != variant)
    if others:
        findings.append(
            f"{_show(folder.name)}: also has weight variant(s) {', '.join(others)}; "
            f"read {variant or '(none)'}"
        )
    chosen = sorted(found[variant], key=lambda n: (n.endswith(".json"), n))
    if len(chosen) > 1:
        findings.append(f"{_show(folder.name)}: several weight files {chosen}; read {chosen[0]}")
    return folder / chosen[0]


def _open_weights(path: Path, root: Path) -> Checkpoint:
    if path.name.endswith(".index.json"):
        return ShardedCheckpoint(path, root)
    return open_safetensors(_confine(path, root, "weights file"))


def _scan_code(folder: Path, findings: list[str]) -> None:
    """Report ``.py`` files (remote code) under ``folder`` without following symlinks."""
    seen = 0
    base = len(folder.parts)
    for here, dirs, files in os.walk(folder, followlinks=False):
        if len(Path(here).parts) - base >= 4:
            dirs.clear()
        seen += len(dirs) + len(files)
        for name in sorted(files):
            if name.endswith(".py"):
                rel = (Path(here) / name).relative_to(folder)
                findings.append(f"{_show(rel)}: Python file (remote code); never imported")
        if seen > SCAN_CAP:
            findings.append(f"more than {SCAN_CAP:,} entries in the folder; stopped scanning for code files")
            return


def _check_model_index(doc: dict[str, Any], findings: list[str]) -> list[str]:
    """Findings about ``model_index.json``; returns the components it declares."""
    cfg = diffusers_configs()
    cls = doc.get("_class_name")
    if isinstance(cls, list):
        findings.append(f"model_index.json: custom pipeline {_show(cls)} (remote code); never imported")
    elif not isinstance(cls, str):
        findings.append("model_index.json: no _class_name")
    elif cls not in cfg["known_pipelines"]:
        findings.append(f"model_index.json: pipeline class {_show(cls)!r} is not a known SD pipeline")
    if "auto_map" in doc or "custom_pipeline" in doc:
        findings.append("model_index.json: auto_map/custom_pipeline (remote code); never imported")
    declared: list[str] = []
    for name, value in doc.items():
        if name.startswith("_"):
            continue
        if not (isinstance(value, list) and len(value) == 2):
            continue
        lib, klass = value
        if lib is None and klass is None:
            continue
        if lib not in cfg["known_libraries"]:
            findings.append(
                f"model_index.json: component {_show(name)!r} names custom code {_show(lib)}.{_show(klass)}"
            )
        if name in COMPONENTS:
            declared.append(name)
    return declared


def _check_config(comp: str, folder: Path, root: Path, findings: list[str]) -> None:
    path = folder / "config.json"
    if not os.path.lexists(path):
        findings.append(f"{comp}/config.json is missing")
        return
    doc = load_json(path, root)
    if "auto_map" in doc:
        findings.append(f"{comp}/config.json: auto_map {_show(doc['auto_map'])} (remote code); not imported")
    expected = diffusers_configs()["component_classes"].get(comp, [])
    names = [doc.get("_class_name")] if "_class_name" in doc else doc.get("architectures")
    if not isinstance(names, list) or not names or any(n not in expected for n in names):
        findings.append(f"{comp}/config.json: class {_show(names)} is not one of {expected}")


def _lone_component(infos: list[TensorInfo]) -> str:
    names = {i.name for i in infos}
    if "conv_in.weight" in names and any(n.startswith("time_embedding.") for n in names):
        return "unet"
    if any(n.startswith(("encoder.", "decoder.")) for n in names):
        return "vae"
    emb = next((i for i in infos if i.name == "text_model.embeddings.token_embedding.weight"), None)
    if emb is not None:
        big = "text_projection.weight" in names and emb.shape[-1] == 1280
        return "text_encoder_2" if big else "text_encoder"
    raise UnsupportedFormatError("not a UNet, VAE or CLIP text encoder in diffusers layout")


class DiffusersCheckpoint(ClosingCheckpoint):
    """A diffusers folder, read as canonical single-file tensors (see the module docstring)."""

    def __init__(self, path: Path, variant: str | None = None) -> None:
        path = Path(path)
        if path.name == "model_index.json":
            path = path.parent
        self.path = path
        folder = _resolve(path, "folder")
        if not folder.is_dir():
            raise UnsupportedFormatError(f"{_show(path)}: not a folder")
        root = confinement_root(folder)
        self._findings: list[str] = []
        self._parts: list[tuple[str, Checkpoint]] = []
        self.pipeline_class: str | None = None
        with ExitStack() as on_error:  # closes the parts opened so far unless the folder validates
            on_error.callback(self.close)
            self._open(folder, root, variant)
            self._plan()
            on_error.pop_all()

    def _open(self, folder: Path, root: Path, variant: str | None) -> None:
        index = folder / "model_index.json"
        findings = self._findings
        if os.path.lexists(index):
            doc = load_json(index, root)
            cls = doc.get("_class_name")
            self.pipeline_class = cls if isinstance(cls, str) else None
            declared = _check_model_index(doc, findings)
            for comp in COMPONENTS:
                sub = folder / comp
                if not os.path.lexists(sub):
                    if comp in declared:
                        findings.append(f"model_index.json declares {comp} but the folder has no {comp}/")
                    continue
                if comp not in declared:
                    findings.append(f"{comp}/ is present but not declared in model_index.json; read anyway")
                _confine(sub, root, "component folder", kind="dir")
                _check_config(comp, sub, root, findings)
                weights = _component_weights(sub, root, variant, findings)
                self._parts.append((comp, _open_weights(weights, root)))
            if not self._parts:
                raise UnsupportedFormatError(
                    f"{_show(self.path)}: no unet/, text_encoder/, text_encoder_2/ or vae/ weights"
                )
        else:
            weights = _component_weights(folder, root, variant, findings)
            ck = _open_weights(weights, root)
            self._parts.append(("", ck))  # closed with the others if the next check fails
            try:
                comp = _lone_component(ck.infos())
            except UnsupportedFormatError as err:
                raise UnsupportedFormatError(f"{_show(self.path)}: {err}") from err
            self._parts[-1] = (comp, ck)
            if os.path.lexists(folder / "config.json"):
                _check_config(comp, folder, root, findings)
        _scan_code(folder, findings)

    def _plan(self) -> None:
        tables = {comp: {i.name: i.shape for i in ck.infos()} for comp, ck in self._parts}
        plan = plan_from_diffusers(tables)
        self.family = plan.family
        self.components = tuple(comp for comp, _ in self._parts)
        self._lookup: dict[tuple[str, str], tuple[Rule, int]] = {
            (p.component, p.key): (rule, n) for rule in plan.rules for n, p in enumerate(rule.parts)
        }
        order: list[TensorInfo] = []
        pending: dict[str, list[TensorInfo | None]] = {}
        for comp, ck in self._parts:
            for info in ck.infos():
                hit = self._lookup.get((comp, info.name))
                if hit is None:
                    order.append(TensorInfo(f"{comp}.{info.name}", info.shape, info.dtype, info.nbytes, comp))
                    continue
                rule, n = hit
                slot = pending.setdefault(rule.canonical, [None] * len(rule.parts))
                slot[n] = _sourced(info, f"{comp}/{info.source or Path(ck.path).name}")
                if all(s is not None for s in slot):
                    order.append(self._canonical_info(rule, [s for s in slot if s is not None]))
                    del pending[rule.canonical]
        self._infos = order
        self._by_name = {i.name: i for i in order}
        if plan.unmapped:
            self._findings.append(
                f"{len(plan.unmapped)} diffusers tensor(s) have no canonical name "
                "(yielded as component.key), "
                f"e.g. {_show(plan.unmapped[0])}"
            )
        if plan.family == "sd2" and "text_encoder" in self.components:
            self._findings.append(
                "SD2 text encoder in diffusers layout: the last OpenCLIP layer, text_projection "
                "and logit_scale are not stored (diffusers drops them)"
            )

    def _canonical_info(self, rule: Rule, parts: list[TensorInfo]) -> TensorInfo:
        dtypes = {p.dtype for p in parts}
        if len(dtypes) != 1:
            raise CorruptFileError(
                f"{_show(self.path)}: parts of {_show(rule.canonical)} have different dtypes {sorted(dtypes)}"
            )
        shape = canonical_shape(rule, [p.shape for p in parts])
        if rule.op == "concat" and len({p.shape for p in parts}) != 1:
            raise CorruptFileError(
                f"{_show(self.path)}: q/k/v parts of {_show(rule.canonical)} have different shapes"
            )
        sources = "+".join(dict.fromkeys(p.source for p in parts))
        return TensorInfo(rule.canonical, shape, parts[0].dtype, sum(p.nbytes for p in parts), sources)

    def format(self) -> FormatInfo:
        files: list[Path] = []
        metadata: dict[str, str] = {}
        extra: list[str] = []
        for comp, ck in self._parts:
            fmt = ck.format()
            files.extend(fmt.files)
            metadata.update({f"{comp}.{k}": v for k, v in fmt.metadata.items()})
            extra.extend(f"{comp}: {f}" for f in fmt.findings)
        return FormatInfo("diffusers", tuple(files), metadata, findings=(*self._findings, *extra))

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def tensors(self) -> Iterator[tuple[TensorInfo, torch.Tensor]]:
        pending: dict[str, list[torch.Tensor | None]] = {}
        for comp, ck in self._parts:
            for info, tensor in ck.tensors():
                hit = self._lookup.get((comp, info.name))
                if hit is None:
                    yield self._by_name[f"{comp}.{info.name}"], tensor
                    continue
                rule, n = hit
                slot = pending.setdefault(rule.canonical, [None] * len(rule.parts))
                slot[n] = tensor
                if all(s is not None for s in slot):
                    del pending[rule.canonical]
                    joined = to_canonical(rule, [s for s in slot if s is not None])
                    yield self._by_name[rule.canonical], joined

    def close(self) -> None:
        for _, ck in self._parts:
            ck.close()


def open_diffusers(path: Path, variant: str | None = None) -> DiffusersCheckpoint:
    """Open a diffusers folder (or a lone component folder) as canonical single-file tensors.

    ``variant`` picks ``<name>.<variant>.safetensors`` weights (e.g. ``"fp16"``); by default the
    plain weights, else ``fp16``, else the first variant found (the choice is in the findings).

    >>> ckpt = open_diffusers(Path("sdxl-folder"))   # doctest: +SKIP
    >>> ckpt.family                                  # doctest: +SKIP
    'sdxl'
    """
    return DiffusersCheckpoint(Path(path), variant)
