"""A local HTTP server for download tests (no internet): Range requests, dropped connections, a request log, and
the ways real mirrors, proxies and CDNs misbehave (wrong ranges, gzip, transient errors)."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with Range support.

    ``drop_after[name] = n`` closes the next response for ``name`` after n bytes of its body; ``requests`` logs
    (name, Range header) per request and ``headers`` each request's headers; ``delay`` holds each response that
    long, and ``max_active`` records the most requests held in that delay at once (a bound on the client's
concurrency: a client thread waits for its response there).

    Misbehaviour, per file name: ``range_from[name] = k`` answers every Range request with a 206 whose body starts
    at byte k, whatever was asked (a proxy serving from 0); ``gzip`` (a set) serves the file gzip-encoded when the
    client accepts gzip, ``force_gzip`` always (ranges then count bytes of the gzip stream, as HTTP defines them);
    ``corrupt_gzip`` sends bytes that are not gzip with ``Content-Encoding: gzip``; ``fail_next[name]`` is a list of
    (status, headers) answered first, one per request (429, 503, ...).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.headers: list[dict[str, str]] = []
        self.honour_range = True
        self.range_from: dict[str, int] = {}
        self.gzip: set[str] = set()
        self.force_gzip: set[str] = set()
        self.corrupt_gzip: set[str] = set()
        self.fail_next: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.delay = 0.0
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                with outer.lock:
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                try:
                    time.sleep(outer.delay)
                finally:
                    # counted until the response starts: a client may read the whole body and send its next request
                    # before this thread has returned, so counting to the end would see one transfer twice
                    with outer.lock:
                        outer.active -= 1
                self.respond()

            def respond(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                outer.headers.append(dict(self.headers.items()))
                if outer.fail_next.get(name):
                    status, headers = outer.fail_next[name].pop(0)
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data, start = outer.files[name], 0
                # with an encoding the representation served, and the one Range counts in, is the gzip stream
                accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
                encoded = name in outer.corrupt_gzip | outer.force_gzip or (name in outer.gzip and accepts_gzip)
                if name in outer.corrupt_gzip:
                    data = b"this is not a gzip stream " * 100
                elif encoded:
                    data = gzip.compress(data, mtime=0)
                ranged = self.headers.get("Range") if outer.honour_range else None
                if ranged:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = outer.range_from.get(name, start)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                if encoded:
                    self.send_header("Content-Encoding", "gzip")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = outer.drop_after.pop(name, None)
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def requested(self, name: str) -> list[str | None]:
        """The Range header of each request for ``name``, in order (None: the whole file)."""
        return [ranged for requested, ranged in self.requests if requested == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
