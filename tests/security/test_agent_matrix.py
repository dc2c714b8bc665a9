"""Issue 13: the cluster agent's authorization matrix, every route × every kind of caller.

The agent runs tenant code on its host for the SFEMC, so everything but its health check is the
operator's (the SFEMC's token). Requests that pass the gate name an SFE that does not exist or
carry a body the agent refuses (404/422-style answers), so the matrix changes nothing on the
host between cells.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from flame.common.auth import Role, TokenStore
from flame.common.diagnostics import DiagnosticSink
from flame.sfemc.agent import build_agent_vim, create_agent_app
from flame.topology.loader import parse_topology

from .matrix import CALLERS, DOC_ROWS, PUBLIC_ROW, assert_covers, headers, row

pytestmark = pytest.mark.asyncio

TOPOLOGY = """\
flame_topology: 1
name: one
service_routers: {sr-1: {address: 127.0.0.1}}
clusters: {edge: {sr: sr-1, capacity: {cpus: 2, memory: 2 GB, disk: 4 GB}}}
"""
GONE = "/v1/sfes/no.such.sfe"

CASES: dict[tuple[str, str], tuple[str, Any, dict[str, int]]] = {
    ("GET", "/health"): ("/health", None, PUBLIC_ROW),
    ("GET", "/v1/vim"): ("/v1/vim", None, row(a=403, operator=200)),
    ("GET", "/v1/sfes"): ("/v1/sfes", None, row(a=403, operator=200)),
    ("GET", "/v1/sfes/{sfe}"): (GONE, None, row(a=403, operator=200)),  # absent
    ("PUT", "/v1/sfes/{sfe}"): (GONE, {"spec": {}}, row(a=403, operator=422)),
    ("POST", "/v1/sfes/{sfe}/boot"): (f"{GONE}/boot", None, row(a=403, operator=422)),
    ("POST", "/v1/sfes/{sfe}/stop"): (f"{GONE}/stop", None, row(a=403, operator=200)),
    ("DELETE", "/v1/sfes/{sfe}"): (GONE, None, row(a=403, operator=200)),
    ("GET", "/v1/sfes/{sfe}/logs"): (f"{GONE}/logs", None, row(a=403, operator=422)),
    **{key: (key[1], None, expected) for key, expected in DOC_ROWS.items()},
}


@pytest_asyncio.fixture
async def agent(tmp_path: Path) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    store = TokenStore(tmp_path / "tokens.json")
    tokens = {
        "tenant_a": store.issue("acme", Role.TENANT, "acme"),
        "tenant_b": store.issue("globex", Role.TENANT, "globex"),
        "router": store.issue("sr-1", Role.ROUTER),
        "operator": store.issue("sfemc", Role.OPERATOR),
    }
    sink = DiagnosticSink()
    topology = parse_topology(TOPOLOGY, "one.yaml", sink)
    assert topology is not None
    vim = build_agent_vim(topology, ["edge"], tmp_path / "agent", port_base=42000)
    app = create_agent_app(vim, store)
    yield app, tokens
    await vim.close()


async def test_every_agent_route_answers_each_caller_as_its_rule_says(
    agent: tuple[Any, dict[str, str]],
) -> None:
    app, tokens = agent
    assert_covers(app, {key: case[2] for key, case in CASES.items()})
    got: dict[tuple[str, str], dict[str, int]] = {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as http:
        for key, (path, body, _) in CASES.items():
            got[key] = {}
            for caller in CALLERS:
                response = await http.request(
                    key[0], path, json=body, headers=headers(caller, tokens)
                )
                got[key][caller] = response.status_code
                if response.status_code >= 400 and not key[1].startswith("/docs"):
                    assert response.json()["error"], response.text  # JSON errors, always
    assert got == {key: case[2] for key, case in CASES.items()}
