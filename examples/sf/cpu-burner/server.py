"""cpu-burner: a FLAME service function that uses CPU on demand (standard library only).

For CPU-triggered closed loops (CLMC-8 metrics, SFEMC-3/4 StateChange policies) and for
trying alert rules on `cpu.usage_user` by hand:

    POST /burn?seconds=N[&workers=W]   busy-loop W processes (default 1, at most 4) for N s
                                       (at most 300); answers at once
    POST /stop                         stop burning now
    GET  /                             {"sfe", "burning": workers still running}
    GET  /health                       the VIM's health check

The busy loops run as child processes, so the HTTP server (and its health check) stays
responsive, and the VIM's per-SFE CPU counts the whole process tree.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SFE = os.environ.get("FLAME_SFE", "local")
MAX_SECONDS = 300.0
MAX_WORKERS = 4
BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"

_workers: list[subprocess.Popen[bytes]] = []
_lock = threading.Lock()


def burning() -> int:
    with _lock:
        _workers[:] = [w for w in _workers if w.poll() is None]
        return len(_workers)


def burn(seconds: float, workers: int) -> None:
    stop()
    with _lock:
        for _ in range(workers):
            _workers.append(subprocess.Popen([sys.executable, "-c", BUSY, repr(seconds)]))


def stop() -> None:
    with _lock:
        for worker in _workers:
            worker.kill()
        for worker in _workers:
            worker.wait()
        _workers.clear()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, doc: object) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Flame-Sfe", SFE)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
            return
        self._send(200, {"sfe": SFE, "burning": burning()})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        url = urlsplit(self.path)
        if url.path == "/stop":
            stop()
            self._send(200, {"sfe": SFE, "burning": 0})
            return
        if url.path != "/burn":
            self._send(404, {"error": "not_found", "message": "POST /burn or /stop"})
            return
        query = parse_qs(url.query)
        try:
            seconds = float(query.get("seconds", ["10"])[0])
            workers = int(query.get("workers", ["1"])[0])
        except ValueError:
            self._send(400, {"error": "bad_request", "message": "seconds and workers are numbers"})
            return
        if not (0 < seconds <= MAX_SECONDS and 1 <= workers <= MAX_WORKERS):
            message = f"0 < seconds <= {MAX_SECONDS:g}, 1 <= workers <= {MAX_WORKERS}"
            self._send(400, {"error": "bad_request", "message": message})
            return
        burn(seconds, workers)
        self._send(202, {"sfe": SFE, "burning": workers, "seconds": seconds})

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    port = int(os.environ.get("FLAME_PORT", "8080"))
    host = os.environ.get("FLAME_HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True

    def shutdown(*_: object) -> None:
        stop()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    print(f"cpu-burner {SFE} on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
