"""echo: the smallest real FLAME service function (standard library only).

It listens on FLAME_PORT (set by the process VIM; 8080 when run by hand), answers /health for the
VIM's health check and echoes every other request back as JSON, naming the endpoint (FLAME_SFE)
that answered, so a client can see which SFE the service routers picked.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SFE = os.environ.get("FLAME_SFE", "local")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the service routers pool connections

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Flame-Sfe", SFE)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, b"ok\n", "text/plain")
            return
        doc = {
            "sfe": SFE,
            "fqdn": os.environ.get("FLAME_FQDN"),
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
        }
        self._send(200, json.dumps(doc).encode() + b"\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._send(200, body, self.headers.get("Content-Type") or "application/octet-stream")

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{SFE} {self.address_string()} {format % args}\n")
        sys.stdout.flush()


def main() -> None:
    port = int(os.environ.get("FLAME_PORT", "8080"))
    host = os.environ.get("FLAME_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    # SIGTERM from the VIM: stop accepting, finish, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"echo {SFE} listening on {host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    print(f"echo {SFE} stopped", flush=True)


if __name__ == "__main__":
    main()
