"""The quick-start notebook uses only the public API (issue 15, item 18; issue 16): the top-level
``sdforensics`` names, the analysis they return and the synthetic-model builder, never internal modules
that may move."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
PUBLIC = {"sdforensics", "sdforensics.synth.specs"}


def _sdforensics_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sdforensics"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("sdforensics"))
    return found


def test_quickstart_imports_only_the_public_api() -> None:
    imports = _sdforensics_imports(NOTEBOOK)
    assert "sdforensics" in imports
    assert imports <= PUBLIC, sorted(imports - PUBLIC)


def test_add_reference_fills_a_library_the_cli_reads(family: dict[str, Path], tmp_path: Path) -> None:
    from sdforensics import analyze
    from sdforensics.api import add_reference

    lib = tmp_path / "lib"
    base = add_reference(family["base"], lib, "sd15-base", official=True, device="cpu")
    add_reference(family["ft1"], lib, "ft1", device="cpu")
    assert base.official and base.name == "sd15-base"
    a = analyze(family["ft1"], library=lib, device="cpu")
    assert "ft1" in a.to_text()
