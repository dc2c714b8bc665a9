"""`flame up --netns` pieces that need no root (issue 13 item 4; SFR-13): the address plan, the
kernel routes derived from the PCE's paths, the link liveness state machine over real UDP
sockets, the PCE's liveness API, and a clear refusal without root."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.common.auth import Role, TokenStore
from flame.sandbox.netns import NetnsPlan, NsLink, NsNode, available, plan_network
from flame.sandbox.netns_routes import _paths_in, desired_routes, planned_routes, route_lines
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


def _follow(
    net: NetnsPlan,
    primary: dict[str, dict[str, tuple[str, str]]],
    first: dict[str, dict[str, tuple[str, str]]],
    at: str,
    to: str,
) -> list[str]:
    """The nodes a packet for `to` crosses from `at`: `first`'s route at `at`, then primaries."""
    walk, table = [at], first
    while walk[-1] != to and len(walk) <= len(net.nodes):
        if net.nodes[to].address not in table[net.nodes[walk[-1]].ns]:
            break
        walk.append(_next(net, table, walk[-1], to))
        table = primary
    return walk


def test_backup_routes_are_loop_free_alternates_around_each_primary_link(
    net: NetnsPlan,
) -> None:
    """Issue 13: the kernel fails over at once to a precomputed backup when a link goes down;
    a backup never leads back to the node that falls back to it (no micro-loop)."""
    pce_path = ("sr-ue-1", "sw-west", "sr-metro")
    for down in [None, *(frozenset((k.a, k.b)) for k in net.links if not k.access)]:
        up = {} if down is None else {down: False}
        primary, backup = planned_routes(net, up, [pce_path])
        for at in ("sr-ue-1", "sr-ue-2", "sr-metro", "sr-platform", "sw-west", "sw-east"):
            for to in ("sr-ue-1", "sr-ue-2", "sr-metro", "sr-platform", "metro-london"):
                if at == to or net.nodes[to].address not in backup[net.nodes[at].ns]:
                    continue
                walk = _follow(net, primary, backup, at, to)
                assert walk[-1] == to, (down, walk)
                assert len(set(walk)) == len(walk), (down, walk)
                # Different from the primary's first hop: it survives the primary link.
                assert walk[1] != _next(net, primary, at, to)
    primary, backup = planned_routes(net, {}, [pce_path])
    assert _next(net, backup, "sw-west", "sr-metro") == "sw-east"
    assert _next(net, backup, "sr-metro", "sr-ue-1") == "sw-east"
    assert _next(net, backup, "sw-east", "sr-metro") == "sw-west"
    # A node with a single link has no alternate; one that would loop back is refused:
    # sr-ue-1 forwards to sr-metro through sw-west, so it cannot be sw-west's backup.
    assert backup[net.nodes["sr-ue-1"].ns] == {}
    assert net.nodes["sr-ue-1"].address not in {
        via for via, _ in backup[net.nodes["sw-west"].ns].values()
    }


@st.composite
def _networks(
    draw: st.DrawFn,
) -> tuple[NetnsPlan, dict[frozenset[str], bool], list[tuple[str, ...]]]:
    """A connected random network of SRs and switches, maybe a link down, some PCE paths."""
    n = draw(st.integers(3, 7))
    names = [f"r{i}" for i in range(n)]
    edges = {frozenset((names[i], names[draw(st.integers(0, i - 1))])) for i in range(1, n)}
    extra = draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)), max_size=8))
    edges |= {frozenset(e) for e in extra if e[0] != e[1]}
    nodes = {
        name: NsNode(name, "service_router" if i % 2 else "switch", f"t-n{i}", f"10.199.1.{i}",
                     f"10.200.0.{i + 1}")
        for i, name in enumerate(names)
    }  # fmt: skip
    links = tuple(
        NsLink(a, b, f"l{k}", f"l{k}", f"10.201.{k}.1", f"10.201.{k}.2",
               latency_ms=draw(st.sampled_from([1.0, 2.0, 5.0, 10.0])))
        for k, (a, b) in enumerate(sorted(tuple(sorted(e)) for e in edges))
    )  # fmt: skip
    plan = NetnsPlan("t", "t-ctl", nodes, links)
    up = {frozenset((k.a, k.b)): draw(st.booleans()) or k.a == "r0" for k in links}
    paths = [tuple(draw(st.permutations(names))[: draw(st.integers(2, n))]) for _ in range(3)]
    return plan, up, paths


