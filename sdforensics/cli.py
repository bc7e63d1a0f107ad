"""``sdf``: the command line. It parses options, calls the library and prints; nothing else.

Every user-facing failure is an :class:`~sdforensics.core.errors.SdfError`, printed as one line on
stderr with exit code 2. Progress goes to stderr; ``--format json`` prints exactly one JSON
document on stdout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from sdforensics.core import json_out
from sdforensics.core.errors import SdfError
from sdforensics.core.progress import ProgressBar
from sdforensics.core.safetext import printable

if TYPE_CHECKING:  # the library loads on first use, so `sdf -h` stays fast
    from sdforensics.fingerprinting.fingerprint import Fingerprint
    from sdforensics.library.store import Library, RefEntry

# click's UsageError and ClickException, found through typer's public BadParameter: typer >= 0.2x
# vendors its own copy of click, older typer uses the click package.
_UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _UsageLine(_ClickException):
    """A usage mistake (unknown option, bad choice) as one line on stderr, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {printable(self.format_message(), 2000)}", err=True)


def _one_line(err: Any) -> Any:
    """Click's usage block and boxed error for a typo, as one line naming the fix (help is kept)."""
    if not isinstance(err, _UsageError) or type(err).__name__ == "NoArgsIsHelpError":
        return err
    where = err.ctx.command_path if getattr(err, "ctx", None) is not None else "sdf"
    return _UsageLine(f"{err.format_message()} (see '{where} -h')")


