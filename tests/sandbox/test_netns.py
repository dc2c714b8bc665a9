"""`flame up --netns` pieces that need no root (issue 13 item 4; SFR-13): the address plan, the
kernel routes derived from the PCE's paths, the link liveness state machine over real UDP
sockets, the PCE's liveness API, and a clear refusal without root."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from flame.common.auth import Role, TokenStore
from flame.sandbox.netns import NetnsPlan, available, plan_network
from flame.sandbox.netns_routes import _paths_in, desired_routes
from flame.sfr.liveness import LinkProbe, Prober
from flame.topology.loader import load_topology

SANDPIT = Path(__file__).resolve().parents[2] / "src/flame/sandbox/data/sandpit.yaml"


@pytest.fixture
def net(tmp_path: Path) -> NetnsPlan:
    return plan_network(load_topology(SANDPIT), tmp_path)


def test_every_node_gets_its_namespace_and_a_private_address(net: NetnsPlan) -> None:
    assert len(net.nodes) == 11
    assert len({n.ns for n in net.nodes.values()}) == 11
    for node in net.nodes.values():
        assert node.address.startswith("10.200.0.")
        assert node.mgmt_ip.startswith("10.199.1.")
        assert len(node.ns) <= 15
    # Topology links and one access link per cluster host and UE; interface names fit 15 bytes.
    assert len([k for k in net.links if not k.access]) == 6
    assert {k.b for k in net.links if k.access} == {
        "edge-bristol", "edge-bath", "metro-london", "ue-bristol", "ue-bath",
    }  # fmt: skip
    core = net.link("sw-west", "sr-metro")
    assert core is not None
    assert core.latency_ms == 12.0
    assert NetnsPlan.from_json(net.to_json()) == net


def test_the_same_run_dir_gives_the_same_tag_another_a_different_one(tmp_path: Path) -> None:
    topology = load_topology(SANDPIT)
    a = plan_network(topology, tmp_path / "a")
    assert plan_network(topology, tmp_path / "a").tag == a.tag  # stale ones are found again
    assert plan_network(topology, tmp_path / "b").tag != a.tag  # two instances never meet


def _next(net: NetnsPlan, routes: dict[str, dict[str, tuple[str, str]]], at: str, to: str) -> str:
    """The neighbour `at` forwards `to`'s address to."""
    via, dev = routes[net.nodes[at].ns][net.nodes[to].address]
    for k in net.links:
        if k.a == at and k.a_if == dev and k.b_ip == via:
            return k.b
        if k.b == at and k.b_if == dev and k.a_ip == via:
            return k.a
    raise AssertionError(f"no link of {at} for {via} {dev}")


def test_routes_follow_the_pces_path_and_avoid_a_down_link(net: NetnsPlan) -> None:
    up: dict[frozenset[str], bool] = {}
    base = desired_routes(net, up, [])
    # Shortest latency: sr-ue-1 -> sw-west -> sr-metro (13 ms, not 15 via sw-east).
    assert _next(net, base, "sr-ue-1", "sr-metro") == "sw-west"
    assert _next(net, base, "sw-west", "sr-metro") == "sr-metro"
    # Clusters behind an SR are reached along the path to that SR, then its access link.
    assert _next(net, base, "sw-west", "metro-london") == "sr-metro"
    assert _next(net, base, "sr-metro", "metro-london") == "metro-london"
    # A path from a table overrides (the PCE chose it, e.g. by cost), both ways.
    chosen = ("sr-ue-1", "sw-west", "sw-east", "sr-metro")
    routes = desired_routes(net, up, [chosen])
    assert _next(net, routes, "sw-west", "sr-metro") == "sw-east"
    assert _next(net, routes, "sw-east", "sr-ue-1") == "sw-west"
    # The link down: the stale path is skipped and the base avoids it.
    up[frozenset(("sw-west", "sr-metro"))] = False
    routes = desired_routes(net, up, [("sr-ue-1", "sw-west", "sr-metro")])
    assert _next(net, routes, "sw-west", "sr-metro") == "sw-east"
    assert _next(net, routes, "sr-metro", "sr-ue-1") == "sw-east"


def test_paths_are_read_from_a_forwarding_table() -> None:
    table = {
        "table": {
            "routes": {
                "a.example": [{"endpoint": {}, "path": ["sr-ue-1", "sw-west", "sr-metro"]}],
                "b.example": [{"path": ["sr-ue-2"]}, {"path": "not a list"}],
            }
        }
    }
    assert sorted(_paths_in(table)) == [("sr-ue-1", "sw-west", "sr-metro"), ("sr-ue-2",)]


def test_loss_is_read_from_the_topology(tmp_path: Path) -> None:
    text = SANDPIT.read_text().replace(
        "latency: 4 ms, bandwidth: 10 Gbps, class: metro", "latency: 4 ms, loss: 0.5 %"
    )
    path = tmp_path / "t.yaml"
    path.write_text(text)
    link = next(k for k in load_topology(path).links if {k.a, k.b} == {"sw-west", "sw-east"})
    assert link.loss_pct == 0.5
    path.write_text(text.replace("loss: 0.5 %", "loss: 150 %"))
    with pytest.raises(Exception, match="loss must be a percentage"):
        load_topology(path)


