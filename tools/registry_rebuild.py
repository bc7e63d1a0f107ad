"""Rebuild, import or check the shipped known-model registry (``reference_hashes/``).

    python tools/registry_rebuild.py rebuild [--src DIR] [--out DIR]   # src/*.json -> known_models.json, CSV, MANIFEST
    python tools/registry_rebuild.py check [FOLDER]                     # load, validate, verify the manifest
    python tools/registry_rebuild.py import-seed SEED [--src DIR]       # once: split the collected seed

Maintainer tooling, not part of the installed package: it needs only the standard library and
``sdforensics`` itself (``pip install -e .``; no extra dependency). The package reads what this writes
(:mod:`sdforensics.library.registry`). Run it from the repository root.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from sdforensics.core.errors import LibraryError
from sdforensics.library.manifest import write_manifest
from sdforensics.library.registry import (
    FAMILIES,
    KNOWN_MODELS_JSON,
    LEGACY_CSV,
    LEGACY_CSV_HEADER,
    LEGACY_LICENSE,
    SCHEMA,
    SHIPPED_DIR,
    KnownModel,
    entry_error,
    entry_from_dict,
    load_registry,
    read_entries_file,
    read_legacy_csv,
)

# --------------------------------------------------------------------------- rebuild

_FAMILY_ORDER = {f: i for i, f in enumerate(FAMILIES)}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _entries_json(entries: Sequence[KnownModel]) -> str:
    doc = {"schema": SCHEMA, "entries": [e.to_dict() for e in entries]}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _legacy_csv_text(rows: Iterable[tuple[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEGACY_CSV_HEADER)
    writer.writerows(sorted(set(rows)))
    return buf.getvalue()


def _sort_key(e: KnownModel) -> tuple[int, str, str]:
    return (_FAMILY_ORDER[e.family], e.name.casefold(), e.sha256 or "")


def rebuild(src: Path, out: Path) -> list[Path]:
    """Regenerate the registry in ``out`` from the editable sources in ``src``; return written paths.

    ``src`` holds ``*.json`` entry files (schema ``sdforensics.known_models/1``, any split; one
    per family is the convention), and optionally ``legacy_hashes.csv`` with
    ``LICENSE-model-keyword.txt``. Writes ``out/known_models.json`` (entries sorted by family
    and name, ``autov2`` filled in), ``out/legacy_hashes.csv`` (sorted, deduplicated), copies the
    licence, then rewrites ``out/MANIFEST.sha256`` over everything in ``out``. Running it twice
    gives identical bytes.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise LibraryError(f"{src}: source folder not found. Give --src the folder of *.json entry files.")
    sources = sorted(p for p in src.glob("*.json") if p.is_file())
    if not sources:
        raise LibraryError(f"{src}: no *.json entry files in it.")
    entries: list[KnownModel] = []
    seen_sha: dict[str, str] = {}
    seen_name: dict[str, str] = {}
    for path in sources:
        for e in read_entries_file(path):
            where = f"{path} entry {e.name!r}"
            if e.sha256 and e.sha256 in seen_sha:
                raise entry_error(where, f"sha256 {e.sha256} is already listed in {seen_sha[e.sha256]}")
            if e.name in seen_name:
                raise entry_error(where, f"name is already used in {seen_name[e.name]}")
            if e.sha256:
                seen_sha[e.sha256] = str(path)
            seen_name[e.name] = str(path)
            entries.append(e)
    entries.sort(key=_sort_key)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / KNOWN_MODELS_JSON]
    _write_atomic(out / KNOWN_MODELS_JSON, _entries_json(entries))
    legacy_src = src / LEGACY_CSV
    if legacy_src.is_file():
        licence = src / LEGACY_LICENSE
        if not licence.is_file():
            raise LibraryError(f"{licence}: missing. {LEGACY_CSV} redistributes MIT-licensed data and its "
                               "licence must travel with it.")
        _write_atomic(out / LEGACY_CSV, _legacy_csv_text(read_legacy_csv(legacy_src)))
        if licence.resolve() != (out / LEGACY_LICENSE).resolve():
            shutil.copyfile(licence, out / LEGACY_LICENSE)
        written += [out / LEGACY_CSV, out / LEGACY_LICENSE]
    written.append(write_manifest(out))
    return written