@settings(max_examples=150, deadline=None)
@given(_networks())
def test_a_backup_route_never_loops_back_whatever_the_network(
    network: tuple[NetnsPlan, dict[frozenset[str], bool], list[tuple[str, ...]]],
) -> None:
    """Property (issue 13): from any node, the backup next hop's primary path reaches the
    destination without coming back through the node, over links that are up."""
    plan, up, paths = network
    primary, backup = planned_routes(plan, up, paths)
    for at in plan.nodes:
        for to in plan.nodes:
            if at == to or plan.nodes[to].address not in backup[plan.nodes[at].ns]:
                continue
            walk = _follow(plan, primary, backup, at, to)
            assert walk[-1] == to, walk
            assert len(set(walk)) == len(walk), walk
            assert walk[1] != _next(plan, primary, at, to)
            assert all(up.get(frozenset(pair), True) for pair in itertools.pairwise(walk))


def test_route_lines_program_primaries_and_backups_with_a_short_rto() -> None:
    wanted = {
        ("10.200.0.1", 0): ("10.201.3.2", "l3"),
        ("10.200.0.1", 100): ("10.201.2.2", "l2"),
        ("10.200.0.2", 0): ("10.201.3.2", "l3"),
    }
    have = {
        ("10.200.0.2", 0): ("10.201.3.2", "l3"),  # unchanged: not touched
        ("10.200.0.9", 100): ("10.201.2.2", "l2"),  # no longer wanted
    }
    lines = route_lines(wanted, have, "10.200.0.6")
    assert lines == [
        "route replace 10.200.0.1/32 via 10.201.3.2 dev l3 onlink src 10.200.0.6"
        " rto_min 20ms quickack 1",
        "route replace 10.200.0.1/32 via 10.201.2.2 dev l2 onlink src 10.200.0.6 metric 100"
        " rto_min 20ms quickack 1",
        "route del 10.200.0.9/32 metric 100",
    ]
    assert route_lines(wanted, dict(wanted), "10.200.0.6") == []


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


def _own_loopback_pair() -> tuple[str, str]:
    """Two addresses of 127/8 (all loopback on Linux) made of this process's pid (< 2**22):
    distinct per pid, so parallel test workers each probe on their own pair."""
    pid = os.getpid()
    host = f"{(pid >> 8) & 0xFF}.{pid & 0xFF}"
    return f"127.{64 + (pid >> 16)}.{host}", f"127.{128 + (pid >> 16)}.{host}"


def test_liveness_reports_a_silent_neighbour_down_then_up_again() -> None:
    """Two probers on loopback addresses (SFR-13): stop one, the other reports the link down
    after the dead interval of silence; start it again, up after `rise` hellos. Real UDP
    sockets. The dead interval is 1 s here, not the 120 ms `flame up --netns` uses (with
    real-time priority there): a test process stalled for half a second on a loaded machine
    must not read as a dead link. The prober's UDP port is fixed (liveness.PORT), so the two
    loopback addresses are this process's own: concurrent test processes never share them."""
    dead_ms = 1000.0
    a_ip, b_ip = _own_loopback_pair()
    reports: list[tuple[str, str, bool, float]] = []

    async def report(node: str, peer: str, up: bool) -> None:
        reports.append((node, peer, up, time.monotonic()))

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def scenario() -> float:
        a = Prober("a", [LinkProbe("b", a_ip, b_ip)], report, dead_ms=dead_ms)
        b_links = [LinkProbe("a", b_ip, a_ip)]
        b = Prober("b", b_links, report, dead_ms=dead_ms)
        task_a = asyncio.create_task(a.run())
        task_b = asyncio.create_task(b.run())
        await until(lambda: a.links[0].up is True, "a never saw b")
        assert reports == []  # seen, but never reported: it was never down
        task_b.cancel()
        stopped = time.monotonic()
        await until(lambda: bool(reports), "the silent link was never reported down")
        b2 = Prober("b", [LinkProbe("a", b_ip, a_ip)], report, dead_ms=dead_ms)
        task_b2 = asyncio.create_task(b2.run())
        await until(lambda: len(reports) >= 2, "the link was never reported up again")
        for task in (task_a, task_b2):
            task.cancel()
        await asyncio.gather(task_a, task_b, task_b2, return_exceptions=True)
        return stopped

    stopped = asyncio.run(scenario())
    assert [(n, p, u) for n, p, u, _ in reports] == [("a", "b", False), ("a", "b", True)]
    detection = reports[0][3] - stopped
    # Silence is counted from b's last hello, which a stalled loop may have sent well before
    # the cancel: the lower bound only says "not at once"; the upper one has 5x headroom.
    assert 0.3 * dead_ms / 1000 <= detection < 5 * dead_ms / 1000, detection


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
