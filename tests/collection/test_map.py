"""`sdf map`: a generated collection with a known lineage (12 width-16 models), indexed and mapped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import sdf

from sdforensics.collection.lineage import union_groups
from sdforensics.report.render_map import map_to_dot, map_to_html
from sdforensics.synth.collection import plan_collection, write_collection

HOSTILE = '<img src=x onerror=alert(1)>"&\x1b[31m'
"""A file stem a hostile uploader could choose (no slash: it is a file name)."""


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("map")
    folder = root / "models"
    write_collection(folder, plan_collection(12, seed=1), width=16, names={"g0-F.2": HOSTILE})
    truth = json.loads((folder / "truth.json").read_text())
    lib = root / "lib"
    res = sdf("map", folder, "--library", lib, "--base", "base", "--format", "json", "-q")
    assert res.exit_code == 0, res.stderr
    return {"doc": json.loads(res.stdout), "truth": truth, "lib": lib}


def _same(truth: dict[str, Any]) -> dict[str, str]:
    """Each model -> its copy group's first name (a byte copy or a re-save is the same model)."""
    names = [n["name"] for n in truth["nodes"]]
    at = {n: i for i, n in enumerate(names)}
    pairs = [(at[e["source"]], at[e["target"]]) for e in truth["edges"] if e["kind"] == "copy"]
    return {names[i]: names[g[0]] for g in union_groups(len(names), pairs) for i in g}


def test_map_finds_copies_resaves_and_swaps(mapped: dict[str, Any]) -> None:
    doc = mapped["doc"]
    groups = {(d["how"], frozenset(d["names"])) for d in doc["duplicates"]}
    assert ("bytes", frozenset({"g0-mix", "g0-copy"})) in groups
    assert ("weights", frozenset({"g0-F", "g0-resave-bf16"})) in groups
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert len(nodes) == 12
    assert nodes["g0-resave-bf16"]["kind"] == "copy" and nodes["g0-resave-bf16"]["group"] == "g0-F"
    swap = {(e["source"], e["note"]) for e in doc["edges"] if e["target"] == "g0-swap"}
    assert swap == {("g0-G", "text_encoder, unet"), ("g0-F", "vae")}
    assert nodes["g0-swap"]["kind"] == "swap"
    # a LoRA baked into a few layers is not a re-save, though most of its values are the parent's
    assert nodes["g0-lora"]["kind"] in ("finetune", "lora")


def test_map_orients_finetunes_and_weighs_merges(mapped: dict[str, Any]) -> None:
    doc, truth = mapped["doc"], mapped["truth"]
    same = _same(truth)
    got = {(same.get(e["source"], e["source"]), same.get(e["target"], e["target"]), e["kind"]): e
           for e in doc["edges"]}
    for e in truth["edges"]:
        s, t = same[e["source"]], same[e["target"]]
        if e["kind"] in ("finetune", "lora"):
            assert (s, t, "finetune") in got or (s, t, "lora") in got, f"{s} -> {t} missing"
            assert (t, s, "finetune") not in got  # the direction comes from the weights
        elif e["kind"] == "merge":
            edge = got.get((s, t, "merge"))
            assert edge is not None, f"merge {s} -> {t} missing"
            assert abs(edge["weight"] - e["weight"]) <= 0.02
            assert 0.0 < edge["confidence"] <= 1.0
    derived = [e for e in doc["edges"] if e["kind"] in ("finetune", "lora", "merge")]
    wanted = {(same[e["source"]], same[e["target"]]) for e in truth["edges"] if e["kind"] != "copy"}
    extra = [e for e in derived if (same.get(e["source"]), same.get(e["target"])) not in wanted]
    assert not extra
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["base"]["kind"] == "base"
    assert nodes["g0-F"]["kind"] == "root" and nodes["g0-F"]["unexplained"] > 0.9  # explained by no other
    assert nodes["g0-adddiff"]["kind"] == "merge" and nodes["g0-adddiff"]["unexplained"] < 0.05
    assert nodes[HOSTILE]["recipe"] == "fine-tune of g0-F.1"


def test_map_html_is_self_contained_and_escaped_and_dot_parses(mapped: dict[str, Any]) -> None:
    import sdforensics

    m = sdforensics.map_collection(mapped["lib"], base="base")
    page = map_to_html(m)
    assert "<script" not in page.lower() and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;&quot;&amp;" in page
    assert "\x1b" not in page
    assert page.count("<svg") == 1 and "data:image/png;base64," in page
    for section in ("duplicates", "graph", "similarity", "models"):
        assert f"id='{section}'" in page
    dot = map_to_dot(m)
    assert dot.startswith("digraph sdf_map {") and dot.rstrip().endswith("}")
    assert "\x1b" not in dot
    quoted = r'"(?:[^"\\]|\\.)*"'
    node_lines = [ln for ln in dot.splitlines() if re.fullmatch(rf"\s*{quoted} \[.*\];", ln)]
    edge_lines = [ln for ln in dot.splitlines() if re.fullmatch(rf"\s*{quoted} -> {quoted} \[.*\];", ln)]
    assert len(node_lines) == len(m.nodes) and len(edge_lines) == len(m.edges)
    assert dot.count("{") == dot.count("}")


def test_map_needs_a_library_or_paths(tmp_path: Path) -> None:
    res = sdf("map", "-f", "json")
    assert res.exit_code == 2 and "--library" in res.stderr
    res = sdf("map", "--library", tmp_path / "nope")
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_fingerprint_collection_keeps_merges_linear_and_copies_equal(family: dict[str, Path]) -> None:
    import numpy as np

    from sdforensics.api import fingerprint_model
    from sdforensics.library.vectors import resave_of
    from sdforensics.synth.collection import fingerprint_collection, truth_of

    _, base = fingerprint_model(family["base"], device="cpu")
    _, ft = fingerprint_model(family["ft1"], device="cpu")
    plan = plan_collection(12, seed=2)
    prints = fingerprint_collection(plan, base, ft, seed=2)
    assert set(prints) == {n.name for n in plan} and truth_of(plan)["base"] == "base"
    node = {n.name: n for n in plan}
    mix = node["g0-mix"]
    key = next(k for k, t in base.tensors.items() if t.structure is not None)
    want = sum(w * prints[p].tensors[key].structure for p, w in zip(mix.parents, mix.weights, strict=True))
    assert np.allclose(prints["g0-mix"].tensors[key].structure, want)
    assert prints["g0-copy"].identity["sha256"] == prints["g0-mix"].identity["sha256"]
    resave = next(n for n in plan if n.op == "resave")
    assert resave_of(prints[resave.parents[0]], prints[resave.name], 0.995, per_tensor=0.9)
    assert not resave_of(prints["g0-F.1"], prints["g0-lora"], 0.995, per_tensor=0.9)
    hashes = {n: prints[n].identity["component_hashes"] for n in ("g0-swap", "g0-G", "g0-F")}
    assert hashes["g0-swap"]["unet"] == hashes["g0-G"]["unet"] and hashes["g0-swap"]["vae"] == hashes["g0-F"]["vae"]
    assert hashes["g0-G"]["unet"] != hashes["g0-F"]["unet"]
