"""The HTML report's small things (issue 15, items 19-20): no "-0", one rounding, a colour per name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdforensics import analyze
from sdforensics.synth.specs import Merge, family_specs, write_safetensors
from sdforensics.model.architecture import block_maps


@pytest.fixture(scope="module")
def block_mix(tmp_path_factory: pytest.TempPathFactory, library: Path) -> object:
    """A block-weighted merge whose first block is all ft1 (alpha 0 there, fitted as a tiny negative)."""
    specs = family_specs("sd1", width=16, finetunes=6, seed=3)
    ids = [b for b in block_maps()["sd1"].ids if b != "VAE"]
    blocks = {b: (1 - i / (len(ids) - 1), i / (len(ids) - 1)) for i, b in enumerate(ids)}
    path = write_safetensors(Merge(((0.5, specs["ft1"]), (0.5, specs["ft2"])), blocks=blocks),
                             tmp_path_factory.mktemp("bm") / "block-mix.safetensors")
    return analyze(path, library=library, device="cpu")


def test_block_merge_headline_has_no_minus_zero_and_wraps(block_mix: object) -> None:
    from sdforensics.report.render_html import analysis_to_html

    recipe = block_mix.to_json()["recipe"]  # type: ignore[attr-defined]
    assert recipe["kind"] == "block_weighted"
    alphas = recipe["text"].split(" = ", 1)[1].split()[0].split(",")
    assert alphas[0] == "0" and not any(a.startswith("-0") and float(a) == 0 for a in alphas), alphas
    assert "BASE,IN00,IN01" not in recipe["text"]  # the 26 ids are not spelled out as one word
    page = analysis_to_html(block_mix)  # type: ignore[arg-type]
    assert "overflow-wrap:anywhere" in page
    assert ",-0," not in page and "= -0," not in page


def test_unexplained_is_rounded_the_same_everywhere(block_mix: object) -> None:
    from sdforensics.report.render_html import analysis_to_html
    from sdforensics.core.safetext import percent

    u = block_mix.to_json()["recipe"]["unexplained"]  # type: ignore[attr-defined]
    shown = percent(u)
    text = block_mix.to_text()  # type: ignore[attr-defined]
    assert f"Unexplained: {shown} of the difference" in text
    page = analysis_to_html(block_mix)  # type: ignore[arg-type]
    assert f"unexplained: <b>{shown}</b>" in page and f"<p>{shown} of the change" in page


def test_unexplained_axis_is_scaled_to_the_bars(block_mix: object) -> None:
    from sdforensics.report.frames import blocks_frame
    from sdforensics.report.plots import unexplained_figure

    peak = float(blocks_frame(block_mix)["unexplained"].max()) * 100  # type: ignore[arg-type]
    assert peak < 2  # small bars: they must not sit at the bottom of a 5% axis
    top = unexplained_figure(block_mix).axes[0].get_ylim()[1]  # type: ignore[arg-type]
    assert peak <= top <= max(peak * 1.5, 0.1)


def test_heatmap_numbers_are_readable(block_mix: object) -> None:
    from sdforensics.report.plots import similarity_figure

    texts = [t for t in similarity_figure(block_mix).axes[0].texts]  # type: ignore[arg-type]
    assert texts and min(t.get_fontsize() for t in texts) >= 8
    assert not [t.get_text() for t in texts if t.get_text() in ("-.00", "-0.00")]


def test_a_reference_keeps_its_colour_across_reports(block_mix: object, library: Path, tmp_path: Path) -> None:
    from sdforensics.report.plots import palette

    specs = family_specs("sd1", width=16, finetunes=6, seed=3)
    other = write_safetensors(Merge(((0.7, specs["ft2"]), (0.3, specs["ft3"]))), tmp_path / "m.safetensors")
    second = analyze(other, library=library, device="cpu")
    c1 = palette(block_mix, ["ft2"])  # type: ignore[arg-type]
    c2 = palette(second, ["ft2"])
    assert c1["ft2"] == c2["ft2"]  # ft2 is the second ingredient in one report and the first in the other
    assert len(set(c1.values())) == len(c1)
