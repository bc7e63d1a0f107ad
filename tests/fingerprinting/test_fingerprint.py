"""Fingerprints: deterministic, linear, compact, and accurate against the full weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sdf

from sdforensics.api import fingerprint_model
from sdforensics.core.errors import FingerprintError
from sdforensics.file_compare import compare_files
from sdforensics.fingerprinting.fpfile import load_fingerprint, save_fingerprint
from sdforensics.model.architecture import block_maps
from sdforensics.synth.specs import Merge, write_safetensors


def test_fingerprint_is_deterministic_and_round_trips(family: dict[str, Path], tmp_path: Path) -> None:
    _, a = fingerprint_model(family["ft1"], device="cpu")
    _, b = fingerprint_model(family["ft1"], device="cpu")
    path = save_fingerprint(a, tmp_path / "ft1.sdfp")
    c = load_fingerprint(path)
    for name, t in a.tensors.items():
        assert np.array_equal(t.values, b.tensors[name].values)
        back = c.tensors[name]
        if t.kind == "exact":  # fp16 sources: their values, kept exactly
            assert np.array_equal(t.values, back.values)
        else:  # sketches are stored in 16 bits: within half a step of max |x| / 32767 (and read as float32)
            assert np.max(np.abs(t.values - back.values)) <= np.max(np.abs(t.values)) / 32767 * 0.501
            assert np.max(np.abs(t.structure - back.structure)) <= np.max(np.abs(t.structure)) / 32767 * 0.501
            assert np.array_equal(t.sample, back.sample)
        assert t.digest == back.digest
        assert t.digest or t.dtype.startswith("I")  # float tensors carry their content digest
    assert c.identity["family"] == "sd1" and c.scheme == a.scheme
    only = load_fingerprint(path, samples_only=True)  # what a search's re-save checks read
    assert only.identity == c.identity and only.scheme == c.scheme and list(only.tensors) == list(c.tensors)
    for name, t in c.tensors.items():
        back = only.tensors[name]
        assert (back.sample is None) == (t.sample is None)
        assert t.sample is None or np.array_equal(back.sample, t.sample)
        assert back.values.size == 0 and back.structure is None and np.array_equal(back.stats, t.stats)


def test_a_fingerprint_file_is_the_same_bytes_every_time(family: dict[str, Path], tmp_path: Path) -> None:
    """Two libraries indexed from the same models hold the same files: a fingerprint saved twice (and
    in another process) gives the same bytes, a file the safetensors library reads as well. The
    metadata order of ``safetensors.save_file`` came from a randomly seeded hash map."""
    import subprocess
    import sys

    import safetensors.numpy

    _, fp = fingerprint_model(family["ft2"], device="cpu")
    paths = [save_fingerprint(fp, tmp_path / f"ft2_{i}.sdfp") for i in range(4)]
    code = "import sys; from sdforensics.fingerprinting.fpfile import load_fingerprint as l, save_fingerprint as s; "
    code += "s(l(sys.argv[1]), sys.argv[2])"
    subprocess.run([sys.executable, "-c", code, str(paths[0]), str(tmp_path / "other.sdfp")], check=True)
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in [*paths[1:], tmp_path / "other.sdfp"])
    theirs = safetensors.numpy.load_file(str(paths[0]))
    ours = load_fingerprint(paths[0])
    assert theirs["stats"].shape == (len(ours.tensors), 8)
    assert np.array_equal(theirs["stats"], np.stack([t.stats for t in ours.tensors.values()]))


def test_version_1_fingerprint_files_still_load(family_prints: dict, tmp_path: Path) -> None:
    """Fingerprints shared before 16-bit storage: every span in float32, index rows without scales."""
    import safetensors.numpy

    a = family_prints["ft1"]
    parts: dict[str, list[np.ndarray]] = {"values": [], "samples": [], "structure": []}
    index = []
    for t in a.tensors.values():
        row = [t.name, list(t.shape), t.dtype, t.kind, t.digest]
        for kind, arr in (("values", t.values), ("samples", t.sample), ("structure", t.structure)):
            off = sum(x.size for x in parts[kind])
            n = 0 if arr is None else arr.size
            if n:
                parts[kind].append(arr.astype(np.float32))
            row += ["f32", off if n else 0, n]
        index.append(row)
    arrays = {f"{k}_{w}": np.concatenate(v) if v and w == "f32" else np.zeros(0, np.float32)
              for k, v in parts.items() for w in ("f32", "f16")}
    arrays["stats"] = np.stack([t.stats for t in a.tensors.values()])
    meta = {"format": "sdforensics.fingerprint", "version": "1", "scheme": json.dumps(a.scheme.to_json()),
            "identity": json.dumps(a.identity), "index": json.dumps(index)}
    path = tmp_path / "v1.sdfp"
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)
    back = load_fingerprint(path)
    assert back.scheme == a.scheme
    for name, t in a.tensors.items():
        assert np.allclose(back.tensors[name].values, t.values, rtol=1e-6, atol=1e-9), name
        assert (t.structure is None) == (back.tensors[name].structure is None)
    index[0] = index[0][:-1]  # a row one field short is refused, not misread
    meta["index"] = json.dumps(index)
    safetensors.numpy.save_file(arrays, str(path), metadata=meta)
    with pytest.raises(FingerprintError, match="row 0 is malformed"):
        load_fingerprint(path)


def test_fingerprints_of_a_merge_are_the_merge_of_fingerprints(family_specs_sd1: dict, tmp_path: Path) -> None:
    s = family_specs_sd1
    paths = {n: write_safetensors(s[n], tmp_path / f"{n}.safetensors", dtype=torch.float32) for n in ("ft1", "ft2")}
    mix = write_safetensors(Merge(((0.3, s["ft1"]), (0.7, s["ft2"]))), tmp_path / "mix.safetensors",
                            dtype=torch.float32)
    fa, fb, fm = (fingerprint_model(p, device="cpu")[1] for p in (paths["ft1"], paths["ft2"], mix))
    for name, t in fm.tensors.items():
        if t.dtype.startswith("I"):
            continue
        want = 0.3 * fa.tensors[name].values + 0.7 * fb.tensors[name].values
        assert np.allclose(t.values, want, rtol=1e-4, atol=1e-6), name


def test_block_delta_cosine_from_fingerprints_matches_exact(family: dict[str, Path], library: Path) -> None:
    """Per-block delta cosine (model - base vs ref - base) within 0.01 of the full-weight value."""
    from sdforensics import analyze

    base = family["base"]
    target = family["ft6"]  # the child of ft1
    result = analyze(target, library=library, device="cpu")
    sim = {r["reference"]: r for r in result.to_json()["similarity"]["references"]}
    worst = 0.0
    for ref in ("ft1", "ft2", "ft5"):
        exact = _exact_block_delta_cos(target, family[ref], base)
        for block, cos in exact.items():
            est = sim[ref]["blocks"][block]
            worst = max(worst, abs(est - cos))
    assert worst <= 0.01, worst
    assert sim["ft1"]["delta_cosine"] > 0.5 > abs(sim["ft2"]["delta_cosine"])  # parent vs unrelated


def _exact_block_delta_cos(t: Path, r: Path, b: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    T, R, B = (load_file(str(p)) for p in (t, r, b))
    bmap = block_maps()["sd1"]
    acc: dict[str, list[float]] = {}
    for key in T:
        if not T[key].is_floating_point():
            continue
        block = bmap.block_of(key)
        if block is None:
            continue
        dt = (T[key].double() - B[key].double()).reshape(-1)
        dr = (R[key].double() - B[key].double()).reshape(-1)
        s = acc.setdefault(block, [0.0, 0.0, 0.0])
        s[0] += float(dt @ dr)
        s[1] += float(dt @ dt)
        s[2] += float(dr @ dr)
    return {k: v[0] / (v[1] ** 0.5 * v[2] ** 0.5) for k, v in acc.items()}


def test_refs_commands_add_list_remove_import_verify(family: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    res = sdf("refs", "add", family["base"], "--name", "SD 1.5", "--official", "--library", lib, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert sdf("refs", "add", family["ft1"], "--name", "ft1", "--library", lib).exit_code == 0
    listing = json.loads(sdf("refs", "list", "--library", lib, "--format", "json").stdout)
    fps = {r["name"]: r for r in listing["references"] if r["fingerprint"]}
    assert set(fps) == {"SD 1.5", "ft1"} and fps["SD 1.5"]["official"]
    assert sdf("refs", "verify", "--library", lib).exit_code == 0
    # share a fingerprint: import into another library without the weights
    shared = next((lib / "fingerprints").glob("ft1*.sdfp"))
    other = tmp_path / "other"
    assert sdf("refs", "import", shared, "--library", other).exit_code == 0
    assert any(r["name"] == "ft1" for r in json.loads(sdf("refs", "list", "--library", other, "-f", "json").stdout)[
        "references"])
    # tamper: verify names the file and fails
    shared.write_bytes(shared.read_bytes()[:-1] + b"\0")
    res = sdf("refs", "verify", "--library", lib)
    assert res.exit_code == 1 and "ft1" in res.stderr
    assert sdf("refs", "remove", "ft1", "--library", other).exit_code == 0
    assert sdf("refs", "remove", "nope", "--library", other).exit_code == 2


def test_identical_components_and_bf16_resave_against_library(family: dict[str, Path], library: Path,
                                                              tmp_path: Path, family_specs_sd1: dict) -> None:
    from sdforensics.synth.specs import Swap

    s = family_specs_sd1
    swap = write_safetensors(Swap({"unet": s["ft2"], "text_encoder": s["ft3"], "vae": s["ft4"]}),
                             tmp_path / "swap.safetensors")
    doc = json.loads(sdf("analyze", swap, "-f", "json", "--library", library).stdout)
    assert doc["identical"] == {"unet": "ft2", "text_encoder": "ft3", "vae": "ft4"}
    assert doc["recipe"]["kind"] == "component_swap"
    text = sdf("analyze", swap, "--library", library).stdout
    assert "identical unet = ft2, text encoder = ft3, vae = ft4" in text
    text = sdf("analyze", family["ft1"], "--library", library).stdout
    assert "identical to ft1: every component holds the same weights" in text
    bf = write_safetensors(s["ft5"], tmp_path / "ft5-bf16.safetensors", dtype=torch.bfloat16)
    doc = json.loads(sdf("analyze", bf, "-f", "json", "--library", library).stdout)
    comps = {c["reference"]: c["weight"] for c in doc["recipe"]["components"]}
    assert abs(comps.get("ft5", 0) - 1.0) <= 0.01, doc["recipe"]


def test_compare_two_files_exactly(family: dict[str, Path]) -> None:
    same = compare_files(family["ft1"], family["ft1"])
    assert all(x.identical for x in same.layers) and same.to_json()["identical"]
    diff = compare_files(family["ft1"], family["ft6"])
    blocks = diff.blocks()
    assert set(blocks) >= {"BASE", "IN00", "M00", "OUT11", "VAE"}
    assert all(0.99 < b["cosine"] < 1.0 for b in blocks.values())
    res = sdf("compare", family["ft1"], family["ft6"], "--format", "json")
    assert res.exit_code == 0 and json.loads(res.stdout)["identical"] is False


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cpu_row_pass_agrees_with_the_general_path(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache-blocked CPU pass gives the fingerprint the whole-tensor path gives (float tolerance),
    and a tensor with NaN/Inf still goes the general way, which counts and zeroes them."""
    import sdforensics.fingerprinting.fingerprint as fpmod
    from sdforensics.fingerprinting.fingerprint import Fingerprinter
    from sdforensics.readers.base import TensorInfo

    gen = torch.Generator().manual_seed(3)
    tensors = {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.randn(320, 320, 1, 1, generator=gen),
        "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.randn(320, 320, 3, 3, generator=gen),
        "model.diffusion_model.middle_block.1.proj_out.weight": torch.randn(2000, 700, generator=gen) + 0.3,
    }
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    bad = tensors["model.diffusion_model.middle_block.1.proj_out.weight"].clone()
    bad[5, 5], bad[7, 1] = float("nan"), float("inf")
    tensors["model.diffusion_model.output_blocks.0.0.skip_connection.weight"] = bad

    def prints() -> dict:
        f = Fingerprinter(device="cpu")
        f.prepare({k: tuple(v.shape) for k, v in tensors.items()}, lambda k: "M00")
        for k, v in tensors.items():
            f.consume(k, TensorInfo(k, tuple(v.shape), "F16", v.numel() * v.element_size()), v)
        return f.prints

    fast = prints()
    monkeypatch.setattr(fpmod, "_row_pass_dtypes", lambda: ())
    slow = prints()
    for k in tensors:
        a, b = fast[k], slow[k]
        np.testing.assert_allclose(a.stats, b.stats, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6 * np.abs(b.values).max())
        np.testing.assert_array_equal(a.sample, b.sample)
        np.testing.assert_allclose(a.structure, b.structure, rtol=1e-5, atol=1e-5 * np.abs(b.structure).max())
    nan_print = fast["model.diffusion_model.output_blocks.0.0.skip_connection.weight"]
    assert (nan_print.stats[6], nan_print.stats[7]) == (1, 1)


