"""The HTML report, the Jupyter view, DataFrames and figures, on a hostile little mix.

The mix is 0.6 x ft1 + 0.4 x ft2 of a width-16 synthetic SD1 family. Its file carries
``<script>`` in a tensor name and in metadata keys and values, and ft2 sits in the library under
a name with ``<script>`` and mathtext (``$\\frac{$``) in it: every one must come out escaped.
The Chromium test renders the report headless, checks there are no console messages and that
the screenshot is a real page; it is skipped only where no chromium binary exists.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdforensics import LibrarySearch, analyze
from sdforensics.api import fingerprint_model
from sdforensics.library.store import Library
from sdforensics.report.render_html import HTML_TENSOR_ROWS, SECTIONS, analysis_to_html
from sdforensics.report.render_json import analysis_to_json
from sdforensics.synth.specs import family_specs, write_safetensors

ROOT = Path(__file__).resolve().parents[2]
EVIL_REF = "<script>alert('ref')</script> $\\frac{$ evil"
EVIL_KEY = "model.diffusion_model.<script>alert('key')</script>"
RENAMED = "model.diffusion_model.out.0.bias"
METADATA = {
    "sd_merge_recipe": json.dumps({"type": "webui", "primary_model_hash": "a" * 64, "secondary_model_hash": "b" * 64,
                                   "interp_method": "Weighted sum", "multiplier": 0.4}),
    "sd_merge_models": json.dumps({"a" * 64: {"name": "ft1.safetensors"},
                                   "b" * 64: {"name": "<script>alert('model')</script>"}}),
    "<script>alert('mkey')</script>": "<script>alert('mvalue')</script>",
    "modelspec.title": "<img src=x onerror=alert(1)> $x^2$",
}


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("sdf_screenshot", ROOT / "tools" / "screenshot.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sdf_screenshot"] = mod
    spec.loader.exec_module(mod)
    return mod


shot = _load_tool()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Width-16 tensors are too small for threads; on a busy 2-core runner threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    specs = family_specs("sd1", width=16, finetunes=3, seed=11)  # ft1, ft2: independent fine-tunes
    lib = Library(root / "library")
    paths = {}
    for name in ("base", "ft1", "ft2"):
        spec = specs[name]
        paths[name] = write_safetensors(spec, root / f"{name}.safetensors")
        _, fp = fingerprint_model(paths[name], device="cpu")
        lib.add(fp, {"base": "sd15-base", "ft2": EVIL_REF}.get(name, name), official=name == "base")
    # a mix made the way merge tools make them: load, combine, save (with hostile names)
    a, b = load_file(paths["ft1"]), load_file(paths["ft2"])
    mix = {}
    for key, t in a.items():
        value = (0.6 * t.float() + 0.4 * b[key].float()).to(t.dtype) if t.is_floating_point() else t
        mix[EVIL_KEY if key == RENAMED else key] = value.contiguous()
    save_file(mix, root / "mix.safetensors", metadata=METADATA)
    (root / "empty-library").mkdir()
    return {"root": root, "mix": root / "mix.safetensors", "library": lib.folder,
            "empty": root / "empty-library", "base": paths["base"]}


@pytest.fixture(scope="module")
def analysis(built: dict[str, Path]) -> Any:
    return analyze(built["mix"], library=built["library"], device="cpu")


@pytest.fixture(scope="module")
def report(analysis: Any) -> str:
    return analysis_to_html(analysis)


def test_report_has_every_section_and_is_self_contained(report: str) -> None:
    for sid in SECTIONS:
        assert f"id='{sid}'" in report
    low = report.lower()
    assert "http://" not in low and "https://" not in low  # no network
    assert "<script" not in low  # no script at all, ours or the file's
    sources = re.findall(r"(?:src|href)=['\"]([^'\"]*)", report)
    assert sources and all(src.startswith(("data:", "#")) for src in sources)  # everything inline
    assert low.count("<img class='fig'") == 4  # recipe, blocks, similarity, unexplained
    assert "content-security-policy" in low


def test_every_hostile_string_is_escaped(report: str) -> None:
    assert "&lt;script&gt;alert(&#x27;key&#x27;)&lt;/script&gt;" in report  # tensor name
    assert "&lt;script&gt;alert(&#x27;mkey&#x27;)" in report  # metadata key
    assert "&lt;script&gt;alert(&#x27;mvalue&#x27;)" in report  # metadata value
    assert "&lt;script&gt;alert(&#x27;ref&#x27;)" in report  # reference name
    assert "&lt;script&gt;alert(&#x27;model&#x27;)" in report  # declared model name
    assert "&lt;img src=x onerror" in report and "<img src=x" not in report


def test_report_shows_recipe_and_declared_metadata(analysis: Any, report: str) -> None:
    weights = {w.reference: round(w.weight, 6) for w in analysis.recipe.weights}
    assert weights["ft1"] == pytest.approx(0.6, abs=0.02)
    assert weights[EVIL_REF] == pytest.approx(0.4, abs=0.02)
    assert "declared (metadata)" in report and "A1111 checkpoint merger" in report
    assert "found: ft1 weight 0.6" in report  # declared ft1.safetensors matched to the estimate


def test_tensor_section_is_compact_and_json_lists_every_tensor(analysis: Any, report: str) -> None:
    n = analysis.identity.n_tensors
    assert n > HTML_TENSOR_ROWS  # a real layout has more tensors than the HTML lists
    section = report.split("id='tensors'", 1)[1].split("</details>", 1)[0]
    assert section.count("<tr><td><span class='mono'>") == HTML_TENSOR_ROWS
    assert f"{n:,} tensors (first {HTML_TENSOR_ROWS:,} shown" in section and "tensors.list" in section
    assert ">unet<" in section and ">text_encoder<" in section  # per-component summary rows
    listed = analysis_to_json(analysis)["tensors"]["list"]
    assert len(listed) == n and EVIL_KEY in {t["name"] for t in listed}
    assert sum(t["values"] for t in listed) == analysis.identity.n_params
    unet = [t for t in listed if t["component"] == "unet"]
    assert unet and all(t["block"] for t in unet if t["name"].endswith(".weight"))


def test_jupyter_fragment(analysis: Any) -> None:
    frag = analysis._repr_html_()
    assert frag.startswith("<div class='sdf'>") and frag.endswith("</div>")
    assert "<html" not in frag and "<script" not in frag.lower()
    assert "id='recipe'" in frag


def test_frames(analysis: Any) -> None:
    from sdforensics.report.frames import (
        block_similarity_frame,
        blocks_frame,
        layers_frame,
        recipe_frame,
        similarity_frame,
    )

    rf = recipe_frame(analysis)
    assert list(rf.columns) == ["weight", "ci95_low", "ci95_high"]
    assert rf.loc["ft1", "weight"] == pytest.approx(0.6, abs=0.02)
    assert (rf["ci95_low"] <= rf["weight"]).all() and (rf["weight"] <= rf["ci95_high"]).all()
    bf = blocks_frame(analysis)
    assert bf.index[0] == "BASE" and bf.index[-1] == "VAE" and "IN00" in bf.index and "unexplained" in bf
    assert bf.loc["IN04", "ft1"] == pytest.approx(0.6, abs=0.03)
    sf = similarity_frame(analysis)
    assert set(sf.index) == {"sd15-base", "ft1", EVIL_REF} and bool(sf.loc["sd15-base", "is_base"])
    assert sf.index[0] == "ft1"  # most similar first
    bs = block_similarity_frame(analysis)
    assert list(bs.index) == list(bf.index) and EVIL_REF in bs.columns
    lf = layers_frame(analysis)
    assert len(lf) == analysis.identity.n_tensors and EVIL_KEY in lf.index


def test_figures_treat_names_as_plain_text(analysis: Any, tmp_path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    from sdforensics.report import plots

    assert plots.plain("a $x$ b") == r"a \$x\$ b"
    for fn in (plots.recipe_figure, plots.blocks_figure, plots.similarity_figure, plots.unexplained_figure):
        fig = fn(analysis)
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / "f.png")  # would raise on the unbalanced mathtext in EVIL_REF
        texts = [t.get_text() for t in fig.findobj(Text) if isinstance(t, Text)]
        assert not any("$\\frac{$" in t for t in texts)  # the raw name never reaches matplotlib
    m = plots.matrix_figure(torch.eye(3).numpy(), ["a", "$b$", "c"])
    m.savefig(tmp_path / "m.png")


def test_cli_writes_html_without_library(built: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdforensics.cli import app

    out = tmp_path / "report.html"
    res = CliRunner().invoke(app, ["analyze", str(built["base"]), "--library", str(built["empty"]),
                                   "--format", "html", "--out", str(out), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    page = out.read_text("utf-8")
    assert page.startswith("<!doctype html>")
    for sid in SECTIONS:
        assert f"id='{sid}'" in page
    assert "<img" not in page  # no empty, broken charts
    assert "No recipe estimated" in page


def test_frames_and_figures_without_library(analysis: Any, tmp_path: Path) -> None:
    from sdforensics.report import frames, plots

    bare = replace(analysis, registry=(), library=LibrarySearch((), 0, 0, ()), identical=None, similarity=None,
                   recipe=None, summary=())
    assert frames.recipe_frame(bare).empty and frames.blocks_frame(bare).empty
    assert frames.similarity_frame(bare).empty and frames.block_similarity_frame(bare).empty
    for fn in (plots.recipe_figure, plots.blocks_figure, plots.similarity_figure, plots.unexplained_figure):
        fn(bare).savefig(tmp_path / "note.png")  # a figure that says why, not an error
    assert "<img" not in analysis_to_html(bare, fragment=True)


CHROMIUM = shot.find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


@needs_chromium
def test_console_check_catches_errors(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><p>x</p><script>noSuchFunction()</script>", "utf-8")
    errors = shot.screenshot(page, tmp_path / "bad.png", 400, 300)
    assert any("Uncaught" in e for e in errors)


@needs_chromium
def test_report_renders_in_chromium(report: str, tmp_path: Path) -> None:
    from PIL import Image

    page = tmp_path / "report.html"
    page.write_text(report, "utf-8")
    png = tmp_path / "report.png"
    errors = shot.screenshot(page, png, 1280, 4000)
    assert errors == []
    assert png.stat().st_size > 50_000
    im = Image.open(png).convert("RGB")
    assert im.size == (1280, 4000)
    top = im.crop((0, 0, 1280, 2400)).resize((320, 600))
    assert len(top.getcolors(maxcolors=100_000) or []) > 50  # text, tables and charts, not a blank page
    shot.crop(png)
    assert Image.open(png).height > 1500  # every section laid out, charts included
