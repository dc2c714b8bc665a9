"""The configuration store over HTTP and the orchestrator's recorder (CLMC-3): every version
recorded with the time it took effect, "what was in force at T", tenants reading only their
own chains' records, idempotent retries, and nothing lost while the CLMC is down."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st

from eventually import Fatal, eventually
from flame.clmc.service import ClmcService
from flame.clmc.store.duckdb_store import DuckDBStore
from flame.common.auth import Role, TokenStore
from flame.common.ports import free_port
from flame.orchestrator.config_record import ConfigRecorder, version_of


class Clmc:
    """A real CLMC (`ClmcService` with tokens) on a fixed loopback port, started on demand."""

    def __init__(self, directory: Path, tokens: TokenStore, port: int) -> None:
        self.service = ClmcService(directory, tokens, fsync=False)
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.service.app, host="127.0.0.1", port=port, log_config=None, access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Clmc:
        self.thread.start()
        eventually(self._started, what="the CLMC to start")
        return self

    def _started(self) -> bool:
        if not self.thread.is_alive():
            raise Fatal("the CLMC thread exited")
        return bool(self.server.started)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[TokenStore, dict[str, str]]:
    store = TokenStore(tmp_path / "tokens.json")
    issued = {
        "acme": store.issue("acme-bot", Role.TENANT, "acme"),
        "globex": store.issue("globex-bot", Role.TENANT, "globex"),
        "router": store.issue("sr", Role.ROUTER),
        "ops": store.issue("ops", Role.OPERATOR),
    }
    return store, issued


@pytest.fixture
def clmc(tmp_path: Path, tokens: tuple[TokenStore, dict[str, str]]) -> Iterator[Clmc]:
    with Clmc(tmp_path / "clmc", tokens[0], free_port()) as server:
        yield server


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def _http(clmc: Clmc, token: str) -> httpx.Client:
    client = httpx.Client(
        base_url=clmc.url, headers={"Authorization": f"Bearer {token}"}, trust_env=False
    )
    _OPEN.append(client)
    return client


def _put(http: httpx.Client, kind: str, name: str, **body: object) -> httpx.Response:
    return http.put(f"/v1/config/{kind}/{name}", json=body)


def test_clmc3_the_version_in_force_at_any_time_and_after_a_deletion(
    clmc: Clmc, tokens: tuple[TokenStore, dict[str, str]]
) -> None:
    ops = _http(clmc, tokens[1]["ops"])
    t1, t2, t3 = 1_000_000_000_000, 2_000_000_000_000, 3_000_000_000_000
    assert (
        _put(
            ops, "template", "vod", version="v1", time_ns=t1, tenant="acme", content={"a": 1}
        ).status_code
        == 201
    )
    assert (
        _put(
            ops, "template", "vod", version="v2", time_ns=t2, tenant="acme", content={"a": 2}
        ).status_code
        == 201
    )
    deleted = _put(
        ops, "template", "vod", version="deleted", time_ns=t3, tenant="acme", deleted=True
    )
    assert deleted.status_code == 201

    def at(when: int | str) -> httpx.Response:
        return ops.get("/v1/config/template/vod", params={"at": str(when)})

    assert at(t1 - 1).status_code == 404
    assert at(t1).json()["version"] == "v1"
    assert at(t2 - 1).json()["content"] == {"a": 1}
    assert at("1970-01-01T00:33:20Z").json()["version"] == "v2"  # t2 in RFC 3339
    assert at(t2 + 5).json()["content"] == {"a": 2}
    gone = at(t3 + 1).json()
    assert gone["deleted"] is True
    assert gone["content"] is None
    history = ops.get("/v1/config/template/vod/history", params={"bodies": "false"}).json()
    assert [v["version"] for v in history["versions"]] == ["v1", "v2", "deleted"]
    assert "content" not in history["versions"][0]
    assert history["versions"][1]["time"] == "1970-01-01T00:33:20.000000000Z"


def test_clmc3_a_retried_record_is_not_stored_twice(
    clmc: Clmc, tokens: tuple[TokenStore, dict[str, str]]
) -> None:
    ops = _http(clmc, tokens[1]["ops"])
    body = {"version": "v1", "time_ns": 5, "tenant": "acme", "content": {"x": [1, 2]}}
    assert _put(ops, "policies", "vod", **body).status_code == 201
    again = _put(ops, "policies", "vod", **body)
    assert again.status_code == 200
    assert again.json()["recorded"] is False
    assert len(ops.get("/v1/config/policies/vod/history").json()["versions"]) == 1


def test_tenants_read_only_their_own_chains_records_and_write_none(
    clmc: Clmc, tokens: tuple[TokenStore, dict[str, str]]
) -> None:
    issued = tokens[1]
    ops, acme, globex = (_http(clmc, issued[k]) for k in ("ops", "acme", "globex"))
    router = _http(clmc, issued["router"])
    _put(ops, "template", "shared-name", version="a1", time_ns=10, tenant="acme", content=1)
    _put(ops, "template", "shared-name", version="deleted", time_ns=20, tenant="acme", deleted=True)
    _put(ops, "template", "shared-name", version="g1", time_ns=30, tenant="globex", content=2)
    _put(ops, "topology", "sandbucket", version="t1", time_ns=10, content={"source": "x"})

    mine = acme.get("/v1/config/template/shared-name/history").json()["versions"]
    assert [v["version"] for v in mine] == ["a1", "deleted"]  # not globex's later record
    theirs = globex.get("/v1/config/template/shared-name/history").json()["versions"]
    assert [v["version"] for v in theirs] == ["g1"]
    assert (
        acme.get("/v1/config/template/shared-name", params={"at": "15"}).json()["version"] == "a1"
    )
    assert globex.get("/v1/config/template/shared-name", params={"at": "15"}).status_code == 404
    assert acme.get("/v1/config/template/shared-name", params={"at": "35"}).status_code == 404
    # Topologies are the platform's; writing is the orchestrator's (operator) only.
    assert acme.get("/v1/config/topology/sandbucket").status_code == 404
    assert ops.get("/v1/config/topology/sandbucket").json()["content"] == {"source": "x"}
    for client in (acme, router):
        refused = _put(client, "template", "mine", version="v", tenant="acme", content=1)
        assert refused.status_code == 403
        assert "error" in refused.json()
    assert router.get("/v1/config/template/shared-name").status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/config/secrets/x", None, 404),
        ("GET", "/v1/config/template/vod?at=yesterday", None, 400),
        ("GET", "/v1/config/template/vod?at=2026-12-06T05:00:00", None, 400),  # no zone
        ("GET", "/v1/config/template/vod?at=99999999999999999999", None, 400),
        ("GET", "/v1/config/template/vod?at=9999-12-31T23:59:59Z", None, 400),
        ("GET", "/v1/config/template/vod?at=1969-12-31T23:59:59Z", None, 400),
        ("PUT", "/v1/config/template/vod", b"[" * 9_000_000, 413),
        ("PUT", "/v1/config/template/vod", b"[" * 100_000 + b"]" * 100_000, 400),
        ("GET", "/v1/config/template/bad%20name", None, 400),
        ("GET", "/v1/config/template/..%2F..", None, 404),
        ("PUT", "/v1/config/template/vod", b"{not json", 400),
        ("PUT", "/v1/config/template/vod", b"[]", 400),
        ("PUT", "/v1/config/template/vod", b'{"version": "v", "content": 1}', 400),  # tenant
        ("PUT", "/v1/config/template/vod", b'{"version": "", "tenant": "acme"}', 400),
        ("PUT", "/v1/config/template/vod", b'{"version": "v", "tenant": "a", "time_ns": -1}', 400),
        ("PUT", "/v1/config/template/vod", b'{"version": "v", "tenant": "a", "extra": 1}', 400),
        ("PUT", "/v1/config/template/vod", b'{"version": "v w", "tenant": "a"}', 400),
    ],
)
def test_bad_requests_are_4xx_json_never_500(
    clmc: Clmc,
    tokens: tuple[TokenStore, dict[str, str]],
    method: str,
    path: str,
    body: bytes | None,
    status: int,
) -> None:
    ops = _http(clmc, tokens[1]["ops"])
    response = ops.request(method, path, content=body)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), min_size=1, max_size=12),
    st.integers(0, 60),
)
def test_clmc3_in_force_is_the_latest_version_not_after_t(
    puts: list[tuple[int, int]], probe: int
) -> None:
    """Property: at T the store answers the version recorded last among those at or before T
    (for equal times, the one recorded last)."""
    store = DuckDBStore()
    try:
        for i, (when, version) in enumerate(puts):
            store.put_config("template", "x", f"v{version}", f"body{i}", when)
        expected = None
        for i, (when, version) in enumerate(puts):
            if when <= probe and (expected is None or when >= expected[0]):
                expected = (when, f"v{version}", f"body{i}")
        got = store.config_at("template", "x", probe)
        if expected is None:
            assert got is None
        else:
            assert got is not None
            assert (got.time_ns, got.version, got.body) == expected
    finally:
        store.close()


def test_records_made_while_the_clmc_is_down_are_sent_later_with_their_own_time(
    tmp_path: Path, tokens: tuple[TokenStore, dict[str, str]]
) -> None:
    """The orchestrator spools; a restarted orchestrator sends what its predecessor left."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    ops_token = tokens[1]["ops"]
    recorder = ConfigRecorder(url, ops_token, spool, retry_s=0.05, timeout_s=0.5)
    before = time.time_ns()
    recorder.record("template", "vod", "acme", {"files": {"a.yaml": "x: 1"}})
    recorder.record("policies", "vod", "acme", {"alert_rules": []})
    time.sleep(0.2)  # a few retries against nothing
    assert recorder.flush() is False
    recorder.close()
    assert len(list(spool.glob("*.json"))) == 2  # nothing lost

    with Clmc(tmp_path / "clmc", tokens[0], port) as clmc:
        again = ConfigRecorder(url, ops_token, spool, retry_s=0.05)
        try:
            eventually(lambda: again.pending() == 0, what="the spooled records to be sent")
            assert again.sent == 2
        finally:
            again.close()
        ops = _http(clmc, ops_token)
        got = ops.get("/v1/config/template/vod").json()
        assert got["version"] == version_of({"files": {"a.yaml": "x: 1"}})
        assert before <= got["time_ns"] < before + 200_000_000  # spooled time, not send time
        assert got["tenant"] == "acme"