def test_without_root_netns_mode_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flame.common.errors import UserError
    from flame.sandbox.up import UpOptions, run

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (available() or "")
    with pytest.raises(UserError, match="needs root"):
        run(UpOptions(run_dir=tmp_path, netns=True), tmp_path, announce=lambda *_: None)
    assert not (tmp_path / "up.json").exists()  # refused before anything started
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "tc" else "/usr/bin/" + tool)
    assert "'tc'" in (available() or "")


def test_liveness_reports_a_silent_neighbour_down_then_up_again() -> None:
    """Two probers on loopback addresses (SFR-13): stop one, the other reports the link down
    within the dead interval; start it again, up after `rise` hellos. Real UDP sockets."""
    reports: list[tuple[str, str, bool, float]] = []

    async def report(node: str, peer: str, up: bool) -> None:
        reports.append((node, peer, up, time.monotonic()))

    async def scenario() -> float:
        a = Prober("a", [LinkProbe("b", "127.0.3.1", "127.0.3.2")], report, dead_ms=120)
        b_links = [LinkProbe("a", "127.0.3.2", "127.0.3.1")]
        b = Prober("b", b_links, report, dead_ms=120)
        task_a = asyncio.create_task(a.run())
        task_b = asyncio.create_task(b.run())
        await asyncio.sleep(0.3)
        assert a.links[0].up is True  # seen, but never reported: it was never down
        assert reports == []
        task_b.cancel()
        stopped = time.monotonic()
        while not reports:
            await asyncio.sleep(0.01)
            assert time.monotonic() - stopped < 2
        b2 = Prober("b", [LinkProbe("a", "127.0.3.2", "127.0.3.1")], report, dead_ms=120)
        task_b2 = asyncio.create_task(b2.run())
        while len(reports) < 2:
            await asyncio.sleep(0.01)
            assert time.monotonic() - stopped < 4
        for task in (task_a, task_b2):
            task.cancel()
        await asyncio.gather(task_a, task_b, task_b2, return_exceptions=True)
        return stopped

    stopped = asyncio.run(scenario())
    assert [(n, p, u) for n, p, u, _ in reports] == [("a", "b", False), ("a", "b", True)]
    detection = reports[0][3] - stopped
    assert detection < 0.6, detection  # dead after 120 ms of silence (+ scheduling)


@pytest.fixture
def pce(tmp_path: Path) -> tuple[TestClient, str, str]:
    from flame.sfr.api import create_app
    from flame.sfr.service import PceService
    from flame.sfr.store import Store

    tokens = TokenStore(tmp_path / "tokens.json")
    router = tokens.issue("r", Role.ROUTER)
    operator = tokens.issue("o", Role.OPERATOR)
    service = PceService(load_topology(SANDPIT), Store(tmp_path / "pce.sqlite3", "pce-1"))
    return TestClient(create_app(service, tokens)), router, operator


def _link(client: TestClient, token: str, a: str, b: str) -> dict[str, object]:
    body = client.get("/v1/topology", headers={"Authorization": f"Bearer {token}"}).json()
    return next(k for k in body["links"] if {k["a"], k["b"]} == {a, b})


def test_pce_takes_liveness_reports_from_routers_and_keeps_the_operators_word(
    pce: tuple[TestClient, str, str],
) -> None:
    client, router, operator = pce
    as_router = {"Authorization": f"Bearer {router}"}
    as_operator = {"Authorization": f"Bearer {operator}"}
    with client:
        url = "/v1/topology/links/sw-west/sr-metro/liveness"
        down = client.post(url, json={"up": False, "reporter": "sw-west"}, headers=as_router)
        assert down.status_code == 200, down.text
        link = _link(client, operator, "sw-west", "sr-metro")
        assert (link["state"], link["detected"]) == ("down", True)
        up = client.post(url, json={"up": True, "reporter": "sr-metro"}, headers=as_router)
        assert up.status_code == 200
        assert _link(client, operator, "sw-west", "sr-metro")["state"] == "up"
        # Only an end of the link reports it; a bad body is a 4xx JSON error, not a 500.
        other = client.post(url, json={"up": False, "reporter": "sr-ue-2"}, headers=as_router)
        assert other.status_code == 400
        assert other.json()["error"]
        bad = client.post(url, json={"up": "maybe"}, headers=as_router)
        assert bad.status_code in (400, 422)
        assert client.post(url, json={"up": False, "reporter": "sw-west"}).status_code == 401
        # The operator's link-down stands: a probe that still hears hellos does not undo it.
        operator_down = client.post("/v1/topology/links/sw-west/sr-metro/down", headers=as_operator)
        assert operator_down.status_code == 200
        client.post(url, json={"up": True, "reporter": "sw-west"}, headers=as_router)
        link = _link(client, operator, "sw-west", "sr-metro")
        assert link["state"] == "down"
        assert link["detected"] is False
