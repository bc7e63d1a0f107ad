"""Issue 16: a checkpoint is a context manager, opened once per analysis; the library index is read
once per analysis."""

from __future__ import annotations

from pathlib import Path

import pytest

import sdforensics
from sdforensics import api
from sdforensics.library import store
from sdforensics.readers import open_checkpoint

REAL = Path(__file__).resolve().parents[3] / "shared" / "realdata"
CAT = REAL / "catundchat-stable-diffusion-v1.5-lora" / "pytorch_lora_weights.safetensors"


def _count_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    opened: list[Path] = []
    real = open_checkpoint

    def counting(path: Path):  # noqa: ANN202
        opened.append(Path(path))
        return real(path)

    for module in ("sdforensics.api", "sdforensics.lora.files"):
        monkeypatch.setattr(f"{module}.open_checkpoint", counting)
    return opened


def test_checkpoint_is_a_context_manager(family: dict[str, Path]) -> None:
    with sdforensics.open_checkpoint(family["ft1"]) as ckpt:
        names = [i.name for i in sdforensics.read_layout(ckpt).infos]
        assert not ckpt._fh.closed
    assert ckpt._fh.closed and "model.diffusion_model.out.2.weight" in names


def test_analyze_opens_the_model_once_and_reads_the_index_once(
    family: dict[str, Path], library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = _count_opens(monkeypatch)
    reads: list[Path] = []
    real_init = store.Library.__init__

    def counting_init(self, folder: Path) -> None:  # noqa: ANN001
        reads.append(Path(folder))
        real_init(self, folder)

    monkeypatch.setattr(store.Library, "__init__", counting_init)
    a = api.analyze(family["ft6"], library=library, device="cpu")
    assert a.recipe is not None and a.recipe.kind != "unknown"
    assert opened == [family["ft6"]]
    assert reads == [library]


@pytest.mark.skipif(not CAT.exists(), reason="../shared/realdata is not laid beside the checkout")
def test_a_lora_is_opened_once(monkeypatch: pytest.MonkeyPatch) -> None:
    opened = _count_opens(monkeypatch)
    a = api.analyze(CAT, device="cpu")
    assert opened == [CAT]
    assert a.lora is not None and a.lora.family == "sd1" and a.lora.to_json()["kind"] == "lora"
