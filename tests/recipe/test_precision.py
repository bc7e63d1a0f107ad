"""Issue 19 item 4: precision variants seen in the wild (recipe/precision.py), through the CLI.

A library model re-saved in fp8 (e4m3fn) or bf16 is a copy of it, proven by the exact coordinate
samples; a weighted sum saved in fp8 keeps its weights and its unexplained share leaves the format's
rounding noise out; a model that merely resembles a library model (a child of it saved in fp8) is
never called a copy. All at 1/16 width against the session library (base official, ft1..ft6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import sdf
from safetensors.torch import load_file, save_file

from sdforensics.synth.specs import FineTune, Merge, write_safetensors

FORMATS = {"fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16}


def _analyze(path: Path, library: Path) -> dict[str, Any]:
    res = sdf("analyze", path, "--library", library, "-f", "json")
    assert res.exit_code == 0, res.stderr
    recipe: dict[str, Any] = json.loads(res.stdout)["recipe"]
    return recipe


def _resave(source: Path, out: Path, dtype: torch.dtype) -> Path:
    """``source`` loaded and saved again with its float tensors in ``dtype`` (what a user's convert
    script does)."""
    sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(str(source)).items()}
    save_file(sd, str(out))
    return out


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_resave_of_a_library_model_is_a_copy_of_it(
    fmt: str, family: dict[str, Path], library: Path, tmp_path: Path
) -> None:
    """Was 'block-weighted: ft3', 88% unexplained, for an e4m3 re-save."""
    path = _resave(family["ft3"], tmp_path / f"ft3_{fmt}.safetensors", FORMATS[fmt])
    recipe = _analyze(path, library)
    assert recipe["kind"] == "copy", recipe["summary"]
    assert recipe["copy_of"] == "ft3"
    assert recipe["unexplained"] == 0.0
    assert f"re-save of ft3 in {'fp8 e4m3fn' if fmt == 'fp8' else 'bf16'}" in " ".join(recipe["notes"])


def test_a_weighted_sum_saved_in_fp8_keeps_its_weights(family_specs_sd1: dict, library: Path, tmp_path: Path) -> None:
    s = family_specs_sd1
    truth = {"ft2": 0.6, "ft4": 0.4}
    spec = Merge(tuple((w, s[n]) for n, w in truth.items()))
    path = write_safetensors(spec, tmp_path / "mix_fp8.safetensors", dtype=torch.float8_e4m3fn)
    recipe = _analyze(path, library)
    assert recipe["kind"] != "copy"
    found = {c["reference"]: c["weight"] for c in recipe["components"]}
    assert set(found) == set(truth), recipe["summary"]
    for name, w in truth.items():
        assert found[name] == pytest.approx(w, abs=0.02), recipe["text"]
    assert recipe["unexplained"] < 0.1, recipe["text"]  # the e4m3 rounding noise is left out
    assert "stored in fp8 e4m3fn" in " ".join(recipe["notes"])


def test_a_child_saved_in_fp8_is_not_called_a_copy(family_specs_sd1: dict, library: Path, tmp_path: Path) -> None:
    """A light fine-tune of ft3 saved in e4m3 resembles ft3's re-save closely (delta cosine ~0.85 for
    both), but rounding ft3 to e4m3 does not reproduce its exact values."""
    child = FineTune(family_specs_sd1["ft3"], seed=9191, scale=0.05)
    path = write_safetensors(child, tmp_path / "child_fp8.safetensors", dtype=torch.float8_e4m3fn)
    recipe = _analyze(path, library)
    assert recipe["kind"] != "copy", recipe["summary"]
    assert recipe["copy_of"] is None
    assert "re-save of" not in " ".join(recipe["notes"])
    assert "ft3" in {c["reference"] for c in recipe["components"]}
