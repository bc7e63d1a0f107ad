"""``sdf``: the command line. It parses options, calls the library and prints; nothing else.

Every user-facing failure is an :class:`~sdforensics.core.errors.SdfError`, printed as one line on
stderr with exit code 2. Progress goes to stderr; ``--format json`` prints exactly one JSON
document on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from sdforensics.core.errors import SdfError
from sdforensics.core.progress import ProgressBar
from sdforensics.core.safetext import printable

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="What did the author mix in, and how much?"
)
refs_app = typer.Typer(
    no_args_is_help=True, help="Manage the reference library (fingerprints of known models)."
)
synth_app = typer.Typer(
    no_args_is_help=True, help="Write synthetic checkpoints with real SD layouts (tests, demos)."
)
app.add_typer(refs_app, name="refs")
app.add_typer(synth_app, name="synth")

T = TypeVar("T")


class Format(str, Enum):
    text = "text"
    json = "json"
    html = "html"


class ListFormat(str, Enum):
    text = "text"
    json = "json"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


LibraryOpt = Annotated[Path | None, typer.Option("--library", help="Use this library folder only.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to compute fingerprints.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {printable(message, 2000)}", err=True)
    return typer.Exit(code)


def run(fn: Callable[[], T]) -> T:
    """Call ``fn``; turn any error into one line on stderr and exit 2 (SDF_DEBUG=1 re-raises)."""
    try:
        return fn()
    except typer.Exit:
        raise
    except SdfError as err:
        raise _fail(str(err)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None
    except MemoryError:
        raise _fail("out of memory while reading the file") from None
    except Exception as err:  # never a traceback for users; say it is our bug
        if os.environ.get("SDF_DEBUG"):
            raise
        raise _fail(
            f"unexpected {type(err).__name__}: {err} (a bug in sdforensics; SDF_DEBUG=1 shows details)"
        ) from None


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
    else:
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(text, "utf-8")
        tmp.replace(out)
        typer.echo(f"wrote {out}", err=True)


def _bar(label: str, quiet: bool) -> ProgressBar:
    return ProgressBar(label, enabled=False if quiet else None)


@app.command()
def analyze(
    model: Annotated[Path, typer.Argument(help="A .safetensors, .ckpt/.pt/.bin file or a diffusers folder.")],
    library: LibraryOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f")] = Format.text,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the report here instead of stdout.")
    ] = None,
    device: DeviceOpt = Device.auto,
    registry: Annotated[
        list[Path] | None, typer.Option(help="Known-model registry file or folder (repeatable).")
    ] = None,
    identity: Annotated[
        bool, typer.Option("--identity", help="Only what the file is: no fingerprint, no comparison.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fingerprint MODEL, compare it with the reference library, estimate its recipe."""
    from sdforensics.api import analyze as do_analyze
    from sdforensics.api import identify

    bar = _bar("analyze", quiet)
    compare_bar = _bar("compare", quiet)

    def go() -> Any:
        if identity:
            return identify(model, progress=bar, registry_dirs=registry)
        return do_analyze(
            model, library=library, device=device.value, progress=bar, registry_dirs=registry,
            library_progress=compare_bar,
        )  # fmt: skip

    def render() -> str:
        result = go()
        bar.close()
        compare_bar.close()
        if format is Format.json:
            from sdforensics.report.render_json import analysis_to_json

            return json.dumps(analysis_to_json(result), indent=1, default=str)
        if format is Format.html:
            from sdforensics.report.render_html import analysis_to_html

            return analysis_to_html(result)
        from sdforensics.report.render_text import analysis_to_text

        return analysis_to_text(result)

    _emit(run(render), out)


@app.command()
def compare(
    a: Path,
    b: Path,
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.text,
    quiet: QuietOpt = False,
) -> None:
    """Exact per-layer and per-block comparison of two local checkpoints (streams both)."""
    from sdforensics.file_compare import compare_files

    def go() -> str:
        result = compare_files(a, b)
        return json.dumps(result.to_json(), indent=1) if format is ListFormat.json else result.to_text()

    _emit(run(go), None)


