"""`flame up --netns` end to end (issue 13 item 4; SFR-13, CLMC-19..22, SFEMC-3/4): the sandpit
topology as network namespaces (each SR, switch, cluster host and UE its own, links as veth
pairs), the control plane in its own namespace, SFEs on their cluster hosts' addresses.

* the demo's closed loop: a UE in its namespace streams through sr-ue-1 across the links; the
  alert connects the edge cache; no request fails;
* a link on the active path downed with `ip link` (not through the platform) under 500 req/s:
  the kernel fails over to the backup route the route programmer keeps, the liveness probes
  detect the failure, the PCE routes around it, the primary kernel routes follow; failover,
  detection and reroute times and failed requests are printed and asserted.

One instance serves both tests (start-up is the expensive part). Root and iproute2 only.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flame.sandbox.netns import NetnsPlan, available, existing, tag_for
from flame.sandbox.netns_probe import link_failure, ue_run

from .test_up import flame

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]

EDGE = "vod-demo.cache.edge-bristol"
PATHS = ["/hls/master.m3u8", "/hls/360p/index.m3u8", "/hls/360p/seg_000.ts"]


@pytest.fixture(scope="module")
def instance(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("netns")
    config = tmp / "config.toml"
    config.touch()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLAME_")},
        "FLAME_CONFIG": str(config),
        "FLAME_STATE_DIR": str(tmp / "state"),
        "HOME": str(tmp / "home"),
    }
    run_dir = tmp / "state" / "up"
    try:
        started = time.monotonic()
        up = flame(env, "--json", "up", "-d", "--netns", "--free-ports", "--topology", "sandpit")
        assert up.returncode == 0, up.stdout + up.stderr
        summary = json.loads(up.stdout)
        print(
            f"flame up --netns (sandpit, demo deployed): ready in {time.monotonic() - started:.1f}s"
        )
        env["FLAME_CA_FILE"] = summary["netns"]["ca_file"]
        env["FLAME_TOKEN"] = summary["tokens"]["flame-up-operator"]
        yield summary, env
    finally:
        # A crash of the supervisor (kill -9: no clean-up of its own), then `flame down`: the
        # components, the SFEs in the namespaces and the namespaces themselves all go.
        instance = (
            json.loads((run_dir / "up.json").read_text()) if (run_dir / "up.json").exists() else {}
        )
        if instance.get("pid"):
            os.kill(int(instance["pid"]), signal.SIGKILL)
        down = flame(env, "down")
        assert down.returncode == 0, down.stderr
        assert existing(tag_for(run_dir)) == [], "namespaces left behind"


def _get(url: str, env: dict[str, str], **params: str) -> Any:
    response = httpx.get(
        url,
        params=params,
        headers={"Authorization": f"Bearer {env['FLAME_TOKEN']}"},
        verify=ssl.create_default_context(cafile=env["FLAME_CA_FILE"]),
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_netns_layout_one_namespace_per_node(
    instance: tuple[dict[str, Any], dict[str, str]],
) -> None:
    summary, _ = instance
    netns = summary["netns"]
    assert set(netns["namespaces"]) == {
        "sr-ue-1", "sr-ue-2", "sr-metro", "sr-platform", "sw-west", "sw-east",
        "edge-bristol", "edge-bath", "metro-london", "ue-bristol", "ue-bath",
    }  # fmt: skip
    assert len(set(netns["namespaces"].values())) == 11
    # SRs listen on their namespaces' data addresses, not on loopback.
    for sr, url in summary["sr_urls"].items():
        assert url == f"http://{netns['addresses'][sr]}:8080"
    # SFEs registered with their cluster host's address (issue 13 item 1).
    routes = _get(summary["pce_url"] + "/v1/registrations", instance[1])
    hosts = {r["sfe"]: r["host"] for r in routes.get("registrations", routes)}
    assert hosts["vod-demo.origin.metro-london"] == netns["addresses"]["metro-london"]


def test_netns_closed_loop_connects_the_edge_cache_and_no_request_fails(
    instance: tuple[dict[str, Any], dict[str, str]],
) -> None:
    summary, env = instance
    assert summary["demo"]["endpoints"][EDGE] == "booted"
    clmc_inside = summary["netns"]["inside"]["clmc"]
    report = ue_run(
        summary, env, "ue-bristol", "sr-ue-1", "vod.flame.example", PATHS, 20, 15,
        "--clmc", clmc_inside,
    )  # fmt: skip
    assert report["requests"] == 300, report
    assert report["failed"] == 0, report
    events = _get(summary["clmc_url"] + "/v1/alerts/events", env)
    slow = [e for e in events if e["alert"] == "vod_slow_at_bristol"]
    assert slow, events
    assert slow[0]["level"] == "critical", slow
    status = _get(summary["orchestrator_url"] + "/v1/services/vod", env)
    edge = next(e for e in status["endpoints"] if e["sfe"] == EDGE)
    assert edge["state"] == "connected", edge
    print(
        f"netns closed loop: {report['requests']} requests, {report['failed']} failed, "
        f"p50 {report['latency_ms']['p50']} ms; edge cache connected after the alert"
    )


def _backup_route_dev(ns: str, address: str) -> str | None:
    """The device of the backup (metric 100) route to `address` in `ns`, if any."""
    done = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show", f"{address}/32"],
        capture_output=True,
        text=True,
        check=True,
    )
    return next((str(r["dev"]) for r in json.loads(done.stdout) if r.get("metric") == 100), None)


def test_netns_link_down_behind_the_platforms_back_is_routed_around(
    instance: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """Issue 13: a link on the active path downed with `ip link` under 500 req/s: the kernel
    fails over to the backup route at once, the probes detect it, the PCE routes around it,
    the platform moves the primary routes; fewer than 0.5 % of the requests fail."""
    summary, env = instance
    run_dir = str(Path(env["FLAME_STATE_DIR"]) / "up")
    plan = NetnsPlan.from_json((Path(run_dir) / "netns.json").read_text())
    west_east = plan.link("sw-west", "sw-east")
    assert west_east is not None
    # Before the failure: sw-west keeps a loop-free backup towards sr-metro, over sw-east, and
    # sr-metro (whose veth only loses its carrier) skips routes over a link without carrier.
    backup = _backup_route_dev(plan.nodes["sw-west"].ns, plan.nodes["sr-metro"].address)
    assert backup == (west_east.a_if if west_east.a == "sw-west" else west_east.b_if)
    core = plan.link("sw-west", "sr-metro")
    assert core is not None
    far_dev = core.a_if if core.a == "sr-metro" else core.b_if
    skip = subprocess.run(
        ["ip", "netns", "exec", plan.nodes["sr-metro"].ns, "sysctl", "-n",
         f"net.ipv4.conf.{far_dev}.ignore_routes_with_linkdown"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert skip.stdout.strip() == "1"
    # origin.vod.flame.example lives only at metro-london (behind sr-metro): from sr-ue-1 its
    # path is sr-ue-1, sw-west, sr-metro; the link sw-west - sr-metro dies under load.
    result = link_failure(
        summary, run_dir, env,
        a="sw-west", b="sr-metro", ue="ue-bristol", sr="sr-ue-1", target="sr-metro",
        fqdn="origin.vod.flame.example", path="/hls/master.m3u8",
        rps=500, secs=4, down_after_s=2,
    )  # fmt: skip
    ue = result.ue
    failed_pct = 100 * ue["failed"] / max(ue["requests"], 1)
    print(
        f"netns link failure at {ue['rps_achieved']} req/s: failover {result.failover_ms} ms, "
        f"detection {result.detection_ms} ms, PCE {result.confirmed_ms} ms, reroute "
        f"{result.reroute_ms} ms; {ue['failed']} of {ue['requests']} requests failed "
        f"({failed_pct:.2f} %), p99 {ue['latency_ms']['p99']} ms, max {ue['latency_ms']['max']}"
        f" ms; failures {ue['failures'][:5]}"
    )
    assert ue["requests"] == 2000  # every request is counted: the generator skips none
    assert failed_pct < 0.5, ue
    assert result.failover_ms is not None, result
    assert result.detection_ms is not None, result
    assert result.confirmed_ms is not None, result
    assert result.reroute_ms is not None, result
    # Targets: detection < 300 ms (measured 110-160 ms at a load average of 12-22); bounds
    # with >= 3x headroom here, on a shared and loaded 2-core machine.
    assert result.detection_ms < 1000
    assert result.reroute_ms < 5000
    # The PCE's path from sr-ue-1 now avoids the link, and the link came back up afterwards.
    tables = _get(
        summary["pce_url"] + "/v1/routes/origin.vod.flame.example", env, **{"from": "sr-ue-1"}
    )
    assert tables["tables"], tables


def _link_state(ns: str, dev: str) -> str:
    done = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True, text=True, check=True
    )
    return str(json.loads(done.stdout)[0]["operstate"])


def _wait_state(ns: str, dev: str, want: str) -> float:
    started = time.monotonic()
    while _link_state(ns, dev) != want:
        assert time.monotonic() - started < 5, f"{ns} {dev} not {want}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_flame_topology_link_down_really_takes_the_veths_down(
    instance: tuple[dict[str, Any], dict[str, str]],
) -> None:
    """SFR-13 made real: the operator's link-down reaches the kernel; link-up undoes it."""
    summary, env = instance
    plan = NetnsPlan.from_json((Path(env["FLAME_STATE_DIR"]) / "up" / "netns.json").read_text())
    link = plan.link("sw-east", "sr-metro")
    assert link is not None
    a_ns, b_ns = plan.nodes[link.a].ns, plan.nodes[link.b].ns
    assert _link_state(a_ns, link.a_if) == "UP"
    down = flame(env, "topology", "link-down", "sw-east", "sr-metro", "--pce", summary["pce_url"])
    assert down.returncode == 0, down.stderr
    took = _wait_state(a_ns, link.a_if, "DOWN")
    assert _link_state(b_ns, link.b_if) == "DOWN"
    up = flame(env, "topology", "link-up", "sw-east", "sr-metro", "--pce", summary["pce_url"])
    assert up.returncode == 0, up.stderr
    _wait_state(a_ns, link.a_if, "UP")
    _wait_state(b_ns, link.b_if, "UP")
    print(f"flame topology link-down: veths down {took * 1000:.0f} ms after the command returned")