class _OneLineGroup(TyperGroup):
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except Exception as err:
            raise _one_line(err) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            raise _one_line(err) from None

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The command, its arguments shown by their metavar alone (``MODEL``, not ``MODEL <path>``)."""
        cmd = super().get_command(ctx, cmd_name)
        for param in getattr(cmd, "params", ()):
            if param.param_type_name == "argument" and param.metavar:
                param.display_type_rich = _no_type
        return cmd


def _no_type(ctx: Any) -> None:
    return None


_SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="What did the author mix in, and how much?",
    cls=_OneLineGroup, rich_markup_mode=None, context_settings=_SETTINGS,
)
refs_app = typer.Typer(
    no_args_is_help=True, help="Manage the reference library (fingerprints of known models).",
    cls=_OneLineGroup, rich_markup_mode=None,
)
synth_app = typer.Typer(
    no_args_is_help=True, help="Write synthetic checkpoints with real SD layouts (tests, demos).",
    cls=_OneLineGroup, rich_markup_mode=None,
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


class Family(str, Enum):
    sd1 = "sd1"
    sd2 = "sd2"
    sdxl = "sdxl"


class SaveAs(str, Enum):
    safetensors = "safetensors"
    ckpt = "ckpt"
    diffusers = "diffusers"


LibraryOpt = Annotated[
    Path | None,
    typer.Option("--library", metavar="DIR", help="Use this library folder only (default: shipped + user library)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
DeviceOpt = Annotated[Device, typer.Option(metavar="auto|cpu|cuda", help="Where to compute fingerprints.")]
ListFormatOpt = Annotated[
    ListFormat, typer.Option("--format", "-f", metavar="text|json", help="text, or one JSON document on stdout.")
]


def _version(value: bool) -> None:
    if value:
        from sdforensics import __version__

        typer.echo(f"sdforensics {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """What did the author mix in, and how much?"""


def _existing_library(library: Path | None) -> None:
    """``--library DIR`` for reading must exist: a typo is an error, not an empty library."""
    if library is not None and not library.is_dir():
        what = "is not a folder" if library.exists() else "does not exist"
        raise _fail(f"{library}: library folder {what} (create one with 'sdf refs add MODEL --name NAME "
                    f"--library {library}')")


def _add_reference(lib: Library, fp: Fingerprint, name: str, official: bool, model: Path | None = None) -> RefEntry:
    """Add ``fp`` to ``lib`` as ``name`` (``refs add`` and ``refs import``), first warning on stderr when
    that replaces a reference or stores a file the library already holds under another name.
    ``model``: the file it was made from, recorded in the catalog."""
    from sdforensics.library.refcheck import add_warnings
    from sdforensics.library.store import source_file

    for warning in add_warnings(lib, name, fp.identity):
        typer.echo(f"warning: {printable(warning, 500)}", err=True)
    src = source_file(model, fp.identity.get("sha256")) if model is not None else None
    return lib.add(fp, name, official=official, sources=[src] if src else [])


def _writable_out(out: Path | None) -> None:
    """Refuse ``--out`` before any work when the report could not be written there."""
    if out is None:
        return
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise _fail(f"{out}: --out names a folder; give a file name")
    if not folder.is_dir():
        raise _fail(f"{out}: cannot write the report: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise _fail(f"{out}: cannot write the report: permission denied")


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
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A .safetensors, .ckpt/.pt/.bin file or a diffusers folder, or a URL (https://, s3://, hf://...: "
            "read where it is, never written to disk).",
        ),
    ],
    library: LibraryOpt = None,
    format: Annotated[
        Format, typer.Option("--format", "-f", metavar="text|json|html", help="Report format.")
    ] = Format.text,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE", help="Write the report here instead of stdout.")
    ] = None,
    device: DeviceOpt = Device.auto,
    registry: Annotated[
        list[Path] | None,
        typer.Option(metavar="PATH", help="Known-model registry file or folder (repeatable; default: shipped)."),
    ] = None,
    identity: Annotated[
        bool, typer.Option("--identity", help="Only what the file is: no fingerprint, no comparison.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fingerprint MODEL, compare it with the reference library, estimate its recipe."""
    from sdforensics.api import analyze as do_analyze
    from sdforensics.api import identify
    from sdforensics.readers.remote import as_location

    _writable_out(out)
    _existing_library(library)
    bar = _bar("analyze", quiet)
    compare_bar = _bar("compare", quiet)

    where = as_location(model)

    def go() -> Any:
        if identity:
            return identify(where, progress=bar, registry_dirs=registry)
        return do_analyze(
            where, library=library, device=device.value, progress=bar, registry_dirs=registry,
            library_progress=compare_bar,
        )  # fmt: skip

    def render() -> str:
        result = go()
        bar.close()
        compare_bar.close()
        if format is Format.json:
            from sdforensics.report.render_json import analysis_to_json

            return json_out.dumps(analysis_to_json(result), indent=1, default=str)
        if format is Format.html:
            from sdforensics.report.render_html import analysis_to_html

            return analysis_to_html(result)
        from sdforensics.report.render_text import analysis_to_text

        return analysis_to_text(result)

    _emit(run(render), out)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="Second checkpoint (same architecture).")],
    base: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="The family base both derive from: also show change-from-base cosines (default: the library's "
            "official base of the family, if the file it was added from is still there).",
        ),
    ] = None,
    library: LibraryOpt = None,
    format: ListFormatOpt = ListFormat.text,
    quiet: QuietOpt = False,
) -> None:
    """Exact per-layer and per-block comparison of two local checkpoints (streams both)."""
    from sdforensics.api import library_base_file
    from sdforensics.file_compare import compare_files

    _existing_library(library)

    def go() -> str:
        found = library_base_file(a, library) if base is None else None
        base_file, base_name = (found[1], found[0]) if found else (base, None)
        result = compare_files(a, b, base=base_file, base_name=base_name)
        return json_out.dumps(result.to_json(), indent=1) if format is ListFormat.json else result.to_text()

    _emit(run(go), None)


@app.command()
def scan(
    path: Annotated[Path, typer.Argument(metavar="FILE|DIR", help="A file, or a folder scanned recursively.")],
    format: ListFormatOpt = ListFormat.text,
    quiet: QuietOpt = False,
) -> None:
    """List every global a pickle names with a verdict. Exit 0: every pickle walked to its end and every global
    allowed; 1: dangerous, or not shown safe; 2: not a model or unreadable."""
    from sdforensics.readers.scan import exit_code, render_scan_text, scan_path, scan_to_json

    report = run(lambda: scan_path(path))
    _emit(
        json_out.dumps(scan_to_json(report), indent=1) if format is ListFormat.json else render_scan_text(report),
        None,
    )
    raise typer.Exit(exit_code(report))


# ---------------------------------------------------------------- refs


def _target_library(library: Path | None) -> Path:
    from sdforensics.library.store import user_library

    return library if library is not None else user_library()


@refs_app.command("add")
def refs_add(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="A checkpoint or a LoRA file.")],
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="How reports will call this reference.")],
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
        from sdforensics.fingerprinting.fingerprint import scheme_from_json

        lib = Library(_target_library(library))
        recorded = lib.scheme()  # made the library's way, so a library of an older scheme keeps growing
        label, fp = fingerprint_any(model, device.value, bar, scheme=scheme_from_json(recorded) if recorded else None)
        bar.close()
        entry = _add_reference(lib, fp, name, official, model)
        size = entry.path.stat().st_size
        kind = "official base" if official else "reference"
        return f"added {kind} {name!r} ({label}) to {lib.folder} ({size / 1e6:.1f} MB fingerprint)"

    _emit(run(go), None)


