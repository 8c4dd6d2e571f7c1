"""A local HTTP server for download tests (no internet): Range requests, dropped connections, a request log."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with Range support.

    ``drop_after[name] = n`` closes the next response for ``name`` after n bytes of its body; ``requests`` logs
    (name, Range header) per request; ``delay`` holds each response that long, and ``max_active`` records the
    most responses in flight at once (to check a bound on concurrency).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
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
                    self.respond()
                finally:
                    with outer.lock:
                        outer.active -= 1

            def respond(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data, start = outer.files[name], 0
                ranged = self.headers.get("Range") if outer.honour_range else None
                if ranged:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
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
