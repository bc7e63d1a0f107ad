"""Issue 18: full-size throughput of `sdf index` on this machine through three paths, against
`openssl dgst -sha256` of the same files in the same run.

    flock /tmp/heavy.lock nice python bench/scale.py --models 4 --out /work/scratch/scale/bench

Writes N synthetic SD1.5 checkpoints at full width (fp16 safetensors, ~2.13 GB each; ``--width 16``
to develop), then indexes the folder into fresh libraries through:

1. ``--engine local`` (LocalEngine(2), each worker one torch thread, as ``sdf index --jobs 2``);
2. ``--engine ray`` on a local 2-CPU Ray cluster on 127.0.0.1 that this script starts (``ray.init``)
   and stops (``ray.shutdown``); cluster start timed apart, then a cold run (workers start) and a warm one;
3. the same files as ``http://`` and ``https://`` URLs (LocalEngine(2)) from a ranged HTTP server on
   127.0.0.1 run as a separate process by this script (``--serve``); https with a self-signed
   certificate made by ``openssl req`` and trusted through ``SSL_CERT_FILE``.

Every index run is timed in this process (``index_paths``: no interpreter start-up). The libraries
must equal the local one: names, source SHA-256s and fingerprint content (identity and arrays).
The model files and libraries are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import write_models  # noqa: E402 - bench/index.py, next to this file

from sdforensics.collection.engine import LocalEngine  # noqa: E402
from sdforensics.collection.index import index_paths  # noqa: E402
from sdforensics.fingerprinting.fpfile import load_fingerprint  # noqa: E402
from sdforensics.library.registry import Registry  # noqa: E402
from sdforensics.library.store import Library  # noqa: E402

CHUNK = 1 << 20


def serve(root: Path, cert: Path | None, key: Path | None) -> None:
    """A ranged HTTP/1.1 server for ``root`` on 127.0.0.1 (a free port, printed on stdout): reads only
    the bytes asked for (the test server in tests/range_server.py reads the whole file per request,
    fine at test width, not at 2 GB); ETag from size and mtime, as common static servers make it."""
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            file = (root / self.path.split("?", 1)[0].lstrip("/")).resolve()
            if not file.is_file() or root.resolve() not in file.parents:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            st = file.stat()
            size = st.st_size
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            start, end = (0, size - 1) if m is None else (int(m.group(1)), min(int(m.group(2) or size - 1), size - 1))
            self.send_response(200 if m is None else 206)
            if m is not None:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("ETag", f'"{size:x}-{st.st_mtime_ns:x}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            try:
                with open(file, "rb") as fh:
                    fh.seek(start)
                    left = end - start + 1
                    while left > 0:
                        block = fh.read(min(CHUNK, left))
                        if not block:
                            break
                        self.wfile.write(block)
                        left -= len(block)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if cert is not None and key is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


class Server:
    """``python bench/scale.py --serve ROOT`` as a child process; stopped by its own pid."""

    def __init__(self, root: Path, cert: Path | None = None, key: Path | None = None) -> None:
        cmd = [sys.executable, __file__, "--serve", str(root)]
        if cert is not None and key is not None:
            cmd += ["--cert", str(cert), "--key", str(key)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.scheme = "https" if cert else "http"

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def snapshot(lib: Path) -> dict[str, tuple[str, str, tuple[str, ...], dict[str, np.ndarray]]]:
    """Name -> (fingerprint file SHA-256: the files are deterministic, identity, source SHA-256s, arrays);
    paths left out (a URL is not a path)."""
    out = {}
    for e in Library(lib).entries:
        fp = load_fingerprint(e.path)
        arrays = {f"{t}/{a}": np.asarray(getattr(fp.tensors[t], a), dtype=np.float64)
                  for t in fp.tensors for a in ("stats", "values", "sample", "structure")
                  if getattr(fp.tensors[t], a) is not None}
        out[e.name] = (hashlib.sha256(e.path.read_bytes()).hexdigest(), json.dumps(fp.identity, sort_keys=True),
                       tuple(sorted(s.sha256 for s in e.sources)), arrays)
    return out


def compare(a: dict, b: dict) -> str:
    """'yes' (same names, SHA-256s, identity, bit-equal arrays), else what differs and by how much."""
    if a.keys() != b.keys():
        return f"NO: names {sorted(a)} vs {sorted(b)}"
    if any(a[k][1:3] != b[k][1:3] for k in a):
        return "NO: identity or SHA-256 differ"
    if all(a[k][0] == b[k][0] for k in a):
        return "yes"
    worst, values, differ = 0.0, 0, 0
    for k in a:
        for key, x in a[k][3].items():
            y = b[k][3][key]
            d = np.abs(x - y)
            values += x.size
            differ += int((d > 0).sum())
            if d.max(initial=0) > 0:
                worst = max(worst, float((d / np.maximum(np.abs(x), 1e-300)).max()))
    return (f"names, SHA-256, identity equal; {differ} of {values:,} fingerprint values differ, "
            f"largest relative difference {worst:.1e}")


def openssl(files: list[Path]) -> float:
    t = time.monotonic()
    subprocess.run(["openssl", "dgst", "-sha256", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--width", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/work/scratch/scale/bench"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cert", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.cert, args.key)
        return
    out: Path = args.out
    models = out / "models"
    shutil.rmtree(out, ignore_errors=True)
    models.mkdir(parents=True)
    servers: list[Server] = []
    try:
        files = write_models(models, args.width, args.models, seed=18)
        gb = sum(f.stat().st_size for f in files) / 1e9
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(out / "key.pem"), "-out", str(out / "cert.pem"), "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        os.environ["SSL_CERT_FILE"] = str(out / "cert.pem")  # spawned workers inherit it
        rows: list[tuple[str, float, str | None]] = []
        t_ssl = openssl(files)
        rows.append(("openssl dgst -sha256, files one after another", t_ssl, None))
        reg = Registry([])

        def run(label: str, where: list, engine: object, lib: Path) -> None:
            t = time.monotonic()
            s = index_paths(where, lib, engine, registry=reg, threads=1)  # type: ignore[arg-type]
            dt = time.monotonic() - t
            if len(s.fingerprinted) != len(files):
                raise SystemExit(f"{label}: {len(s.fingerprinted)} of {len(files)} indexed: {s.skipped}")
            same = None if lib == out / "lib-local" else compare(base, snapshot(lib))
            rows.append((label, dt, same))
            print(f"{label}: {dt:.2f} s", file=sys.stderr, flush=True)

        base: dict = {}
        run("--engine local (2 processes)", [models], LocalEngine(2), out / "lib-local")
        base = snapshot(out / "lib-local")
        import ray

        from sdforensics.collection.ray_engine import RayEngine

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        t = time.monotonic()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=False)
        rows.append(("(ray.init: local 2-CPU cluster on 127.0.0.1 started)", time.monotonic() - t, None))
        try:
            run("--engine ray, first run (workers start)", [models], RayEngine(), out / "lib-ray")
            run("--engine ray, warm workers", [models], RayEngine(), out / "lib-ray2")
        finally:
            ray.shutdown()
        for cert in (None, out / "cert.pem"):
            server = Server(models, cert, out / "key.pem" if cert else None)
            servers.append(server)
            run(f"{server.scheme}:// URLs from 127.0.0.1, --engine local (2 processes)",
                [server.url(f.name) for f in files], LocalEngine(2), out / f"lib-{server.scheme}")
            server.stop()
        t_ssl2 = openssl(files)
        rows.append(("openssl dgst -sha256 again (after the index runs)", t_ssl2, None))
        ref = (t_ssl + t_ssl2) / 2
        print(f"\n{len(files)} SD1.5 models at width 1/{args.width}, fp16, {gb:.2f} GB; "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; x openssl against the mean of the "
              f"two openssl runs ({ref:.2f} s)\n")
        print("| run | seconds | MB/s | x openssl | library equal to local |")
        print("|---|---|---|---|---|")
        for label, dt, same in rows:
            mbs = "" if label.startswith("(") else f"{gb * 1e3 / dt:.0f}"
            ratio = "" if label.startswith("(") else f"{dt / ref:.2f}"
            print(f"| {label} | {dt:.2f} | {mbs} | {ratio} | {same or ''} |")
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