@refs_app.command("import")
def refs_import(
    fingerprint: Annotated[Path, typer.Argument(metavar="FP", help="A .sdfp fingerprint file.")],
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Name (default: the one stored in the fingerprint).")
    ] = None,
    official: Annotated[bool, typer.Option("--official", help="Mark as the family's official base.")] = False,
    library: LibraryOpt = None,
) -> None:
    """Add a fingerprint file someone shared (no weights needed)."""
    from sdforensics.fingerprinting.fpfile import load_fingerprint
    from sdforensics.library.store import Library

    def go() -> str:
        fp = load_fingerprint(fingerprint)
        ref_name = name or fp.name
        if not ref_name:
            raise SdfError(f"{fingerprint}: the fingerprint has no name; pass --name")
        lib = Library(_target_library(library))
        _add_reference(lib, fp, ref_name, official)
        return f"imported {ref_name!r} into {lib.folder}"

    _emit(run(go), None)


@refs_app.command("remove")
def refs_remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The reference to remove.")],
    library: LibraryOpt = None,
) -> None:
    """Remove NAME from the library."""
    from sdforensics.library.store import Library

    _existing_library(library)

    def go() -> str:
        lib = Library(_target_library(library))
        lib.remove(name)
        return f"removed {name!r} from {lib.folder}"

    _emit(run(go), None)


@refs_app.command("list")
def refs_list(
    library: LibraryOpt = None,
    format: ListFormatOpt = ListFormat.text,
    registry: Annotated[
        bool, typer.Option("--registry", help="Also list the known-model registry's hash-only entries.")
    ] = False,
) -> None:
    """Your fingerprinted references; --registry adds the models known by hash only."""
    from sdforensics.library.reflist import list_references, render_reference_list

    _existing_library(library)

    def go() -> str:
        rows = list_references(library, include_registry=True)
        if format is ListFormat.json:
            shown = rows if registry else [r for r in rows if r["fingerprint"]]
            return json_out.dumps({"schema": "sdforensics.refs/1", "references": shown}, indent=1)
        return render_reference_list(rows, registry)

    _emit(run(go), None)


@refs_app.command("verify")
def refs_verify(library: LibraryOpt = None, format: ListFormatOpt = ListFormat.text, quiet: QuietOpt = False) -> None:
    """Check the catalog and every fingerprint file against the SHA-256 it recorded (a registry folder: its
    MANIFEST.sha256); exit 1 when one differs."""
    from sdforensics.library.store import Library, search_path

    _existing_library(library)

    def go() -> list[str]:
        problems = []
        for folder in search_path(library):
            if not folder.exists():
                continue
            problems += [f"{folder}: {p}" for p in Library(folder).verify()]
        return problems

    problems = run(go)
    if format is ListFormat.json:
        folders = [str(f) for f in run(lambda: search_path(library))]
        typer.echo(json_out.dumps({"schema": "sdforensics.verify/1", "ok": not problems, "libraries": folders,
                               "problems": problems}, indent=1))
    else:
        for p in problems:
            typer.echo(printable(p, 500), err=True)
        if not problems and not quiet:
            typer.echo("ok: every library file matches what its library recorded")
    if problems:
        raise typer.Exit(1)