# Names (as in the seed) of the official text-to-image family bases: SD 1.4, 1.5, 2.0, 2.1, SDXL
# base/refiner as their publishers released them. Variants (inpainting, depth, upscaler) and
# third-party repacks are not bases.
OFFICIAL_SEED_NAMES = frozenset({
    "Stable Diffusion v1.4",
    "Stable Diffusion v1.4 (full EMA)",
    "Stable Diffusion v1.5 (pruned, EMA + non-EMA)",
    "Stable Diffusion v1.5 (pruned, EMA only)",
    "Stable Diffusion v1.5 (pruned, EMA only, safetensors)",
    "Stable Diffusion v1.5 (pruned, EMA only, safetensors, first conversion Dec 2022)",
    "Stable Diffusion v1.5 (pruned, safetensors)",
    "Stable Diffusion v1.5 (pruned, safetensors, first conversion Dec 2022)",
    "Stable Diffusion 2.0 (768-v)",
    "Stable Diffusion 2.0 base (512)",
    "Stable Diffusion 2.1 (512 base, EMA, ckpt)",
    "Stable Diffusion 2.1 (512 base, EMA, safetensors)",
    "Stable Diffusion 2.1 (512 base, non-EMA, ckpt)",
    "Stable Diffusion 2.1 (512 base, non-EMA, safetensors)",
    "Stable Diffusion 2.1 (768-v, EMA, ckpt)",
    "Stable Diffusion 2.1 (768-v, EMA, safetensors)",
    "Stable Diffusion 2.1 (768-v, non-EMA, ckpt)",
    "Stable Diffusion 2.1 (768-v, non-EMA, safetensors)",
    "Stable Diffusion XL 0.9 base (research release)",
    "Stable Diffusion XL 1.0 base",
    "Stable Diffusion XL 1.0 base with 0.9 VAE",
    "Stable Diffusion XL 1.0 refiner",
})


def import_seed(seed: Path, src: Path, *, force: bool = False) -> list[Path]:
    """Split the collected seed (``../shared/known_models/``) into ``src/<family>.json`` files.

    A one-time step, kept for provenance: marks :data:`OFFICIAL_SEED_NAMES` official and copies
    the legacy-hash CSV and its licence. Refuses to overwrite ``src`` unless ``force``.
    """
    seed, src = Path(seed), Path(src)
    raw = json.loads((seed / "known_models.json").read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise LibraryError(f"{seed / 'known_models.json'}: expected a JSON list of entries.")
    if src.exists() and any(src.glob("*.json")) and not force:
        raise LibraryError(f"{src}: already holds entry files; pass --force to overwrite them.")
    by_family: dict[str, list[KnownModel]] = defaultdict(list)
    for i, item in enumerate(raw):
        if isinstance(item, dict) and item.get("name") in OFFICIAL_SEED_NAMES:
            item = {**item, "official": True}
        e = entry_from_dict(item, f"{seed / 'known_models.json'} entry {i}")
        by_family[e.family].append(e)
    missing = OFFICIAL_SEED_NAMES - {e.name for es in by_family.values() for e in es if e.official}
    if missing:
        raise LibraryError(f"{seed}: official names not found in the seed: {sorted(missing)}")
    src.mkdir(parents=True, exist_ok=True)
    written = []
    for family, es in sorted(by_family.items(), key=lambda kv: _FAMILY_ORDER[kv[0]]):
        path = src / f"{family}.json"
        _write_atomic(path, _entries_json(sorted(es, key=_sort_key)))
        written.append(path)
    rows = read_legacy_csv(seed / "model-keyword-hashes.csv")
    _write_atomic(src / LEGACY_CSV, _legacy_csv_text(rows))
    shutil.copyfile(seed / "model-keyword-LICENSE.txt", src / LEGACY_LICENSE)
    return [*written, src / LEGACY_CSV, src / LEGACY_LICENSE]


def main(argv: Sequence[str] | None = None) -> int:
    """``python tools/registry_rebuild.py rebuild|import-seed|check``."""
    parser = argparse.ArgumentParser(prog="python tools/registry_rebuild.py",
                                     description="Rebuild, import or check the known-model registry.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_rebuild = sub.add_parser("rebuild", help="regenerate known_models.json, legacy_hashes.csv, MANIFEST")
    p_rebuild.add_argument("--src", type=Path, default=SHIPPED_DIR / "src")
    p_rebuild.add_argument("--out", type=Path, default=SHIPPED_DIR)
    p_seed = sub.add_parser("import-seed", help="split the collected seed into src/<family>.json (once)")
    p_seed.add_argument("seed", type=Path)
    p_seed.add_argument("--src", type=Path, default=SHIPPED_DIR / "src")
    p_seed.add_argument("--force", action="store_true")
    p_check = sub.add_parser("check", help="load and validate a registry, verify its manifest")
    p_check.add_argument("folder", type=Path, nargs="?", default=SHIPPED_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "rebuild":
            for path in rebuild(args.src, args.out):
                print(f"wrote {path}", file=sys.stderr)
        elif args.command == "import-seed":
            for path in import_seed(args.seed, args.src, force=args.force):
                print(f"wrote {path}", file=sys.stderr)
        else:
            from sdforensics.library.manifest import verify_manifest

            reg = load_registry([args.folder])
            problems = verify_manifest(args.folder)
            for line in problems:
                print(line, file=sys.stderr)
            print(f"{len(reg)} entries, {len(reg.legacy_rows)} legacy rows, "
                  f"{'manifest OK' if not problems else f'{len(problems)} manifest problem(s)'}",
                  file=sys.stderr)
            return 1 if problems else 0
    except LibraryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
