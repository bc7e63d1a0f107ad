"""Search by vectors (issue 17, item 3): libraries full of copies and re-saves, through the CLI.

Libraries of more than 16 references are ranked by their search vectors and only the candidates
are read; copies and re-saves of a model are one candidate, named together in the answer.
Fingerprints use a small sketch budget so that a 97-reference library is built in seconds.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sdforensics.api import fingerprint_model
from sdforensics.fingerprinting.fingerprint import Fingerprint, Scheme
from sdforensics.library.store import Library
from sdforensics.synth.specs import Merge, write_safetensors
from tests.conftest import sdf

SCHEME = Scheme(block_budget=4096)
TRUTH = {"ft2": 0.5, "ft3": 0.3, "ft4": 0.2}


@pytest.fixture(scope="module")
def prints(family: dict[str, Path], family_specs_sd1: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fingerprints of base, ft1..ft6, of ft3 re-saved in bf16 and fp8, and the merge's file."""
    out = tmp_path_factory.mktemp("search")
    fps = {n: fingerprint_model(p, device="cpu", scheme=SCHEME)[1] for n, p in family.items()}
    for tag, dtype in (("bf16", torch.bfloat16), ("fp8", torch.float8_e4m3fn)):
        path = write_safetensors(family_specs_sd1["ft3"], out / f"ft3_{tag}.safetensors", dtype=dtype)
        fps[f"ft3_{tag}"] = fingerprint_model(path, device="cpu", scheme=SCHEME)[1]
    path = write_safetensors(family_specs_sd1["base"], out / "base_fp8.safetensors", dtype=torch.float8_e4m3fn)
    fps["base_fp8"] = fingerprint_model(path, device="cpu", scheme=SCHEME)[1]
    s = family_specs_sd1
    mix = write_safetensors(Merge(((0.5, s["ft2"]), (0.3, s["ft3"]), (0.2, s["ft4"]))), out / "mix.safetensors")
    kept = write_safetensors(Merge(((0.6, s["ft2"]), (0.4, s["base"]))), out / "kept.safetensors")
    return {"fps": fps, "mix": mix, "kept": kept}