@app.command()
def scan(
    path: Path,
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.text,
) -> None:
    """List every global a pickle names with a verdict. Exit 0 clean, 1 dangerous, 2 error."""
    from sdforensics.readers.scan import exit_code, render_scan_text, scan_path, scan_to_json

    report = run(lambda: scan_path(path))
    _emit(
        json.dumps(scan_to_json(report), indent=1) if format is ListFormat.json else render_scan_text(report),
        None,
    )
    raise typer.Exit(exit_code(report))


# ---------------------------------------------------------------- refs


def _target_library(library: Path | None) -> Path:
    from sdforensics.library.store import user_library

    return library if library is not None else user_library()


@refs_app.command("add")
def refs_add(
    model: Path,
    name: Annotated[str, typer.Option("--name", help="How reports will call this reference.")],
    official: Annotated[bool, typer.Option("--official", help="Mark as the family's official base.")] = False,
    library: LibraryOpt = None,
    device: DeviceOpt = Device.auto,
    quiet: QuietOpt = False,
) -> None:
    """Fingerprint MODEL (a checkpoint or a LoRA) and store it in the library as NAME."""
    from sdforensics.api import fingerprint_any
    from sdforensics.library.store import Library

    bar = _bar("fingerprint", quiet)

    def go() -> str:
        label, fp = fingerprint_any(model, device.value, bar)
        bar.close()
        lib = Library(_target_library(library))
        entry = lib.add(fp, name, official=official)
        size = entry.path.stat().st_size
        kind = "official base" if official else "reference"
        return f"added {kind} {name!r} ({label}) to {lib.folder} ({size / 1e6:.1f} MB fingerprint)"

    _emit(run(go), None)


@refs_app.command("import")
def refs_import(
    fingerprint: Path,
    name: Annotated[
        str | None, typer.Option(help="Name (default: the one stored in the fingerprint).")
    ] = None,
    official: Annotated[bool, typer.Option("--official")] = False,
    library: LibraryOpt = None,
) -> None:
    """Add a fingerprint file someone shared (no weights needed)."""
    from sdforensics.fingerprint.fpfile import load_fingerprint
    from sdforensics.library.store import Library

    def go() -> str:
        fp = load_fingerprint(fingerprint)
        ref_name = name or fp.name
        if not ref_name:
            raise SdfError(f"{fingerprint}: the fingerprint has no name; pass --name")
        lib = Library(_target_library(library))
        lib.add(fp, ref_name, official=official)
        return f"imported {ref_name!r} into {lib.folder}"

    _emit(run(go), None)


@refs_app.command("remove")
def refs_remove(name: str, library: LibraryOpt = None) -> None:
    """Remove NAME from the library."""
    from sdforensics.library.store import Library

    def go() -> str:
        lib = Library(_target_library(library))
        lib.remove(name)
        return f"removed {name!r} from {lib.folder}"

    _emit(run(go), None)


@refs_app.command("list")
def refs_list(
    library: LibraryOpt = None,
    format: Annotated[ListFormat, typer.Option("--format", "-f")] = ListFormat.text,
    registry: Annotated[
        bool, typer.Option(help="Include the known-model registry (hash-only entries).")
    ] = True,
) -> None:
    """References with fingerprints, and registry entries known by hash only."""
    from sdforensics.library.reflist import list_references

    def go() -> str:
        rows = list_references(library, include_registry=registry)
        if format is ListFormat.json:
            return json.dumps({"schema": "sdforensics.refs/1", "references": rows}, indent=1)
        lines = []
        for r in rows:
            mark = "fingerprint" if r["fingerprint"] else "hash only  "
            off = " [official]" if r.get("official") else ""
            lines.append(f"{mark}  {r.get('family') or '-':5}  {printable(str(r['name']), 80)}{off}")
        n_fp = sum(1 for r in rows if r["fingerprint"])
        lines.append(f"{n_fp} fingerprinted references, {len(rows) - n_fp} known by hash only")
        return "\n".join(lines)

    _emit(run(go), None)


