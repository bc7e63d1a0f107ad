"""A real HTTP/1.1 server on 127.0.0.1 for the remote-read tests: serves files from a folder with
Range requests and an ETag, and injects faults on request (per file, by the test).

Faults (a :class:`Faults` per URL path, changed by the test between runs):

* ``drop_after``: cut the connection after this many body bytes, for the next ``drop_times`` answers;
* ``errors``: answer the next N requests with ``error_status`` (503), once ``errors_after`` answers went well;
* ``stall``: hold the next ``stall_times`` answers this many seconds before the body (a slow server);
* ``replace_after``: after this many answers, serve ``replacement`` bytes (another ETag, maybe size);
* ``ignore_range``: answer 200 with the whole body to every request.

Every request is logged (path, Range header, status) so a test can check what the client asked.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Faults:
    drop_after: int | None = None
    drop_times: int = 0
    errors: int = 0
    errors_after: int = 0
    error_status: int = 503
    stall: float = 0.0
    stall_times: int = 0
    replace_after: int | None = None
    replacement: bytes | None = None
    ignore_range: bool = False
    answers: int = 0


@dataclass
class RangeServer:
    root: Path
    faults: dict[str, Faults] = field(default_factory=dict)
    log: list[tuple[str, str | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0
    _httpd: ThreadingHTTPServer | None = None

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def fault(self, rel: str) -> Faults:
        return self.faults.setdefault("/" + rel, Faults())

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def ranges(self, rel: str) -> list[str | None]:
        return [r for p, r, _ in self.log if p == "/" + rel]

    def start(self) -> RangeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._serve(self)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that drop a connection on purpose (the reader, after a jump)

        self._httpd = Quiet(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        rng = h.headers.get("Range")
        with self.lock:
            f = self.faults.setdefault(path, Faults())
            f.answers += 1
            n = f.answers
            error = f.errors > 0 and n > f.errors_after
            if error:
                f.errors -= 1
            stall = f.stall if f.stall_times > 0 else 0.0
            if stall:
                f.stall_times -= 1
            drop = f.drop_after if f.drop_times > 0 else None
            if drop is not None:
                f.drop_times -= 1
            replaced = f.replace_after is not None and n > f.replace_after
            ignore = f.ignore_range
        file = (self.root / path.lstrip("/")).resolve()
        if error:
            self._log(path, rng, f.error_status)
            self._send(h, f.error_status, b"busy\n", {})
            return
        if not file.is_file() or self.root.resolve() not in file.parents:
            self._log(path, rng, 404)
            self._send(h, 404, b"not found\n", {})
            return
        data = f.replacement if replaced and f.replacement is not None else file.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m is None or ignore:
            status, body, headers = 200, data, {}
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self._log(path, rng, 416)
                self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}", "ETag": etag})
                return
            status, body = 206, data[start:end + 1]
            headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        headers["ETag"] = etag
        headers["Accept-Ranges"] = "none" if ignore else "bytes"
        self._log(path, rng, status)
        if stall:
            time.sleep(stall)
        self._send(h, status, body, headers, drop)

    def _log(self, path: str, rng: str | None, status: int) -> None:
        with self.lock:
            self.log.append((path, rng, status))

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
              drop: int | None = None) -> None:
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if drop is not None and drop < len(body):
                h.wfile.write(body[:drop])
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
                return
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, OSError):
            h.close_connection = True