def test_a_record_the_clmc_refuses_is_set_aside_not_retried(
    clmc: Clmc, tmp_path: Path, tokens: tuple[TokenStore, dict[str, str]]
) -> None:
    spool = tmp_path / "spool"
    recorder = ConfigRecorder(clmc.url, tokens[1]["acme"], spool, retry_s=0.05)  # not operator
    try:
        recorder.record("template", "vod", "acme", {"files": {}})
        assert recorder.flush() is True
        assert recorder.pending() == 0
        assert recorder.sent == 0
        assert len(list((spool / "rejected").glob("*.json"))) == 1
        assert "403" in next((spool / "rejected").glob("*.why")).read_text()
    finally:
        recorder.close()


def test_the_config_command_answers_what_was_in_force(
    clmc: Clmc,
    tokens: tuple[TokenStore, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`flame config history` and `flame config at --time` with the config's CLMC and token (a
    tenant's: it sees its own chain, and nothing of another's)."""
    from flame.cli.main import main

    ops = _http(clmc, tokens[1]["ops"])
    body = {"tenant": "acme", "content": {"files": {"s.yaml": "a: 1\n"}}}
    _put(ops, "template", "vod", version="v1", time_ns=1_000, **body)
    _put(ops, "policies", "vod", version="p1", time_ns=1_000, tenant="acme", content={})
    _put(ops, "template", "vod", version="v2", time_ns=5_000, **body)
    config = tmp_path / "config.toml"
    config.write_text(f'clmc_url = "{clmc.url}"\ntoken = "{tokens[1]["acme"]}"\n')

    assert main(["--config", str(config), "config", "history", "vod"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["policies", "p1"],
        ["template", "v1"],
        ["template", "v2"],
    ]
    assert main(["--config", str(config), "--json", "config", "at", "vod", "--time", "4000"]) == 0
    in_force = json.loads(capsys.readouterr().out)["in_force"]
    assert {(v["kind"], v["version"]) for v in in_force} == {("template", "v1"), ("policies", "p1")}
    assert (
        main(["--config", str(config), "config", "at", "vod", "--kind", "template", "--show"]) == 0
    )
    assert "a: 1" in capsys.readouterr().out
    # Not in force before anything was recorded; another tenant's token sees nothing.
    assert main(["--config", str(config), "config", "at", "vod", "--time", "10"]) == 1
    config.write_text(f'clmc_url = "{clmc.url}"\ntoken = "{tokens[1]["globex"]}"\n')
    assert main(["--config", str(config), "config", "history", "vod"]) == 1
    assert "nothing recorded" in capsys.readouterr().err