def _unrelated(fp: Fingerprint, seed: int) -> Fingerprint:
    """``fp`` plus an independent change of a fine-tune's size in every sketch (another model)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in fp.tensors.items():
        if t.dtype.startswith("I"):
            out[name] = t
            continue
        scale = 0.05 * float(np.sqrt(np.mean(np.square(t.values.astype(np.float64))))) + 1e-9
        out[name] = replace(
            t, values=(t.values + scale * rng.standard_normal(t.values.shape)).astype(np.float32), digest="",
            sample=None if t.sample is None else (t.sample + scale * rng.standard_normal(t.sample.shape)),
        )  # fmt: skip
    return Fingerprint(fp.scheme, dict(fp.identity), out)


def _analyze(model: Path, library: Path) -> dict:
    res = sdf("analyze", model, "--library", library, "--format", "json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _weights(doc: dict) -> dict[str, float]:
    return {c["reference"]: c["weight"] for c in doc["recipe"]["components"]}


def test_copies_of_each_model_do_not_crowd_out_the_ingredients(prints: dict, tmp_path: Path) -> None:
    """Issue 17's case: 97 references, 16 copies of each of six fine-tunes plus the base. A 3-model
    weighted sum is found (it was '0.5 x sd15 + 0.5 x ft2', 59% unexplained: the candidates were
    all copies of ft2), and each ingredient is named with its 15 copies."""
    fps = prints["fps"]
    lib = Library(tmp_path / "lib")
    lib.add(fps["base"], "sd15", official=True)
    for n in ("ft1", "ft2", "ft3", "ft4", "ft5", "ft6"):
        for c in range(16):
            lib.add(fps[n], n if c == 0 else f"{n}_copy{c:02d}")
    doc = _analyze(prints["mix"], lib.folder)
    rec = doc["recipe"]
    got = _weights(doc)
    assert doc["library"]["references"] == 97
    assert rec["kind"] == "weighted_sum", rec["summary"]
    for ref, w in TRUTH.items():
        assert abs(got.get(ref, 0.0) - w) <= 0.02, rec["text"]
    assert all(abs(w) <= 0.02 for r, w in got.items() if r not in TRUTH), rec["text"]
    assert rec["unexplained"] < 0.05
    also = {c["reference"]: c["also"] for c in rec["components"]}
    for ref in TRUTH:
        assert sorted(also[ref]) == [f"{ref}_copy{c:02d}" for c in range(1, 16)]
    assert {g["reference"] for g in rec["groups"]} == set(TRUTH)
    assert any(line.startswith("Made of: ft2 (also: ft2_copy01, ft2_copy02") for line in rec["summary"])


def test_resaves_are_named_with_their_model_and_vectors_are_made_when_missing(
    prints: dict, family: dict[str, Path], tmp_path: Path
) -> None:
    """A bf16 and an fp8 re-save of ft3 and a renamed copy of ft2 are named with them, a child
    fine-tune (ft6 of ft1) is not taken for a copy; the base is added last. Deleting the stored
    vectors gives the same answer (they are computed again, and stored)."""
    fps = prints["fps"]
    lib = Library(tmp_path / "lib")
    for n in ("ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft3_bf16", "ft3_fp8", "base_fp8"):
        lib.add(fps[n], n)
    lib.add(fps["ft2"], "downloaded_model")
    for i in range(10):
        lib.add(_unrelated(fps["base"], i), f"other{i}")
    lib.add(fps["base"], "sd15", official=True)
    first = _analyze(prints["mix"], lib.folder)
    rec = first["recipe"]
    named = {frozenset([c["reference"], *c["also"]]): c["weight"] for c in rec["components"]}
    assert set(named) == {frozenset(["ft2", "downloaded_model"]), frozenset(["ft3", "ft3_bf16", "ft3_fp8"]),
                          frozenset(["ft4"])}, rec["summary"]  # fmt: skip
    for group, w in named.items():
        truth = next(TRUTH[r] for r in group if r in TRUTH)
        assert abs(w - truth) <= 0.02, rec["text"]
    kept = _analyze(prints["kept"], lib.folder)["recipe"]  # the base is an ingredient: named with its fp8 re-save
    assert dict((g["reference"], g["also"]) for g in kept["groups"])["sd15"] == ["base_fp8"], kept["summary"]
    child = _analyze(family["ft1"], lib.folder)["recipe"]  # ft1 itself: ft6 is its child, not a copy
    assert child["kind"] == "copy" and child["copy_of"] == "ft1"
    assert not any("ft6" in g["also"] for g in child["groups"])
    vectors = lib.folder / "vectors"
    assert any(vectors.iterdir())
    shutil.rmtree(vectors)
    again = _analyze(prints["mix"], lib.folder)
    assert again["recipe"]["text"] == rec["text"]
    assert again["recipe"]["groups"] == rec["groups"]
    assert any(vectors.iterdir())
    assert sdf("refs", "verify", "--library", lib.folder).exit_code == 0


def _mixed(fps: list[Fingerprint], weights: list[float], seed: int, size: float) -> Fingerprint:
    """A merge of ``fps`` made in fingerprint space, trained further (an independent change of
    relative size ``size`` in every sketch): the kind of model a hub is full of."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in fps[0].tensors.items():
        if t.dtype.startswith("I"):
            out[name] = t
            continue
        values = sum(w * fp.tensors[name].values.astype(np.float64) for w, fp in zip(weights, fps, strict=True))
        scale = size * float(np.sqrt(np.mean(np.square(t.values.astype(np.float64))))) + 1e-9
        out[name] = replace(t, values=(values + scale * rng.standard_normal(t.values.shape)).astype(np.float32),
                            digest="", sample=None)  # fmt: skip
    return Fingerprint(fps[0].scheme, dict(fps[0].identity), out)