def test_sample_and_sketch_together_estimate_dots_better_than_the_sketch_alone() -> None:
    """The coordinate sample is a second unbiased estimate of each dot product; weighed with the
    CountSketch it lowers the error of delta cosines (here: 40 pairs of unrelated 1-M-value deltas)."""
    from sdforensics.fingerprinting.fingerprint import Fingerprinter, Scheme
    from sdforensics.fingerprinting.similarity import _estimators
    from sdforensics.readers.base import TensorInfo

    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    shape = (1024, 1024)
    scheme = Scheme(block_budget=1024)  # as many buckets as sample values: the sample halves the variance
    g = torch.Generator().manual_seed(7)
    base = torch.randn(shape, generator=g)
    err_sketch, err_both = [], []
    for _ in range(40):
        prints = []
        for t in (base, base + 0.05 * torch.randn(shape, generator=g), base + 0.05 * torch.randn(shape, generator=g)):
            f = Fingerprinter(device="cpu", scheme=scheme)
            f.prepare({key: shape}, lambda k: "M00")
            f.consume(key, TensorInfo(key, shape, "F32", 4 * base.numel()), t)
            prints.append(f.prints[key])
        b, x, y = prints
        parts = _estimators(x, [b, y])
        assert len(parts) == 2 and parts[0][0] == pytest.approx(x.values.size / (x.values.size + x.sample.size))

        def cos(use: list) -> float:
            dot = nx = ny = 0.0
            for w, t, stack in use:
                dx, dy = t - stack[0], stack[1] - stack[0]
                dot, nx, ny = dot + w * dx @ dy, nx + w * dx @ dx, ny + w * dy @ dy
            return dot / (nx * ny) ** 0.5

        err_sketch.append(cos([(1.0, x.values, np.stack([b.values, y.values]))]))
        err_both.append(cos(parts))
    rms_sketch, rms_both = np.sqrt(np.mean(np.square(err_sketch))), np.sqrt(np.mean(np.square(err_both)))
    assert rms_both < 0.85 * rms_sketch, (rms_both, rms_sketch)


