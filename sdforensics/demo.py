"""``sdf demo``: the whole job on models it builds itself, so a newcomer sees it work.

It writes a small-width synthetic SD1.5 family (an official-style base and fine-tunes), adds
them to a demo library, writes an undocumented mix (0.5 ft1 + 0.3 ft2 + 0.2 ft3, saved in fp16
with no metadata), and analyses the mix against the library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sdforensics.api import analyze, fingerprint_model
from sdforensics.library.store import Library, source_file
from sdforensics.report.render_text import analysis_to_text
from sdforensics.synth.specs import Merge, family_specs, write_safetensors


def run_demo(out: Path, log: Callable[[str], None | object] = print, width: int = 16) -> str:
    out = Path(out)
    specs = family_specs("sd1", width=width, finetunes=4, seed=7)
    lib = Library(out / "library")
    for name, spec in specs.items():
        path = write_safetensors(spec, out / "models" / f"{name}.safetensors")
        _, fp = fingerprint_model(path, device="cpu")
        src = source_file(path, fp.identity.get("sha256"))
        lib.add(fp, "sd15-base" if name == "base" else name, official=name == "base", sources=[src] if src else [])
        log(f"reference {name}: {path}")
    mix = Merge(((0.5, specs["ft1"]), (0.3, specs["ft2"]), (0.2, specs["ft3"])))
    target = write_safetensors(mix, out / "mystery-mix.safetensors")
    log(f"undocumented mix (truth: 0.5 x ft1 + 0.3 x ft2 + 0.2 x ft3): {target}")
    result = analyze(target, library=lib.folder, device="cpu")
    return analysis_to_text(result).rstrip("\n") + "\n\n" + next_steps(out) + "\n"


def next_steps(out: Path) -> str:
    """The commands to run next, exactly as typed: the demo library is not on the default search path."""
    import shlex

    mix = shlex.quote(str(Path(out) / "mystery-mix.safetensors"))
    lib = shlex.quote(str(Path(out) / "library"))
    report = shlex.quote(str(Path(out) / "report.html"))
    ft1, ft2 = (shlex.quote(str(Path(out) / "models" / f"{n}.safetensors")) for n in ("ft1", "ft2"))
    return "\n".join([
        f"Next (the demo library is {lib}, so pass --library):",
        f"  sdf analyze {mix} --library {lib}",
        f"  sdf analyze {mix} --library {lib} --format html --out {report}",
        f"  sdf refs list --library {lib}",
        f"  sdf compare {ft1} {ft2} --library {lib}",
    ])
