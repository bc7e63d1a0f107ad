"""Issue 20, defect 8: reports are valid JSON and never carry a bidi or invisible control raw.

On main, ``--format json`` wrote bare ``Infinity``/``NaN`` (LoRA scales of a file with an infinite
alpha) and U+202A/B/C, U+200E/F, U+061C ... reached the terminal and the HTML report raw (only
U+202E and the isolates were escaped). Now non-finite numbers are ``null`` and every character of
Unicode category C* (controls, format characters: bidi, zero-width, BOM, soft hyphen ...) or
Zl/Zp is shown as a ``\\uXXXX`` escape.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import torch
from conftest import sdf
from safetensors.torch import save_file

HIDDEN = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u200e\u200f\u061c\ufeff\u2060\u00ad"
LAYER = "lora_unet_down_blocks_0_attentions_0_proj_in"


def _strict(text: str) -> object:
    def refuse(const: str) -> object:
        raise ValueError(f"bare {const} is not JSON")
    return json.loads(text, parse_constant=refuse)


def _raw_hidden(text: str) -> list[str]:
    return [f"U+{ord(c):04X}" for c in text if unicodedata.category(c)[0] == "C" and c not in "\n\t"]


def test_json_has_no_bare_nan_or_infinity(tmp_path: Path) -> None:
    f = tmp_path / "inf.safetensors"
    save_file({f"{LAYER}.lora_down.weight": torch.full((4, 320), float("nan")),
               f"{LAYER}.lora_up.weight": torch.full((320, 4), float("inf")),
               f"{LAYER}.alpha": torch.tensor(float("inf"))}, f)
    res = sdf("analyze", f, "--format", "json")
    assert res.exit_code == 0, res.stderr
    doc = _strict(res.stdout)  # raised on main: bare Infinity
    assert isinstance(doc, dict) and any("Inf" in p["message"] for p in doc["problems"])


def test_bidi_and_invisible_controls_escaped_in_terminal_and_html(tmp_path: Path) -> None:
    f = tmp_path / "bidi.safetensors"
    name = f"w{HIDDEN}x"
    save_file({name: torch.tensor([float("nan"), 1.0])}, f,
              metadata={"modelspec.title": f"t{HIDDEN}t", f"k{HIDDEN}": f"v{HIDDEN}"})
    text = sdf("analyze", f)
    assert text.exit_code == 0, text.stderr
    assert "\\u202a" in text.stdout  # the name is shown, escaped
    assert _raw_hidden(text.stdout) == []
    out = tmp_path / "r.html"
    html = sdf("analyze", f, "--format", "html", "-o", out)
    assert html.exit_code == 0, html.stderr
    page = out.read_text("utf-8") if out.exists() else html.stdout
    assert "202a" in page.lower()
    assert _raw_hidden(page) == []