def test_component_swap_is_found_among_merges_of_its_sources(
    prints: dict, family_specs_sd1: dict, tmp_path: Path
) -> None:
    """A component swap (UNet of ft2, text encoder of ft3, VAE of ft5) against 7 references and
    40 merges of them trained further: the text encoder and VAE are a small share of the change, so
    the pursuit alone let merges outrank ft3 and ft5 (the answer was an 'unknown method' of ft2 and
    ft3); each component's source is now looked up over its own blocks."""
    from sdforensics.synth.specs import Swap

    s = family_specs_sd1
    swap = write_safetensors(Swap({"unet": s["ft2"], "text_encoder": s["ft3"], "vae": s["ft5"]}),
                             tmp_path / "swap.safetensors")  # fmt: skip
    fps = prints["fps"]
    fts = ["ft1", "ft2", "ft3", "ft4", "ft5", "ft6"]
    lib = Library(tmp_path / "lib")
    lib.add(fps["base"], "sd15", official=True)
    for n in fts:
        lib.add(fps[n], n)
    rng = np.random.default_rng(5)
    for i in range(40):
        w = rng.dirichlet(np.ones(len(fts)) * 0.5)
        lib.add(_mixed([fps[n] for n in fts], list(w), i, 0.03), f"hub{i:02d}")
    rec = _analyze(swap, lib.folder)["recipe"]
    assert rec["kind"] == "component_swap", rec["summary"]
    assert {p: v["copy_of"] for p, v in rec["parts"].items()} == {"unet": "ft2", "text_encoder": "ft3", "vae": "ft5"}


def test_position_ids_stored_as_floats_leave_the_search_vector_unchanged(prints: dict) -> None:
    """sd-mecha writes CLIP's position_ids in the merge's float dtype where the base has int64; as
    floats their 0..76 counted as a change 50x a fine-tune's in the vector, and every sd-mecha merge
    was ranked as if made of nothing in the library."""
    from sdforensics.library.vectors import Projector
    from sdforensics.model.architecture import block_map_of

    fp = prints["fps"]["ft2"]
    key = next(k for k in fp.tensors if k.endswith("position_ids"))
    t = fp.tensors[key]
    assert t.dtype.startswith("I")
    as_float = replace(t, dtype="F16", values=np.asarray(t.values, np.float32))
    floats = Fingerprint(fp.scheme, dict(fp.identity), {**fp.tensors, key: as_float})
    proj = Projector(block_map_of("sd1"))
    assert np.array_equal(proj.vector(floats).raw, proj.vector(fp).raw)


def test_a_search_reads_only_the_base_and_its_candidates_from_disk(
    prints: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vectors stored by ``refs add`` are read back, so a search over 27 references reads in full
    only the base and its 15 candidates, each once (the few references checked for being re-saves of
    them: their samples alone, once).
    The SD1 layout (27 block names) did not fit the vector file's first 256-byte header: no stored
    vector was ever found, and every search re-read every fingerprint (the 2,000-reference library
    took 234 s)."""
    import sdforensics.library.search as search

    fps = prints["fps"]
    lib = Library(tmp_path / "lib")
    lib.add(fps["base"], "sd15", official=True)
    for n in ("ft1", "ft2", "ft3", "ft4", "ft5", "ft6"):
        lib.add(fps[n], n)
    for i in range(20):
        lib.add(_unrelated(fps["base"], 100 + i), f"other{i}")
    loaded: list[str] = []
    checked: list[str] = []  # read for a re-save check: the samples alone
    real = search.load_reference

    def counted(e: object, samples_only: bool = False) -> object:
        (checked if samples_only else loaded).append(e.name)  # type: ignore[attr-defined]
        return real(e, samples_only)  # type: ignore[arg-type]

    monkeypatch.setattr(search, "load_reference", counted)
    doc = _analyze(prints["mix"], lib.folder)
    assert doc["library"]["references"] == 27
    assert {r: round(w, 2) for r, w in _weights(doc).items() if abs(w) > 0.02} == TRUTH, doc["recipe"]["text"]
    # read in full: the base and 15 candidates, each once; ft6 (a child of ft1) never
    assert "sd15" in loaded and len(loaded) <= 16 and "ft6" not in loaded, " ".join(sorted(loaded))
    assert len(loaded) == len(set(loaded)) and len(checked) == len(set(checked)), (loaded, checked)
    assert not set(checked) & set(loaded)