@refs_app.command("build-official")
def refs_build_official(
    from_dir: Annotated[
        Path, typer.Option("--from", metavar="DIR", help="Folder with official models you downloaded.")
    ],
    library: LibraryOpt = None,
    registry: Annotated[
        list[Path] | None, typer.Option(metavar="PATH", help="Registry file or folder (default: shipped).")
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


# ---------------------------------------------------------------- index


class EngineName(str, Enum):
    local = "local"
    ray = "ray"


@app.command()
def index(
    paths: Annotated[
        list[str],
        typer.Argument(
            metavar="PATH",
            help="Model files or folders (searched recursively), or URLs of model files (https://, s3://, hf://...: "
            "read where they are).",
        ),
    ],
    library: Annotated[
        Path | None,
        typer.Option("--library", metavar="DIR", help="The library folder to index into (default: the user library)."),
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Files fingerprinted at once.")] = 1,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when a file was skipped (not a model, unreadable, hostile).")
    ] = False,
    device: DeviceOpt = Device.cpu,
    format: ListFormatOpt = ListFormat.text,
    quiet: QuietOpt = False,
    engine: Annotated[
        EngineName,
        typer.Option("--engine", metavar="local|ray",
                     help="local: a process pool here (--jobs); ray: one Ray task per file on a Ray cluster."),
    ] = EngineName.local,
    address: Annotated[
        str | None,
        typer.Option("--address", metavar="ADDR",
                     help="The Ray cluster (e.g. ray://head:10001, auto); default: a local one for this run."),
    ] = None,
) -> None:
    """Fingerprint every model under PATH... into the library; a re-run reads only new or changed files."""
    from sdforensics.collection.engine import LocalEngine
    from sdforensics.collection.index import index_paths
    from sdforensics.readers.remote import as_location

    show = _index_progress(quiet)
    where: list[Path | str] = [str(as_location(p)) if "://" in p else Path(p) for p in paths]

    def go() -> Any:
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None  # each worker its share of the cores
        run_on: Any = LocalEngine(jobs)
        if engine is EngineName.ray:
            from sdforensics.collection.ray_engine import RayEngine
            from sdforensics.collection.task import failed_result

            run_on, threads = RayEngine(address, use_gpus=device.value != "cpu", failed=failed_result), None
        elif address is not None:
            raise SdfError("--address names a Ray cluster; use it with --engine ray")
        return index_paths(where, _target_library(library), run_on, show, device.value, threads=threads)

    summary = run(go)
    if format is ListFormat.json:
        _emit(json_out.dumps(summary.to_json(), indent=1), None)
    else:
        _emit(_index_text(summary), None)
    if strict and summary.skipped:
        raise typer.Exit(1)


def _index_progress(quiet: bool) -> Callable[[Any], None] | None:
    """Progress on stderr: redrawn in place on a terminal, one line per file otherwise."""
    if quiet:
        return None
    tty = sys.stderr.isatty()

    def show(p: Any) -> None:
        if p.files_total == 0:
            return
        eta = f", ETA {p.eta:.0f} s" if p.eta is not None and p.files_done < p.files_total else ""
        line = (f"index: {p.files_done}/{p.files_total} files, {p.bytes_done / 1e9:.2f}/{p.bytes_total / 1e9:.2f} GB, "
                f"{p.rate / 1e6:.0f} MB/s{eta}")
        if p.last is not None and not tty:
            line += f"  {p.last.status}: {printable(p.last.path, 200)}"
        typer.echo(("\r" + line + " " * 8) if tty else line, err=True, nl=not tty)
        if tty and p.files_done == p.files_total:
            typer.echo("", err=True)

    return show


def _index_text(summary: Any) -> str:
    lines = [f"{len(summary.fingerprinted)} fingerprinted, {summary.unchanged} unchanged, "
             f"{len(summary.same)} touched (same content), {len(summary.moved)} moved or copied, "
             f"{len(summary.skipped)} skipped; {summary.files} model files under the paths, "
             f"library {summary.library} ({summary.seconds:.1f} s)"]
    lines += [f"added {printable(n, 100)}{' (official base)' if n in summary.official else ''}: {printable(p, 300)}"
              for p, n in summary.fingerprinted]
    lines += [f"recognised {printable(p, 300)} as {printable(n, 100)} (by its sha256)" for p, n in summary.moved]
    not_models = [(p, r) for p, r in summary.skipped if r.startswith("not a model file")]
    others = [(p, r) for p, r in summary.skipped if not r.startswith("not a model file")]
    lines += [f"skipped {printable(p, 300)}: {printable(r, 300)}" for p, r in others]
    if len(not_models) > 10:
        lines.append(f"skipped {len(not_models)} files that are not model files (listed with --format json)")
    else:
        lines += [f"skipped {printable(p, 300)}: {r}" for p, r in not_models]
    return "\n".join(lines)


class MapFormat(str, Enum):
    html = "html"
    json = "json"
    dot = "dot"
    text = "text"


@app.command("map")
def map_(
    paths: Annotated[
        list[str] | None,
        typer.Argument(metavar="[PATH]...", help="Model files or folders: indexed first (as 'sdf index' does) into "
                       "--library, or, without it, into a library of their own under the user data folder."),
    ] = None,
    library: Annotated[
        Path | None, typer.Option("--library", metavar="DIR", help="The library to map (and to index PATHs into).")
    ] = None,
    format: Annotated[
        MapFormat, typer.Option("--format", "-f", metavar="html|json|dot|text", help="Output format.")
    ] = MapFormat.text,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE", help="Write the map here instead of stdout.")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", metavar="NAME", help="The family base (default: the official reference).")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Files fingerprinted at once.")] = 1,
    quiet: QuietOpt = False,
) -> None:
    """The lineage of a whole collection: copies, re-saves and shared components, the similarity of the
    models' changes, and each model's recipe from the others (fine-tunes, merges with weights)."""
    from sdforensics.collection.mapping import map_collection, map_library_for

    _writable_out(out)
    if not paths and library is None:
        raise _fail("give model folders (PATH...) or --library DIR")
    if not paths:
        _existing_library(library)
    show = _index_progress(quiet)
    bar = _bar("map", quiet)

    def go() -> str:
        lib = library
        if paths:
            from sdforensics.collection.engine import LocalEngine
            from sdforensics.collection.index import index_paths

            lib = library if library is not None else map_library_for([Path(p) for p in paths])
            summary = index_paths([Path(p) for p in paths], lib, LocalEngine(jobs), show, "cpu")
            if not quiet:
                typer.echo(f"indexed into {lib}: {len(summary.fingerprinted)} fingerprinted, {summary.unchanged} "
                           f"unchanged, {len(summary.skipped)} skipped", err=True)
        shown = None if quiet else (lambda stage, done, total: bar(done, total))
        result = map_collection(lib if lib is not None else Path("."), base=base, progress=shown)
        bar.close()
        from sdforensics.report import render_map

        if format is MapFormat.json:
            return render_map.map_to_json(result)
        if format is MapFormat.dot:
            return render_map.map_to_dot(result)
        if format is MapFormat.html:
            return render_map.map_to_html(result)
        return render_map.map_to_text(result)

    _emit(run(go), out)


