"""Fingerprints made on CUDA agree with the CPU ones (runs only where CUDA exists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdforensics.api import fingerprint_model




@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_fingerprints_agree(family: dict[str, Path]) -> None:
    _, cpu = fingerprint_model(family["ft1"], device="cpu")
    _, gpu = fingerprint_model(family["ft1"], device="cuda")
    for name, t in cpu.tensors.items():
        g = gpu.tensors[name]
        for a, b in ((t.values, g.values), (t.structure, g.structure), (t.sample, g.sample)):
            if a is None:
                assert b is None
                continue
            assert np.linalg.norm(a - b) <= 1e-5 * max(np.linalg.norm(a), 1e-30), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_asking_for_cuda_without_a_device_is_one_clear_line(family: dict[str, Path], tmp_path: Path) -> None:
    from conftest import empty_library, sdf

    res = sdf("analyze", family["ft1"], "--device", "cuda", "--library", empty_library(tmp_path))
    assert res.exit_code == 2 and "no CUDA device" in res.stderr and res.stderr.count("\n") == 1
