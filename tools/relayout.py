"""Issue 16's package layout: move the flat modules into subpackages and rewrite imports.

    python tools/relayout.py --move        # git mv + rewrite (run once, on the old layout)
    python tools/relayout.py FILE...       # rewrite imports in files written for the old layout

The second form is for branches written against the flat layout: after merging them, run it on
the files they added or changed (tests, bench scripts, modules) to point their imports at the
new modules. It only rewrites dotted ``sdforensics.<old>`` names and ``from sdforensics import
<old>``; it changes nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# old module (under sdforensics/) -> new module
MOVES: dict[str, str] = {
    # core: no imports from the other subpackages
    "errors": "core.errors",
    "runtime": "core.runtime",
    "progress": "core.progress",
    "safetext": "core.safetext",
    "dtypes": "core.dtypes",
    # readers: containers, pickle walking, scanning
    "pickle_ops": "readers.pickle_ops",
    "scan": "readers.scan",
    # model: what a checkpoint is (architecture tables and detection, keys, the streaming pass, hashes)
    "tables": "model.architecture",
    "arch": "model.detect",
    "keymap": "model.keymap",
    "diffusers_keys": "readers.diffusers_keys",  # (model/ in the first move; the reader owns it)
    "passes": "model.stream",
    "hashing": "model.hashing",
    "byte_identity": "model.byte_identity",
    "identity": "model.identity",
    "metadata": "model.metadata",
    "problems": "model.problems",
    # fingerprint: sketches, fingerprints, their file format, similarity math
    "sketch": "fingerprint.sketch",
    "fingerprint": "fingerprint.fingerprint",
    "fpfile": "fingerprint.fpfile",
    "compare": "fingerprint.similarity",
    # library: references on disk, batched search, known-hash registry, official models
    "library": "library.store",
    "library_compare": "library.search",
    "manifest": "library.manifest",
    "registry": "library.registry",
    "official": "library.official",
    "reflist": "library.reflist",
    # recipe: the estimate from a fingerprint and its references
    "estimate": "recipe.estimate",
    "estimate_fit": "recipe.fit",
    "estimate_types": "recipe.results",
    "nonlinear": "recipe.nonlinear",
    "recipe_text": "recipe.text",
    # lora: LoRA files and their fingerprints
    "lora": "lora.files",
    "lora_keys": "lora.keys",
    "lora_bake": "lora.fingerprint",
    # report: renderers
    "render_text": "report.render_text",
    "render_json": "report.render_json",
    "render_html": "report.render_html",
    "frames": "report.frames",
    "plots": "report.plots",
    # synth: test and demo data, out of every production path
    "synth": "synth.specs",
    "synth_diffusers": "synth.diffusers",
    "estimate_synth": "synth.estimate_layers",
    # top level
    "pairwise": "file_compare",
}

# modules that branches on the flat layout added after the move (issues 15 and 20): where they went
ADDED: dict[str, str] = {
    "embedding": "model.embedding",
    "json_out": "core.json_out",
    "lora_factors": "lora.factors",
    "refcheck": "library.refcheck",
    "shape_bounds": "readers.shape_bounds",
    "shipped": "library.shipped",
    "zip_members": "readers.zip_members",
}

# relative imports in the moved reader/scan modules (exact lines)
RELATIVE = {
    "from ..dtypes import": "from ..core.dtypes import",
    "from ..errors import": "from ..core.errors import",
    "from ..pickle_ops import": "from .pickle_ops import",
    "from ..scan import": "from .scan import",
    "from .errors import": "from ..core.errors import",
    "from .readers.base import": "from .base import",
    "from .readers.pickle_reader import": "from .pickle_reader import",
}

_RENAMES = {**MOVES, **ADDED}
_DOTTED = re.compile(
    r"\bsdforensics\.(" + "|".join(sorted(map(re.escape, _RENAMES), key=len, reverse=True)) + r")(?![\w/\"'])"
)
_FROM = re.compile(r"\bfrom sdforensics import ([\w, ]+)")


def _from(m: re.Match[str]) -> str:
    names = [n.strip() for n in m.group(1).split(",")]
    moved = [n for n in names if n in _RENAMES]
    if not moved:
        return m.group(0)
    out = []
    for n in names:
        if n not in _RENAMES:
            out.append(f"from sdforensics import {n}")
            continue
        pkg, _, mod = _RENAMES[n].rpartition(".")
        parent = f"sdforensics.{pkg}" if pkg else "sdforensics"
        out.append(f"from {parent} import {mod}" + ("" if mod == n else f" as {n}"))
    # one statement per name would change indentation-sensitive code: only join plain cases
    if len({o.rsplit(' import ', 1)[0] for o in out}) == 1 and all(" as " not in o for o in out):
        return out[0].rsplit(" import ", 1)[0] + " import " + ", ".join(o.rsplit(" import ", 1)[1] for o in out)
    if len(out) == 1:
        return out[0]
    raise SystemExit(f"cannot rewrite {m.group(0)!r} in one line: do it by hand")


def rewrite(text: str, relative: bool = False) -> str:
    text = _DOTTED.sub(lambda m: "sdforensics." + _RENAMES[m.group(1)], text)
    text = _FROM.sub(_from, text)
    if relative:
        for old, new in RELATIVE.items():
            text = text.replace(old, new)
    return text


def _files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    keep = (".py", ".ipynb", ".md", ".toml", ".cfg", ".txt")
    return [ROOT / f for f in out.split() if f.endswith(keep) or f == ".ci/run"]


def move() -> None:
    pkgs = sorted({new.rpartition(".")[0] for new in MOVES.values() if "." in new})
    for pkg in pkgs:
        (ROOT / "sdforensics" / pkg).mkdir(exist_ok=True)
    for old, new in MOVES.items():
        src = f"sdforensics/{old}.py"
        dst = "sdforensics/" + new.replace(".", "/") + ".py"
        subprocess.run(["git", "mv", src, dst], cwd=ROOT, check=True)
    for pkg in pkgs:
        init = ROOT / "sdforensics" / pkg / "__init__.py"
        if not init.exists():
            init.write_text("")
            subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
    for f in _files():
        if f.name in ("relayout.py", "RESULTS.md"):
            continue
        text = f.read_text("utf-8")
        new = rewrite(text, relative=f.suffix == ".py" and f.parent.name == "readers")
        if new != text:
            f.write_text(new, "utf-8")


def main(argv: list[str]) -> None:
    if argv == ["--move"]:
        move()
        return
    for name in argv:
        p = Path(name)
        text = p.read_text("utf-8")
        new = rewrite(text, relative=p.parent.name == "readers")
        if new != text:
            p.write_text(new, "utf-8")
            print(f"rewrote {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