# ---------------------------------------------------------------- synth


FamilyOpt = Annotated[Family, typer.Option(metavar="sd1|sd2|sdxl", help="Architecture of the family.")]
WidthOpt = Annotated[int, typer.Option(metavar="N", help="1 = full size; n = 1/n of the release width.")]
SeedOpt = Annotated[int, typer.Option(metavar="N", help="Random seed (the same seed gives the same family).")]


def _paths_out(paths: list[Path], format: ListFormat) -> str:
    if format is ListFormat.json:
        return json_out.dumps({"schema": "sdforensics.synth/1", "files": [str(p) for p in paths]}, indent=1)
    return "\n".join(str(p) for p in paths)


@synth_app.command("family")
def synth_family(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to write the models into.")],
    family: FamilyOpt = Family.sd1,
    width: WidthOpt = 16,
    finetunes: Annotated[
        int, typer.Option(metavar="N", help="Number of fine-tunes (the last is a child of the first).")
    ] = 6,
    seed: SeedOpt = 0,
    save_as: Annotated[
        SaveAs, typer.Option("--save-as", metavar="safetensors|ckpt|diffusers", help="File format to write.")
    ] = SaveAs.safetensors,
    format: ListFormatOpt = ListFormat.text,
    quiet: QuietOpt = False,
) -> None:
    """Write an official-style base and N fine-tunes (one a child of another) into OUT."""
    from sdforensics.synth.specs import write_family

    def go() -> str:
        paths = write_family(out, family.value, width, finetunes, seed, save_as.value)
        return _paths_out(paths, format)

    _emit(run(go), None)


@synth_app.command("merge")
def synth_merge(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="The .safetensors file to write.")],
    family: FamilyOpt = Family.sd1,
    width: WidthOpt = 16,
    seed: SeedOpt = 0,
    recipe: Annotated[
        str, typer.Option(metavar="RECIPE", help="e.g. 'ft1:0.6,ft2:0.4' over the family's models (base, ft1..).")
    ] = "ft1:0.65,ft2:0.35",
    format: ListFormatOpt = ListFormat.text,
    quiet: QuietOpt = False,
) -> None:
    """Write a weighted merge of members of the synthetic family (same --family/--width/--seed)."""
    from sdforensics.synth.specs import family_specs, parse_recipe, write_safetensors

    def go() -> str:
        specs = family_specs(family.value, width, 6, seed)
        path = write_safetensors(parse_recipe(recipe, specs), out)
        return _paths_out([path], format)

    _emit(run(go), None)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Working folder for the demo files.")] = Path("sdf-demo"),
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
