"""A short fuzz run in CI: mutated seeds for every reader must give an SdfError or tensors.

The long run is ``python bench/fuzz.py --inputs 200000``; both use ``tests/fuzz_targets.py``.
Here hypothesis drives the mutations (``st.randoms`` -- a failing input shrinks to few edits),
and a fixed block of numbered inputs per target runs too, the same ones the long run builds.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzz_targets import TARGETS, Outcome, build_corpus, exercise, marker_path, run_one
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# a few thousand inputs in all: hypothesis examples + numbered inputs, per target
HYPOTHESIS_EXAMPLES = 150
NUMBERED = 400


@pytest.fixture(scope="module", autouse=True)
def _corpus() -> None:
    build_corpus()


# bugs already reported and not yet fixed: (error prefix, function) -> reproducer name below.
# Empty now: the four the first long run found are fixed and their reproducers are regression tests.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _unexpected(out: Outcome) -> bool:
    if out.status not in ("bug", "harness"):
        return False
    func = out.where.rsplit(" ", 1)[-1]
    return not any(out.error.startswith(prefix) and func == f for prefix, f in KNOWN_BUGS)


def _check(target: str, rng: random.Random | int, workdir: Path) -> None:
    out = run_one(target, rng, workdir)
    detail = f"{target} input {out.seed}: {out.error} @ {out.where}"
    assert not _unexpected(out), f"{detail} (replay: python bench/fuzz.py --replay {target}:N)"
    assert not marker_path().exists()


@pytest.mark.parametrize("target", list(TARGETS))
@settings(max_examples=HYPOTHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_hypothesis_mutations(target: str, rng: random.Random, tmp_path: Path) -> None:
    _check(target, rng, tmp_path / "w")


@pytest.mark.parametrize("target", list(TARGETS))
def test_numbered_inputs(target: str, tmp_path: Path) -> None:
    bugs = []
    for n in range(NUMBERED):
        out = run_one(target, n, tmp_path / "w")
        if _unexpected(out):
            bugs.append(f"#{n}: {out.error} @ {out.where}")
    assert not bugs, f"{len(bugs)} unexpected exceptions in {target} (replay with bench/fuzz.py --replay " \
                     f"{target}:N):\n" + "\n".join(bugs[:10])


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


# ------------------------------------------------------------------ minimal reproducers of bugs found

def _empty(_tmp: Path) -> bytes:
    return b""


def _deflated_empty_member(_tmp: Path) -> bytes:
    from hostile_pickles import Entry, good_state_pickle, make_zip

    return make_zip([Entry("archive/data.pkl", good_state_pickle()), Entry("archive/data/0", b"", method=8)])


def _long_byteorder(_tmp: Path) -> bytes:
    from hostile_pickles import GOOD_STORAGES, Entry, good_state_pickle, torch_zip

    return torch_zip(good_state_pickle(), GOOD_STORAGES, extra=[Entry("archive/byteorder", b"little" * 10)])


def _zero_stride_view(_tmp: Path) -> bytes:
    from hostile_pickles import GOOD_STORAGES, OD, dumps, tensor, torch_zip

    return torch_zip(dumps(OD([("w", tensor("0", "FloatStorage", 4, (2**30,), stride=(0,)))])), GOOD_STORAGES)


REPRODUCERS = {
    # a 525-byte .ckpt: a (2^30,) view with stride 0 of a 4-element storage (was: 4 GB materialised)
    "reader_zero_stride_memory_bomb": _zero_stride_view,
    # scan.sniff calls b"" a pickle (b"" in b"(c]})N") and pickle_ops.walk_all(b"") returns [] ->
    # scan._scan_pickle indexes results[-1]
    "scan_empty_file": _empty,
    # a deflated member inflating to b"": walk_all -> [] -> scan.member_pickles indexes results[0]
    "scan_deflated_empty_member": _deflated_empty_member,
    # pickle_reader._open_zip: read_member(f, byteorder, 16) raises ValueError past 16 bytes, uncaught
    "reader_byteorder_over_16_bytes": _long_byteorder,
}


@pytest.mark.parametrize("name", sorted(REPRODUCERS))
def test_fixed_fuzzer_findings_stay_fixed(name: str, tmp_path: Path) -> None:
    path = tmp_path / "input.ckpt"
    path.write_bytes(REPRODUCERS[name](tmp_path))
    assert exercise(path) in ("accepted", "rejected")
