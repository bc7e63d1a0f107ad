"""Issue 20, defect 6: values that used to escape as unexpected exceptions ("a bug in sdforensics").

Each file below made ``sdf analyze`` print ``unexpected RuntimeError/OverflowError/ValueError/
IndexError ... (a bug in sdforensics)`` on main. Now each is exit 2 with one ``error:`` line that
names the field, tensor or layer at fault -- or, for names that merely look numeric, a normal report.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch
from conftest import sdf
from safetensors.torch import save_file

LAYER = "lora_unet_down_blocks_0_attentions_0_proj_in"


def _raw_st(path: Path, header: dict) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h)
    return path


def _refused(path: Path, *words: str) -> str:
    res = sdf("analyze", path)
    assert res.exit_code == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert line.startswith("error:") and "\n" not in line, line
    assert "bug in sdforensics" not in line and "unexpected" not in line, line
    for w in words:
        assert w in line, line
    return line


def test_shape_whose_size_overflows_int64_safetensors(tmp_path: Path) -> None:
    f = _raw_st(tmp_path / "s.safetensors",
                {"w": {"dtype": "F32", "shape": [2**62, 4, 0], "data_offsets": [0, 0]}})
    _refused(f, "'w'", "overflows 64 bits")


def test_shape_whose_size_overflows_int64_pickle(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3, 4, 0)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    size = b"K\x03K\x04K\x00\x87"  # BININT1 3, BININT1 4, BININT1 0, TUPLE3
    assert data.count(size) == 1
    f = tmp_path / "s.ckpt"
    f.write_bytes(data.replace(size, b"\x8a\x08" + (2**62).to_bytes(8, "little") + size[2:]))
    _refused(f, "overflows 64 bits")


@pytest.mark.parametrize(("recipe", "field"), [
    ('{"type": "webui", "interp_method": "Weighted sum", "multiplier": 1' + "0" * 400 + "}",
     "sd_merge_recipe.multiplier"),
    ('{"type": "sd-webui-supermerger", "mode": "Weight sum", "base_alpha": 1' + "0" * 400 + "}",
     "sd_merge_recipe.base_alpha"),
    ('{"type": "sd-webui-supermerger", "mode": "Weight sum", "base_alpha": 0.5, "weights_alpha": "0.1,1e400"}',
     "sd_merge_recipe.weights_alpha"),
])
def test_merge_recipe_number_too_big_for_a_float(tmp_path: Path, recipe: str, field: str) -> None:
    f = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(2)}, f, metadata={"sd_merge_recipe": recipe, "sd_merge_models": "{}"})
    _refused(f, field, "not a finite number")


def _lora(path: Path, down: torch.Tensor, up: torch.Tensor, layer: str = LAYER,
          metadata: dict[str, str] | None = None) -> Path:
    save_file({f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up}, path, metadata=metadata)
    return path


def test_tag_frequency_count_of_1e400(tmp_path: Path) -> None:
    f = _lora(tmp_path / "t.safetensors", torch.zeros(4, 8), torch.zeros(8, 4),
              metadata={"ss_network_dim": "4", "ss_tag_frequency": '{"1_a": {"cat": 1e400}}'})
    _refused(f, "ss_tag_frequency", "'cat'", "not a finite number")


@pytest.mark.parametrize(("down", "up", "shape"), [
    (torch.zeros(()), torch.zeros(8, 4), "()"),  # 0-dim lora_down
    (torch.zeros(0, 8), torch.zeros(8, 0), "(0, 8)"),  # rank 0
])
def test_lora_factor_without_rank(tmp_path: Path, down: torch.Tensor, up: torch.Tensor, shape: str) -> None:
    f = _lora(tmp_path / "l.safetensors", down, up)
    _refused(f, LAYER, "factor down", shape)


def test_superscript_digit_names_are_not_a_numbered_list(tmp_path: Path) -> None:
    """``"²".isdigit()`` is True but ``int("²")`` raises: such names are not cloneofsimo's [up, down] list."""
    f = tmp_path / "sup.safetensors"
    save_file({"²": torch.zeros(8, 4), "³": torch.zeros(4, 8)}, f)
    res = sdf("analyze", f)
    assert "bug in sdforensics" not in res.stderr and "unexpected" not in res.stderr, res.stderr
    assert res.exit_code in (0, 2), res.stderr
