"""Models read where they are: a real HTTP/1.1 range server on 127.0.0.1 (tests/range_server.py)
serves safetensors, a torch .ckpt and a sharded checkpoint; every fault is injected by the server.
The answer must equal a local read of the same bytes, or be one clear line with nothing stored."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import empty_library, sdf
from range_server import RangeServer
from safetensors.torch import save_file

from sdforensics.api import fingerprint_model
from sdforensics.core.errors import SdfError
from sdforensics.fingerprinting.fingerprint import Fingerprint
from sdforensics.library.registry import Registry
from sdforensics.library.store import Library
from sdforensics.readers.remote import RemoteChangedError, RemoteError, RemoteOptions, as_location, open_remote
from sdforensics.synth.specs import family_specs, state_dict, write_ckpt, write_safetensors

FAST = RemoteOptions(timeout=0.5, retries=3, backoff=0.01, block=1 << 20)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[RangeServer, Path]:
    root = tmp_path_factory.mktemp("served")
    spec = family_specs("sd1", width=16, finetunes=1, seed=5)["ft1"]
    write_safetensors(spec, root / "m.safetensors")
    write_ckpt(spec, root / "m.ckpt")
    sd = state_dict(spec)
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    wmap = {}
    for shard, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(root / shard))
        wmap.update({k: shard for k in keys})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    server = RangeServer(root).start()
    yield server, root
    server.stop()


@pytest.fixture(autouse=True)
def _clean(served: tuple[RangeServer, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    served[0].clear()
    for k, v in {"SDF_REMOTE_TIMEOUT": "0.5", "SDF_REMOTE_RETRIES": "3", "SDF_REMOTE_BACKOFF": "0.01",
                 "SDF_REMOTE_BLOCK": str(1 << 20)}.items():
        monkeypatch.setenv(k, v)


def _same(a: Fingerprint, b: Fingerprint) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(
        np.array_equal(a.tensors[k].values, b.tensors[k].values) and a.tensors[k].digest == b.tensors[k].digest
        for k in a.tensors)


@pytest.fixture(scope="module")
def local(served: tuple[RangeServer, Path]) -> dict[str, tuple]:
    root = served[1]
    return {n: fingerprint_model(root / n, device="cpu")
            for n in ("m.safetensors", "m.ckpt", "model.safetensors.index.json")}


@pytest.mark.parametrize("name", ["m.safetensors", "m.ckpt", "model.safetensors.index.json"])
def test_a_url_reads_like_the_local_file(served: tuple[RangeServer, Path], local: dict, name: str) -> None:
    server, _ = served
    a_local, fp_local = local[name]
    a, fp = fingerprint_model(as_location(server.url(name)), device="cpu")
    assert str(a.path) == server.url(name)
    assert a.hashes == a_local.hashes and a.hashes is not None
    assert a.identity == a_local.identity
    assert _same(fp, fp_local)
    assert all(r is not None and r.startswith("bytes=") for r in server.ranges(name))  # only range requests


def test_the_header_comes_first_in_a_bounded_range(served: tuple[RangeServer, Path]) -> None:
    server, root = served
    ckpt = open_remote(server.url("m.safetensors"), FAST)
    ckpt.close()
    assert server.ranges("m.safetensors") == ["bytes=0-1048575"]  # one 1 MiB request: header validated, no body


def test_a_dropped_connection_resumes_from_the_last_byte(served: tuple[RangeServer, Path], local: dict) -> None:
    server, root = served
    f = server.fault("m.safetensors")
    f.drop_after, f.drop_times = 300_000, 3
    a, fp = fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    assert a.hashes == local["m.safetensors"][0].hashes and _same(fp, local["m.safetensors"][1])
    starts = [int(r.split("=")[1].split("-")[0]) for r in server.ranges("m.safetensors") if r]
    resumed = [s for s in starts[1:] if s % (1 << 20)]  # not on a block boundary: a resume
    assert len(resumed) >= 3 and all(s > 0 for s in resumed)  # never from zero


def test_5xx_answers_are_retried_then_given_up_with_one_line(served: tuple[RangeServer, Path], local: dict) -> None:
    server, _ = served
    server.fault("m.safetensors").errors = 2
    a, fp = fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    assert _same(fp, local["m.safetensors"][1])
    server.clear()
    server.fault("m.safetensors").errors = 100
    res = sdf("analyze", server.url("m.safetensors"), "--library", empty_library_path(served))
    assert res.exit_code == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1
    assert "gave up at byte 0 after 4 failed tries (last: HTTP 503" in res.stderr


def empty_library_path(served: tuple[RangeServer, Path]) -> Path:
    return empty_library(served[1].parent)


def test_a_slow_server_times_out_and_is_retried(served: tuple[RangeServer, Path], local: dict) -> None:
    server, _ = served
    f = server.fault("m.ckpt")
    f.stall, f.stall_times = 2.0, 2  # longer than the 0.5 s timeout
    a, fp = fingerprint_model(as_location(server.url("m.ckpt")), device="cpu")
    assert a.hashes == local["m.ckpt"][0].hashes and _same(fp, local["m.ckpt"][1])


def test_a_file_replaced_mid_read_stops_and_nothing_is_stored(served: tuple[RangeServer, Path],
                                                               tmp_path: Path) -> None:
    server, root = served
    data = (root / "m.safetensors").read_bytes()
    changed = data[:-4096] + bytes(4096)  # same size, other bytes: only the ETag tells
    f = server.fault("m.safetensors")
    f.replace_after, f.replacement = 2, changed
    with pytest.raises(RemoteChangedError, match="changed while being read .*ETag"):
        fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    server.clear()
    f = server.fault("m.safetensors")
    f.replace_after, f.replacement = 1, data + b"x" * 10  # longer: Content-Range's total tells
    lib = tmp_path / "lib"
    summary = _index_url(server.url("m.safetensors"), lib)
    assert summary.fingerprinted == [] and len(summary.skipped) == 1
    assert "its size went from" in summary.skipped[0][1] and "nothing was stored" in summary.skipped[0][1]
    assert Library(lib).entries == []


def _index_url(url: str, lib: Path):  # noqa: ANN202
    from sdforensics.collection.index import index_paths

    return index_paths([url], lib, registry=Registry([]))


def test_a_server_ignoring_range_is_streamed_once_or_refused_in_one_line(
        served: tuple[RangeServer, Path], local: dict) -> None:
    server, _ = served
    server.fault("m.safetensors").ignore_range = True
    a, fp = fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    assert a.hashes == local["m.safetensors"][0].hashes and _same(fp, local["m.safetensors"][1])
    assert len(server.ranges("m.safetensors")) == 1  # the 200 body, read once
    server.clear()
    f = server.fault("m.safetensors")
    f.ignore_range, f.drop_after, f.drop_times = True, 2_000_000, 1
    with pytest.raises(RemoteError, match="ignores Range requests, so the read cannot resume"):
        fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    server.clear()
    server.fault("m.ckpt").ignore_range = True  # a zip's index is at the end
    with pytest.raises(RemoteError, match="ignores Range requests"):
        fingerprint_model(as_location(server.url("m.ckpt")), device="cpu")


def test_cli_analyze_url_json_equals_the_local_file(served: tuple[RangeServer, Path], tmp_path: Path) -> None:
    server, root = served
    lib = empty_library(tmp_path)
    remote = sdf("analyze", server.url("m.ckpt"), "--library", lib, "-f", "json", "-q")
    here = sdf("analyze", root / "m.ckpt", "--library", lib, "-f", "json", "-q")
    assert remote.exit_code == 0 and here.exit_code == 0, remote.stderr
    r, h = json.loads(remote.stdout), json.loads(here.stdout)
    assert r["file"].pop("path") == server.url("m.ckpt")
    h["file"].pop("path")
    assert r == h
    missing = sdf("analyze", server.url("nothere.safetensors"), "--library", lib)
    assert missing.exit_code == 2 and missing.stderr.strip().endswith("nothere.safetensors: HTTP 404 Not Found")


def test_sharded_index_cannot_name_shards_outside_its_folder(served: tuple[RangeServer, Path]) -> None:
    server, root = served
    bad = root / "bad.safetensors.index.json"
    bad.write_text(json.dumps({"weight_map": {"a": "../secret.safetensors"}}))
    with pytest.raises(SdfError, match="outside the index's folder"):
        open_remote(server.url("bad.safetensors.index.json"), FAST)


def test_index_urls_equals_index_of_the_local_files(served: tuple[RangeServer, Path], tmp_path: Path) -> None:
    server, root = served
    from sdforensics.collection.index import index_paths

    here = tmp_path / "here"
    here.mkdir()
    shutil.copy2(root / "m.safetensors", here / "m.safetensors")
    a = index_paths([here], tmp_path / "a", registry=Registry([]))
    b = index_paths([server.url("m.safetensors")], tmp_path / "b", registry=Registry([]))
    assert len(a.fingerprinted) == len(b.fingerprinted) == 1
    ea, eb = Library(tmp_path / "a").entries[0], Library(tmp_path / "b").entries[0]
    assert ea.sources[0].sha256 == eb.sources[0].sha256 and eb.sources[0].path == server.url("m.safetensors")
    again = index_paths([server.url("m.safetensors")], tmp_path / "b", registry=Registry([]))
    assert again.unchanged == 1 and again.fingerprinted == []


def test_fsspec_urls_read_like_the_local_file(served: tuple[RangeServer, Path], local: dict) -> None:
    fsspec = pytest.importorskip("fsspec")
    _, root = served
    fs = fsspec.filesystem("memory")
    fs.pipe("/sdf-test/m.safetensors", (root / "m.safetensors").read_bytes())
    try:
        a, fp = fingerprint_model(as_location("memory://sdf-test/m.safetensors"), device="cpu")
    finally:
        fs.rm("/sdf-test/m.safetensors")
    assert a.hashes == local["m.safetensors"][0].hashes and _same(fp, local["m.safetensors"][1])
    res = sdf("analyze", "nosuchscheme://bucket/m.safetensors", "--library", empty_library_path(served))
    assert res.exit_code == 2 and "no reader for nosuchscheme:// URLs" in res.stderr


def _index_skips_one(url: str, lib: Path) -> str:
    """`sdf index URL`: nothing stored, the file reported skipped on one line; that line."""
    res = sdf("index", url, "--library", lib, "-q")
    assert Library(lib).entries == []
    assert res.stdout.startswith("0 fingerprinted,") and "1 skipped" in res.stdout, res.stdout + res.stderr
    skipped = [ln for ln in res.stdout.splitlines() if ln.startswith("skipped ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped {url}: "), res.stdout
    return skipped[0]


@pytest.mark.parametrize(("name", "faulted"), [("m.ckpt", "m.ckpt"),
                                               ("model.safetensors.index.json", "model-00002-of-00002.safetensors")])
def test_a_drop_mid_file_resumes_for_ckpt_and_shards(served: tuple[RangeServer, Path], local: dict,
                                                     name: str, faulted: str) -> None:
    server, _ = served
    f = server.fault(faulted)
    f.drop_after, f.drop_times = 200_000, 2
    a, fp = fingerprint_model(as_location(server.url(name)), device="cpu")
    assert f.drop_times == 0  # both drops happened
    assert a.hashes == local[name][0].hashes and _same(fp, local[name][1])
    statuses = [s for p, _, s in server.log if p == "/" + faulted]
    assert len(statuses) >= 3 and set(statuses) == {206}


def test_5xx_mid_file_is_retried_and_a_server_that_stays_down_stores_nothing(
        served: tuple[RangeServer, Path], local: dict, tmp_path: Path) -> None:
    server, _ = served
    f = server.fault("m.safetensors")
    f.errors, f.errors_after = 2, 3  # the header and two body blocks went well
    a, fp = fingerprint_model(as_location(server.url("m.safetensors")), device="cpu")
    assert f.errors == 0 and a.hashes == local["m.safetensors"][0].hashes and _same(fp, local["m.safetensors"][1])
    server.clear()
    f = server.fault("m.safetensors")
    f.errors, f.errors_after = 100, 3
    line = _index_skips_one(server.url("m.safetensors"), tmp_path / "lib")
    assert re.search(r"gave up at byte [1-9][0-9,]* after 4 failed tries \(last: HTTP 503", line), line


def test_a_server_that_stays_slow_is_given_up_and_nothing_is_stored(served: tuple[RangeServer, Path],
                                                                      tmp_path: Path) -> None:
    server, _ = served
    f = server.fault("m.ckpt")
    f.stall, f.stall_times = 1.0, 100  # every answer later than the 0.5 s timeout
    line = _index_skips_one(server.url("m.ckpt"), tmp_path / "lib")
    assert "after 4 failed tries (last: TimeoutError: timed out); nothing was stored" in line


def test_a_file_replaced_mid_index_is_one_line_and_nothing_is_stored(served: tuple[RangeServer, Path],
                                                                       tmp_path: Path) -> None:
    server, root = served
    data = (root / "m.safetensors").read_bytes()
    f = server.fault("m.safetensors")
    f.replace_after, f.replacement = 3, data[:-4096] + bytes(4096)  # same size: only the ETag tells
    line = _index_skips_one(server.url("m.safetensors"), tmp_path / "lib")
    assert "the file changed while being read (its ETag/Last-Modified went from" in line
    assert "nothing was stored" in line