@refs_app.command("verify")
def refs_verify(library: LibraryOpt = None) -> None:
    """Check every library file against its MANIFEST.sha256."""
    from sdforensics.library.store import Library, search_path

    def go() -> list[str]:
        problems = []
        for folder in search_path(library):
            if not folder.exists():
                continue
            problems += [f"{folder}: {p}" for p in Library(folder).verify()]
        return problems

    problems = run(go)
    if problems:
        for p in problems:
            typer.echo(printable(p, 500), err=True)
        raise typer.Exit(1)
    typer.echo("ok: every library file matches its manifest")


@refs_app.command("build-official")
def refs_build_official(
    from_dir: Annotated[Path, typer.Option("--from", help="Folder with official models you downloaded.")],
    library: LibraryOpt = None,
    registry: Annotated[
        list[Path] | None, typer.Option(help="Registry file or folder (default: shipped).")
    ] = None,
    device: DeviceOpt = Device.auto,
    quiet: QuietOpt = False,
) -> None:
    """Fingerprint the official models found in --from (recognised by SHA-256) as official bases."""
    from sdforensics.api import build_official

    def go() -> str:
        added = build_official(
            from_dir, _target_library(library), registry, device.value, _bar("fingerprint", quiet)
        )
        if not added:
            return f"no official model found in {from_dir} (files are recognised by their SHA-256)"
        return "\n".join(f"added official {n!r} from {printable(str(p), 200)}" for n, p in added)

    _emit(run(go), None)


# ---------------------------------------------------------------- synth


@synth_app.command("family")
def synth_family(
    out: Path,
    family: Annotated[str, typer.Option(help="sd1, sd2 or sdxl")] = "sd1",
    width: Annotated[int, typer.Option(help="1 = full size; n = 1/n of the release width")] = 16,
    finetunes: Annotated[
        int, typer.Option(help="Number of fine-tunes (the last is a child of the first)")
    ] = 6,
    seed: int = 0,
    fmt: Annotated[str, typer.Option("--format", help="safetensors, ckpt or diffusers")] = "safetensors",
) -> None:
    """Write an official-style base and FINETUNES fine-tunes (one a child of another) into OUT."""
    from sdforensics.synth.specs import write_family

    def go() -> str:
        paths = write_family(out, family, width, finetunes, seed, fmt)
        return "\n".join(str(p) for p in paths)

    _emit(run(go), None)


@synth_app.command("merge")
def synth_merge(
    out: Path,
    family: Annotated[str, typer.Option()] = "sd1",
    width: Annotated[int, typer.Option()] = 16,
    seed: int = 0,
    recipe: Annotated[
        str, typer.Option(help="e.g. 'ft1:0.6,ft2:0.4' over the family's models (base, ft1..)")
    ] = "ft1:0.65,ft2:0.35",
) -> None:
    """Write a weighted merge of members of the synthetic family (same --family/--width/--seed)."""
    from sdforensics.synth.specs import family_specs, parse_recipe, write_safetensors

    def go() -> str:
        specs = family_specs(family, width, 6, seed)
        path = write_safetensors(parse_recipe(recipe, specs), out)
        return str(path)

    _emit(run(go), None)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder for the demo files.")] = Path("sdf-demo"),
    quiet: QuietOpt = False,
) -> None:
    """Build a small synthetic SD1.5 family, fingerprint it, and analyse an undocumented mix of it."""
    from sdforensics.demo import run_demo

    def go() -> str:
        return run_demo(out, log=lambda m: typer.echo(m, err=True) if not quiet else None)

    _emit(run(go), None)


def main() -> None:
    from sdforensics.core.runtime import tune_allocator

    tune_allocator()
    app()


if __name__ == "__main__":
    main()
