"""The torch-free identity pass over raw safetensors bytes agrees with the tensor path exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdforensics.model.byte_identity import ByteIdentity, TensorSpan, count_nonfinite
from sdforensics.model.hashing import tensor_digest
from sdforensics.model.identity import IdentityCollector
from sdforensics.readers.base import TensorInfo

DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _random_bits(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Every kind of value: random bit patterns (NaNs with payloads, Infs, subnormals) and normals."""
    rng = np.random.default_rng(seed)
    size = torch.empty(0, dtype=dtype).element_size()
    raw = rng.integers(0, 256, n * size, dtype=np.uint8)
    t = torch.from_numpy(raw).view(dtype).clone()
    t[: n // 2] = (torch.randn(n // 2, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    return t


def _feed(spans: list[TensorSpan], blob: bytes, seed: int) -> ByteIdentity:
    """Feed the bytes in random-sized chunks, so elements are split between chunks."""
    bi = ByteIdentity(spans)
    rng = np.random.default_rng(seed)
    pos = 0
    while pos < len(blob):
        step = int(rng.integers(1, 4000))
        bi.update(blob[pos : pos + step])
        pos += step
    return bi


@pytest.mark.parametrize("code", list(DTYPES))
def test_digests_and_nonfinite_match_the_tensor_path(code: str) -> None:
    tensors = {f"t{i}": _random_bits(DTYPES[code], n, seed=i) for i, n in enumerate([1, 7, 1000, 4099])}
    blob, spans, pos = b"HEAD", [], 4
    for name, t in tensors.items():
        raw = t.view(torch.uint8).numpy().tobytes()
        spans.append(TensorSpan(name, tuple(t.shape), code, pos, pos + len(raw)))
        blob += raw
        pos += len(raw)
    bi = _feed(spans, blob + b"tail", seed=len(code))
    collector = IdentityCollector()
    for name, t in tensors.items():
        collector.consume(name, TensorInfo(name, tuple(t.shape), code, t.numel() * t.element_size()), t)
    assert bi.digests == collector.digests
    for name, t in tensors.items():
        assert bi.digests[name] == tensor_digest(name, t)
    assert sorted((i.name, i.nan, i.inf) for i in bi.nonfinite) == sorted(
        (i.name, i.nan, i.inf) for i in collector.nonfinite
    )
    assert bi.nonfinite, "random bit patterns include NaN"
    assert bi.dtypes == collector.dtypes and bi.n_params == collector.n_params


@pytest.mark.parametrize("code", ["F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3"])
def test_nonfinite_counts_every_bit_pattern(code: str) -> None:
    dtype = DTYPES[code]
    size = torch.empty(0, dtype=dtype).element_size()
    if size <= 2:  # all patterns
        raw = np.arange(256**size, dtype=np.uint16 if size == 2 else np.uint8)
        t = torch.from_numpy(raw.view(np.int16) if size == 2 else raw).view(dtype)
    else:
        t = _random_bits(dtype, 100_000, seed=5)
    f = t.float() if dtype != torch.float64 else t
    expected = (int(torch.isnan(f).sum()), int(torch.isinf(f).sum()))
    assert count_nonfinite(code, t.view(torch.uint8).numpy().tobytes()) == expected


@pytest.mark.parametrize(
    "values, dtype",
    [
        (list(range(77)), torch.int64),
        ([0, 1, 2, 4, 3], torch.int64),
        ([0.0, 1.0, 2.0000002, 3.0], torch.float32),
        ([0.0, 1.0, 2.0, 3.0], torch.bfloat16),
        ([0.0, 1.0, 2.0, 3.0], torch.float16),
    ],
)
def test_position_ids_check_matches(values: list[float], dtype: torch.dtype) -> None:
    t = torch.tensor(values, dtype=dtype).reshape(1, -1)
    name = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    code = {torch.int64: "I64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    bi = _feed([TensorSpan(name, tuple(t.shape), code, 0, len(raw))], raw, seed=1)
    collector = IdentityCollector()
    collector.consume(name, TensorInfo(name, tuple(t.shape), code, len(raw)), t)
    assert bi.position_ids == collector.position_ids


def test_identity_analysis_never_imports_torch(tmp_path: Path, family: dict[str, Path]) -> None:
    """`sdf analyze --identity` of a safetensors file runs without torch, with the same answer."""
    model = family["ft1"]
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None  # any import of torch fails\n"
        "from sdforensics.cli import main\n"
        "sys.argv = ['sdf', 'analyze', '--identity', sys.argv[1], '--format', 'json', '--quiet']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, check=True)
    without_torch = json.loads(out.stdout)
    # The same weights through the tensor path (a .ckpt has no raw byte view): same content hashes.
    from safetensors.torch import load_file

    from sdforensics.api import identify

    ckpt = tmp_path / "same.ckpt"
    torch.save({"state_dict": load_file(str(model))}, ckpt)
    assert without_torch["content_hashes"] == identify(ckpt).identity.component_hashes
    assert set(without_torch["content_hashes"]) == {"unet", "text_encoder", "vae"}


def test_nan_in_safetensors_is_reported(tmp_path: Path) -> None:
    """NaN/Inf found by the byte pass reach the problems list."""
    from sdforensics.api import identify

    w = torch.randn(300, 300).half()
    w[3, 4] = float("nan")
    w[5, 6] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file({"model.diffusion_model.out.2.weight": w}, str(path))
    a = identify(path)
    assert [(i.name, i.nan, i.inf) for i in a.identity.nonfinite] == [("model.diffusion_model.out.2.weight", 1, 1)]
    assert any(p.code == "nonfinite" for p in a.problems)