def test_similarity_of_chosen_references_is_the_same_as_computed_afresh(family_prints: dict) -> None:
    """The fit's candidates are a subset of the library: their similarity is taken from the first pass."""
    from sdforensics.fingerprinting.similarity import select_references, similarity
    from sdforensics.model.architecture import architecture

    names = ["base", "ft1", "ft2", "ft3", "ft6"]
    prints = [family_prints[n] for n in names]
    target = family_prints["ft4"]
    arch, blocks = architecture("sd1"), block_maps()["sd1"]
    full = similarity(target, prints, names, 0, arch, blocks)
    chosen = [4, 0, 2]
    picked = select_references(full, target, [prints[i] for i in chosen], chosen, 0, arch, blocks)
    fresh = similarity(target, [prints[i] for i in chosen], [names[i] for i in chosen], 1, arch, blocks)
    assert picked.references == ("ft6", "base", "ft2") and picked.base == "base"
    for field in ("layer_delta", "layer_raw", "block_delta", "block_raw", "overall_delta", "overall_raw"):
        # equal up to float64 summation order (delta terms are differences of raw dot products)
        np.testing.assert_allclose(getattr(picked, field), getattr(fresh, field), rtol=1e-9, atol=1e-12,
                                   equal_nan=True)


def test_coordinate_sample_is_the_same_whether_a_tensor_is_sketched_or_kept_exact() -> None:
    """At small widths a block's budget can keep a big tensor exact; the element-wise checks then
    read its sample off the exact values, at the positions a sketch would have stored."""
    from sdforensics.fingerprinting.fingerprint import Fingerprinter, Scheme, coordinate_samples
    from sdforensics.readers.base import TensorInfo

    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    w = torch.randn(640, 640, generator=torch.Generator().manual_seed(5)).half()
    prints = {}
    for budget in (4096, 1 << 20):  # 409,600 values: sketched into 4,096 buckets, or kept exact
        f = Fingerprinter(Scheme(block_budget=budget), device="cpu")
        f.prepare({key: tuple(w.shape)}, lambda k: "M00")
        f.consume(key, TensorInfo(key, tuple(w.shape), "F16", w.numel() * 2), w)
        prints[budget] = (f.scheme, f.prints[key])
    (s_sk, sketched), (s_ex, exact) = prints[4096], prints[1 << 20]
    assert sketched.kind == "sketch" and exact.kind == "exact" and exact.sample is None
    np.testing.assert_array_equal(coordinate_samples([exact], s_ex), coordinate_samples([sketched], s_sk))
    small = Fingerprinter(device="cpu")
    bias = torch.zeros(640).half()
    small.prepare({"b": (640,)}, lambda k: "M00")
    small.consume("b", TensorInfo("b", (640,), "F16", 1280), bias)
    assert coordinate_samples([small.prints["b"]], small.scheme) is None  # small tensors: none, as before
