"""A fingerprint does not depend on the thread settings of the process that made it: Ray workers run
with OMP_NUM_THREADS=1, a local pool's workers with the machine's cores, and `sdf index --engine ray`
must build the library `--engine local` builds, bit for bit (issue 18). Before the fix, the l2 of the
exact-kept tensors came from a BLAS dot split over its threads and differed in the last bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = """
import sys
import numpy as np
from pathlib import Path
from sdforensics.api import fingerprint_model
_, fp = fingerprint_model(Path(sys.argv[1]), device="cpu")
arrays = {}
for name, t in fp.tensors.items():
    for part in ("stats", "values", "sample", "structure"):
        a = getattr(t, part)
        if a is not None:
            arrays[f"{name}/{part}"] = np.asarray(a)
np.savez(sys.argv[2], **arrays)
"""


def _fingerprint_with(path: Path, out: Path, threads: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(out)], check=True, env=env, timeout=300)
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_fingerprint_is_the_same_with_one_or_two_threads(family: dict[str, Path], tmp_path: Path) -> None:
    one = _fingerprint_with(family["ft1"], tmp_path / "one.npz", "1")
    two = _fingerprint_with(family["ft1"], tmp_path / "two.npz", "2")
    assert one.keys() == two.keys() and len(one) > 100
    differ = [k for k in one if not np.array_equal(one[k], two[k])]
    assert differ == []
