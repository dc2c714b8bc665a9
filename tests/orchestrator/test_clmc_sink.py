"""Alert rules from the orchestrator to a real CLMC alert API over HTTP (ORCH-8): delivered,
replaced, removed; kept and retried while the CLMC is down."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from flame.clmc.alerts.api import install_alert_routes
from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.service import AlertService
from flame.common.auth import Principal, Role, TokenStore, parse_bearer
from flame.common.ports import free_port
from flame.orchestrator.alerts import AlertRulesRefused
from flame.orchestrator.clmc_sink import HttpAlertSink
from flame.tosca.model import AlertRule, Comparison, EventType

RULE = AlertRule(
    name="slow",
    policy="scale",
    event_type=EventType.THRESHOLD,
    measurement="sr_fqdn",
    field="response_time",
    threshold=80.0,
    granularity_s=3.0,
    aggregation="mean",
    comparison=Comparison.GT,
    tags=(("fqdn", "vod.example"),),
    notify_sfemc=True,
)


@contextmanager
def clmc(port: int, tokens: TokenStore, service: AlertService) -> Iterator[str]:
    app = FastAPI()

    def authenticate(request: Request) -> Principal:
        return tokens.authenticate(parse_bearer(request.headers.get("authorization")))

    install_alert_routes(app, service, authenticate)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_rules_reach_the_clmc_and_survive_its_absence(tmp_path: Path) -> None:
    tokens = TokenStore(tmp_path / "tokens.json")
    operator = tokens.issue("orchestrator", Role.OPERATOR)
    service = AlertService(None, Notifier(None))
    port = free_port()
    sink = HttpAlertSink(f"http://127.0.0.1:{port}", operator, retry_s=0.1)
    try:
        sink.set_rules("vod", "acme", (RULE,), "vod-1")  # nobody listens yet
        assert sink.pending() == ["vod"]
        with clmc(port, tokens, service) as url:
            wait_for(lambda: sink.pending() == [])
            rules = httpx.get(
                url + "/v1/alerts", headers={"Authorization": f"Bearer {operator}"}
            ).json()
            assert [
                (r["tenant"], r["sfc"], r["sfci"], r["name"], r["threshold"]) for r in rules
            ] == [("acme", "vod", "vod-1", "slow", 80.0)]
            changed = dataclasses.replace(RULE, threshold=120.0)
            sink.set_rules("vod", "acme", (changed,), "vod-1")
            assert [r.threshold for _, r, _ in service.engine.rules()] == [120.0]
            sink.remove_rules("vod", "vod-1")
            assert service.engine.rules() == []
    finally:
        sink.close()


def test_a_busy_clmc_keeps_the_rules_pending_until_it_takes_them() -> None:
    """503 (and 429) is "later", not "no": the rules stay pending and are retried, never
    sooner than the CLMC's Retry-After; a 400 is the deploying user's error."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, int]] = []
    times: list[float] = []
    answers = iter([503, 204])

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status = next(answers, 400)
            seen.append((self.path, status))
            times.append(time.monotonic())
            body = b'{"error": "webhook not allowed"}' if status == 400 else b""
            self.send_response(status)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sink = HttpAlertSink(f"http://127.0.0.1:{server.server_address[1]}", None, retry_s=0.05)
    try:
        sink.set_rules("vod", "acme", (RULE,), "vod-1")
        assert sink.pending() == ["vod"]  # 503: kept
        wait_for(lambda: sink.pending() == [])
        assert seen == [("/v1/alerts/vod/vod-1", 503), ("/v1/alerts/vod/vod-1", 204)]
        # Retry-After: 1 against a back-off of 50 ms (a stall only makes the gap longer).
        assert times[1] - times[0] >= 0.9
        with pytest.raises(AlertRulesRefused, match="webhook not allowed"):
            sink.set_rules("vod", "acme", (RULE,), "vod-1")
        assert sink.pending() == []
    finally:
        sink.close()
        server.shutdown()
        server.server_close()
