"""sdf index --engine ray on a local Ray cluster (127.0.0.1, 2 CPUs, started here and stopped after):
the library equals the --engine local one entry for entry, also with a worker killed (-9) mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import sdf

from sdforensics.collection.engine import LocalEngine
from sdforensics.collection.index import index_paths
from sdforensics.fingerprinting.fpfile import load_fingerprint
from sdforensics.library.registry import Registry
from sdforensics.library.store import Library

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'sdforensics[cluster]'")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster on 127.0.0.1 with 2 worker CPUs, for this module only."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def models(family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray-models")
    for name, path in family.items():
        shutil.copy2(path, folder / f"{name}.safetensors")
    return folder


def _content(lib: Path) -> dict[str, tuple]:
    out = {}
    for e in Library(lib).entries:
        fp = load_fingerprint(e.path)
        arrays = tuple(np.asarray(t.values).tobytes() for _, t in sorted(fp.tensors.items()))
        out[e.name] = (e.official, json.dumps(fp.identity, sort_keys=True), arrays,
                       tuple((s.path, s.sha256) for s in e.sources))
    return out


@pytest.fixture(scope="module")
def local_library(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("local") / "lib"
    index_paths([models], lib, LocalEngine(1), registry=Registry([]))
    return lib


def test_ray_engine_library_equals_the_local_one(cluster: None, models: Path, local_library: Path,
                                                 tmp_path: Path) -> None:
    from sdforensics.collection.ray_engine import RayEngine
    from sdforensics.collection.task import failed_result

    lib = tmp_path / "lib"
    summary = index_paths([models], lib, RayEngine(max_in_flight=2, failed=failed_result), registry=Registry([]))
    assert not summary.skipped
    assert len(summary.fingerprinted) == len(list(models.iterdir()))
    assert _content(lib) == _content(local_library)
    assert Library(lib).verify() == []
    # a pool of 2 processes (as `sdf index --jobs 2`: the workers' BLAS on the cores, Ray's on one thread)
    pool = tmp_path / "pool"
    index_paths([models], pool, LocalEngine(2), registry=Registry([]), threads=1)
    assert _content(pool) == _content(lib)


def _running_task_pids() -> list[int]:
    """Ray names a worker process after the task it runs (``ray::run_task``)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if cmd.startswith(b"ray::run_task"):
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_mid_run_has_its_file_redone(cluster: None, models: Path, local_library: Path,
                                                     tmp_path: Path) -> None:
    from sdforensics.collection.ray_engine import RayEngine
    from sdforensics.collection.task import failed_result

    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            pids = _running_task_pids()
            if pids:
                time.sleep(0.1)  # inside the file, not at its first byte
                if pids[0] not in _running_task_pids():
                    continue  # its task ended meanwhile: kill a worker that is running one
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                except ProcessLookupError:
                    continue
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    lib = tmp_path / "lib"
    try:
        summary = index_paths([models], lib, RayEngine(max_in_flight=2, failed=failed_result),
                              registry=Registry([]))
    finally:
        stop.set()
        thread.join()
    assert killed, "no worker was caught running a task"
    assert not summary.skipped, summary.skipped
    assert _content(lib) == _content(local_library)  # complete, nothing twice, nothing partial
    assert Library(lib).verify() == []


def test_cli_engine_ray_and_its_absence(cluster: None, models: Path, local_library: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    lib = tmp_path / "lib"
    res = sdf("index", models, "--library", lib, "--engine", "ray", "-f", "json", "-q")
    assert res.exit_code == 0, res.stderr
    assert {e.name for e in Library(lib).entries} == {e.name for e in Library(local_library).entries}
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    res = sdf("index", models, "--library", tmp_path / "lib2", "--engine", "ray", "-q")
    assert res.exit_code == 2
    line = "--engine ray needs Ray, which is not installed: pip install 'sdforensics[cluster]'"
    assert res.stderr.strip() == f"error: {line}"


def test_ray_workers_read_urls_where_they_are(cluster: None, models: Path, local_library: Path,
                                              tmp_path: Path) -> None:
    """Workers get URLs (never bytes) and stream them from the server: the same library as a local read."""
    from range_server import RangeServer

    from sdforensics.collection.ray_engine import RayEngine
    from sdforensics.collection.task import failed_result

    server = RangeServer(models).start()
    try:
        names = sorted(p.name for p in models.iterdir())
        lib = tmp_path / "lib"
        summary = index_paths([server.url(n) for n in names], lib, RayEngine(max_in_flight=2, failed=failed_result),
                              registry=Registry([]))
        served = {p for p, _, _ in server.log}
    finally:
        server.stop()
    assert not summary.skipped and len(summary.fingerprinted) == len(names)
    assert served == {"/" + n for n in names}
    here, there = _content(local_library), _content(lib)
    assert here.keys() == there.keys()
    for name in here:
        assert here[name][:3] == there[name][:3]  # official flag, identity, fingerprint arrays
        assert [sha for _, sha in here[name][3]] == [sha for _, sha in there[name][3]]
        assert there[name][3][0][0] == server.url(Path(here[name][3][0][0]).name)
