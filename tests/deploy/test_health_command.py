"""`flame health URL` (the units' readiness check, issue 13 item 6) against a real HTTP server
on loopback. Over HTTPS with the platform CA: tests/deploy/test_systemd_run.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flame.cli.main import main
from flame.common.ports import free_port as _free_port


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/flood":  # a hostile or broken server: an endless health body
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while True:
                    self.wfile.write(chunk)
            except OSError:
                return
        if self.path == "/sr" and self.headers["Host"] != "_flame":
            status, body = 404, b'{"error": "not_found"}'
        elif self.path in ("/health", "/sr"):
            status, body = 200, b'{"status": "ok"}'
        else:
            status, body = 503, b'{"status": "no_table"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def base() -> Iterator[str]:
    server = _serve(0)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["--json", "health", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def test_healthy_and_not(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, seen = run(capsys, base + "/health")
    assert code == 0
    assert seen["healthy"] is True
    assert "HTTP 200" in str(seen["seen"])
    code, seen = run(capsys, base + "/ready")
    assert code == 1
    assert seen["healthy"] is False
    assert "503" in str(seen["seen"])
    # an SR without its table answers 503: up, for --any-answer
    code, _ = run(capsys, base + "/ready", "--any-answer")
    assert code == 0


def test_host_header_reaches_the_server(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, base + "/sr")[0] == 1
    assert run(capsys, base + "/sr", "--host-header", "_flame")[0] == 0


def test_wait_until_the_server_comes_up(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    holder: list[ThreadingHTTPServer] = []
    timer = threading.Timer(0.6, lambda: holder.append(_serve(port)))
    timer.start()
    try:
        started = time.monotonic()
        code, seen = run(capsys, f"http://127.0.0.1:{port}/health", "--wait", "120")
        assert code == 0
        assert int(str(seen["attempts"])) > 1
        # It returned once the server was up, not at the end of the wait (~0.7 s measured).
        assert time.monotonic() - started < 60
    finally:
        timer.join()
        for server in holder:
            server.shutdown()
            server.server_close()


def test_gives_up_when_the_wait_ends(capsys: pytest.CaptureFixture[str]) -> None:
    port = _free_port()
    started = time.monotonic()
    code, seen = run(capsys, f"http://127.0.0.1:{port}/health", "--wait", "0.5")
    assert code == 1
    assert "ConnectError" in str(seen["seen"])
    assert time.monotonic() - started < 15  # it gave up (~0.6 s measured; headroom for load)


def test_reads_a_bounded_part_of_the_answer(base: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, seen = run(capsys, base + "/flood")
    assert code == 0
    assert len(str(seen["seen"])) < 5000
    assert time.monotonic() - started < 30  # the endless body was cut (~0.05 s measured)


def test_refuses_what_is_not_a_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "127.0.0.1:7070/health"]) == 1
    assert "http:// or https://" in capsys.readouterr().err
