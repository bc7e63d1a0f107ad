"""A short fuzz run in CI: mutated seeds for every reader must give an SdfError or tensors.

The long run is ``python bench/fuzz.py --inputs 200000``; both use ``tests/fuzz_targets.py``.
Here hypothesis drives the mutations (``st.randoms`` -- a failing input shrinks to few edits),
and a fixed block of numbered inputs per target runs too, the same ones the long run builds.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from fuzz_targets import TARGETS, build_corpus, exercise, marker_path, run_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# a few thousand inputs in all: hypothesis examples + numbered inputs, per target
HYPOTHESIS_EXAMPLES = 150
NUMBERED = 400
PER_INPUT_LIMIT_S = 10.0


@pytest.fixture(scope="module", autouse=True)
def _corpus() -> None:
    build_corpus()


def _check(target: str, rng: random.Random | int, workdir: Path) -> None:
    out = run_one(target, rng, workdir)
    detail = f"{target} input {out.seed}: {out.error} @ {out.where}"
    assert out.status != "bug", f"{detail} (replay: python bench/fuzz.py --replay {target}:{out.seed})"
    assert out.seconds < PER_INPUT_LIMIT_S, f"{detail} took {out.seconds:.1f} s"
    assert not marker_path().exists()


@pytest.mark.parametrize("target", list(TARGETS))
@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_mutations(target: str, rng: random.Random, tmp_path: Path) -> None:
    _check(target, rng, tmp_path / "w")


@pytest.mark.parametrize("target", list(TARGETS))
def test_numbered_inputs(target: str, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    bugs = []
    for n in range(NUMBERED):
        out = run_one(target, n, tmp_path / "w")
        if out.status == "bug":
            bugs.append(f"#{n}: {out.error} @ {out.where}")
        assert out.seconds < PER_INPUT_LIMIT_S, (n, out)
    assert not bugs, f"{len(bugs)} unexpected exceptions in {target} (replay with bench/fuzz.py --replay " \
                     f"{target}:N):\n" + "\n".join(bugs[:10])
    assert time.perf_counter() - t0 < 60


def test_seeds_are_accepted(tmp_path: Path) -> None:
    """Unmutated seeds must open cleanly, or the fuzz would only ever test the error paths."""
    from fuzz_targets import folder_seeds, safetensors_seeds

    for i, data in enumerate(safetensors_seeds()):
        path = tmp_path / f"s{i}.safetensors"
        path.write_bytes(data)
        assert exercise(path) == "accepted", i
    for folder in folder_seeds():
        index = sorted(folder.glob("*.index.json"))
        assert exercise(index[0] if index else folder) == "accepted", folder


def test_mutators_are_deterministic(tmp_path: Path) -> None:
    for target in TARGETS:
        a = TARGETS[target].build(random.Random(f"{target}:7"), _fresh(tmp_path / f"a-{target}"))
        b = TARGETS[target].build(random.Random(f"{target}:7"), _fresh(tmp_path / f"b-{target}"))
        assert _content(a) == _content(b), target


def _fresh(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _content(p: Path) -> list[tuple[str, bytes]]:
    if p.is_dir():
        return sorted((str(q.relative_to(p)), q.read_bytes() if q.is_file() else b"")
                      for q in p.rglob("*") if not q.is_symlink())
    return [(p.name, p.read_bytes() if p.exists() else b"")]
