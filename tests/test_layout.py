"""Issue 16: the package layout's rules, checked on the source (import-linter checks the layers in CI)."""

from __future__ import annotations

import ast
from pathlib import Path

from sdforensics.model.architecture import block_map_of

PKG = Path(__file__).resolve().parents[1] / "sdforensics"
# production modules allowed to import sdforensics.synth: the `sdf demo` / `sdf synth` commands
SYNTH_USERS = {"cli.py", "demo.py"}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_production_module_imports_synth() -> None:
    offenders = []
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG)
        if rel.parts[0] == "synth" or str(rel) in SYNTH_USERS:
            continue
        if any(m == "sdforensics.synth" or m.startswith("sdforensics.synth.") for m in _imports(f)):
            offenders.append(str(rel))
    assert offenders == []


def test_analysis_imports_no_renderer() -> None:
    assert not any(m.startswith("sdforensics.report") for m in _imports(PKG / "analysis.py"))


def test_block_convention_comes_from_the_architectures_block_map() -> None:
    """Issue 15 item 21: SDXL blocks end at OUT08, SD1/SD2 at OUT11; the refiner has its own map."""
    assert "final out. in OUT08" in block_map_of("sdxl").recipe_convention
    assert "final out. in OUT11" in block_map_of("sd1").recipe_convention
    assert "final out. in OUT11" in block_map_of("sd2").recipe_convention
    assert block_map_of("sdxl_refiner").name == "sdxl_refiner"
    assert block_map_of("flux").name == "sd1"  # no map named: the default, as before


def test_repr_of_an_analysis_is_one_short_line(family: dict[str, Path], library: Path) -> None:
    """Issue 15 item 17: repr was ~480,000 characters."""
    import sdforensics

    a = sdforensics.analyze(family["ft1"], library=library, device="cpu")
    text = repr(a)
    assert "\n" not in text and len(text) < 300 and "ft1.safetensors" in text
    assert "<div" in a._repr_html_()
