"""Kernel routes along the PCE's paths for `flame up --netns` (issue 13, item 4).

The seed's SDN controller made the switches forward along the paths the PCE computed; here the
kernel of each SR and switch namespace does: for every destination SR (its data address and those
of its cluster hosts and UEs) a `/32` route to the next hop of the path.

* Base: a shortest-latency path over the links the PCE reports up (`GET /v1/topology`), so every
  SR reaches every other one even before any FQDN is routed.
* Overlay: the paths of the routes in the SRs' forwarding tables (`GET /v1/tables/{sr}`, long
  polled), both ways, so traffic between an ingress and an egress SR follows exactly the PCE's
  path. A path crossing a link that is now down is skipped (a table on its way).
* Link state: a link the PCE turns down while its veths are up was taken down by the operator
  (`flame topology link-down`): both ends are set down (`ip link set ... down`), and up again when
  the PCE turns it up. A link that went down by itself (its veths already down) is left alone:
  the SR liveness probes reported it, and they report it back up.

Routes are changed with one `ip -batch` per namespace whose routes changed (`route replace` /
`route del`), so a reroute costs a few processes, not one per route: a netlink library would save
little here. Run as `python -m flame.sandbox.netns_routes --plan netns.json --pce URL` (token in
FLAME_TOKEN, the platform CA in FLAME_CA_FILE), in the control namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from flame.sandbox.netns import ROUTE_TCP_OPTIONS, NetnsPlan, NsLink, _run, set_link

__all__ = ["Programmer", "desired_routes", "planned_routes", "route_lines"]

log = logging.getLogger("flame.sandbox.netns_routes")

Route = tuple[str, str]  # (via, dev)
ROUTERS = ("service_router", "switch")
BACKUP_METRIC = 100  # a loop-free alternate's route: used while the primary's device is down


def _hops(plan: NetnsPlan, up: Mapping[frozenset[str], bool]) -> dict[str, dict[str, NsLink]]:
    """node -> neighbour -> the up link to it (topology links only)."""
    hops: dict[str, dict[str, NsLink]] = {}
    for link in plan.links:
        if link.access or not up.get(frozenset((link.a, link.b)), True):
            continue
        hops.setdefault(link.a, {}).setdefault(link.b, link)
        hops.setdefault(link.b, {}).setdefault(link.a, link)
    return hops


def _next_hop(link: NsLink, at: str) -> Route:
    return (link.b_ip, link.a_if) if at == link.a else (link.a_ip, link.b_if)


def _shortest_towards(hops: dict[str, dict[str, NsLink]], target: str) -> dict[str, str]:
    """node -> its next node on a shortest-latency path to `target` (links are symmetric)."""
    dist = {target: 0.0}
    nxt: dict[str, str] = {}
    heap = [(0.0, target)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist.get(u, float("inf")):
            continue
        for v, link in sorted(hops.get(u, {}).items()):
            nd = d + max(link.latency_ms, 0.0) + 1e-6  # fewer hops among equal latencies
            if nd < dist.get(v, float("inf")):
                dist[v], nxt[v] = nd, u
                heapq.heappush(heap, (nd, v))
    return nxt


def _destinations(plan: NetnsPlan) -> dict[str, list[str]]:
    """SR or switch -> the data addresses behind it (its own, its cluster hosts', its UEs')."""
    dests: dict[str, list[str]] = {}
    for node in plan.nodes.values():
        owner = node.sr if node.sr is not None else node.id
        if node.kind in ROUTERS or node.sr is not None:
            dests.setdefault(owner, []).append(node.address)
    return dests


def _next_nodes(
    hops: dict[str, dict[str, NsLink]], targets: Iterable[str], paths: Iterable[tuple[str, ...]]
) -> dict[str, dict[str, str]]:
    """node -> target -> the neighbour it forwards to: shortest paths, then the PCE's paths."""
    nxt: dict[str, dict[str, str]] = {}
    for target in targets:
        for at, via_node in _shortest_towards(hops, target).items():
            nxt.setdefault(at, {})[target] = via_node
    for path in paths:
        if len(path) < 2 or any(
            path[i + 1] not in hops.get(path[i], {}) for i in range(len(path) - 1)
        ):
            continue  # crosses a link that is down now (or an unknown node): a table on its way
        for way in (path, path[::-1]):
            for i in range(len(way) - 1):
                nxt.setdefault(way[i], {})[way[-1]] = way[i + 1]
    return nxt


def _walk_cost(
    hops: dict[str, dict[str, NsLink]],
    nxt: dict[str, dict[str, str]],
    start: str,
    target: str,
    avoid: str,
) -> float | None:
    """Latency from `start` to `target` along the primary next hops, or None if that walk
    passes through `avoid` (a loop back to the node that falls back) or goes nowhere."""
    cost, at = 0.0, start
    for _ in range(len(nxt) + 1):
        if at == target:
            return cost
        if at == avoid:
            return None
        step = nxt.get(at, {}).get(target)
        if step is None:
            return None
        cost += max(hops[at][step].latency_ms, 0.0) + 1e-6
        at = step
    return None


def _backups(
    hops: dict[str, dict[str, NsLink]], nxt: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """node -> target -> a loop-free alternate neighbour (RFC 5286's idea): a neighbour other
    than the primary one whose own primary path to the target does not come back through the
    node. The kernel uses it the moment the primary link goes down, before any controller
    hears of the failure (an SDN fast-failover group, made of route metrics)."""
    out: dict[str, dict[str, str]] = {}
    for at, targets in nxt.items():
        for target, primary in targets.items():
            best: tuple[float, str] | None = None
            for neighbour, link in sorted(hops.get(at, {}).items()):
                if neighbour == primary:
                    continue
                rest = _walk_cost(hops, nxt, neighbour, target, avoid=at)
                if rest is not None:
                    cost = max(link.latency_ms, 0.0) + rest
                    if best is None or cost < best[0]:
                        best = (cost, neighbour)
            if best is not None:
                out.setdefault(at, {})[target] = best[1]
    return out


def desired_routes(
    plan: NetnsPlan, up: Mapping[frozenset[str], bool], paths: Iterable[tuple[str, ...]]
) -> dict[str, dict[str, Route]]:
    """namespace -> destination (/32) -> (via, dev), for every SR and switch namespace."""
    return planned_routes(plan, up, paths)[0]


def planned_routes(
    plan: NetnsPlan, up: Mapping[frozenset[str], bool], paths: Iterable[tuple[str, ...]]
) -> tuple[dict[str, dict[str, Route]], dict[str, dict[str, Route]]]:
    """(primary, backup): namespace -> destination (/32) -> (via, dev), for every SR and
    switch namespace. Primary: the PCE's paths over shortest ones; backup: the loop-free
    alternate of each primary, where there is one (`_backups`)."""
    hops = _hops(plan, up)
    dests = _destinations(plan)
    nxt = _next_nodes(hops, dests, list(paths))
    primary: dict[str, dict[str, Route]] = {
        n.ns: {} for n in plan.nodes.values() if n.kind in ROUTERS
    }
    backup: dict[str, dict[str, Route]] = {ns: {} for ns in primary}
    for table, choice in ((primary, nxt), (backup, _backups(hops, nxt))):
        for at, targets in choice.items():
            ns = plan.nodes[at].ns
            for target, via_node in targets.items():
                hop = _next_hop(hops[at][via_node], at)
                for address in dests.get(target, []):
                    table[ns][address] = hop
    for link in plan.links:  # an SR's own cluster hosts and UEs, on their access links
        if link.access:
            primary[plan.nodes[link.a].ns][plan.nodes[link.b].address] = (link.b_ip, link.a_if)
    return primary, backup


def _kernel_routes(ns: str) -> dict[tuple[str, int], Route]:
    """The /32 routes via a gateway in `ns` (the ones this module programs), by (dst, metric)."""
    done = subprocess.run(
        ["ip", "-n", ns, "-j", "route", "show"], check=False, capture_output=True, timeout=30
    )
    try:
        entries = json.loads(done.stdout or b"[]")
    except ValueError:
        return {}
    return {
        (str(e["dst"]), int(e.get("metric", 0))): (str(e["gateway"]), str(e["dev"]))
        for e in entries
        if "gateway" in e and "dst" in e and str(e["dst"]).startswith("10.200.")
    }


def route_lines(
    wanted: Mapping[tuple[str, int], Route], have: Mapping[tuple[str, int], Route], source: str
) -> list[str]:
    """`ip -batch` lines turning the routes `have` into `wanted` ((dst, metric) -> route).

    `src`: what an SR connects from is its data address, which every node routes to.
    `rto_min`/`quickack`: a segment lost with a link is retransmitted after 20 ms, not the
    kernel's 200 ms floor doubling from there (the links here are sub-millisecond, or their
    netem delay raises the time-out anyway); quick ACKs keep the short time-out from firing
    on an ACK the peer merely delayed (iproute2 locks rto_min: the kernel takes it as is).
    """
    lines = [
        f"route replace {d}/32 via {via} dev {dev} onlink src {source}"
        + (f" metric {metric}" if metric else "")
        + f" {ROUTE_TCP_OPTIONS}"
        for (d, metric), (via, dev) in sorted(wanted.items())
        if have.get((d, metric)) != (via, dev)
    ]
    lines += [
        f"route del {d}/32" + (f" metric {metric}" if metric else "")
        for d, metric in sorted(have)
        if (d, metric) not in wanted
    ]
    return lines


def _paths_in(table: Any) -> list[tuple[str, ...]]:
    """Every route's `path` in a forwarding table's JSON."""
    found: list[tuple[str, ...]] = []
    stack = [table]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, list) and all(isinstance(n, str) for n in path):
                found.append(tuple(path))
            stack.extend(v for k, v in item.items() if k != "path")
        elif isinstance(item, list):
            stack.extend(item)
    return found


class Programmer:
    """Follows the PCE and keeps the namespaces' routes and link states in line with it."""

    def __init__(self, plan: NetnsPlan, pce_url: str, client: httpx.AsyncClient) -> None:
        self.plan = plan
        self.pce = pce_url.rstrip("/")
        self.client = client
        self.paths: dict[str, list[tuple[str, ...]]] = {}
        self.up: dict[frozenset[str], bool] = {}
        self.downed_by_us: set[frozenset[str]] = set()
        self.wake = asyncio.Event()
        self.programmed = 0

    async def follow_table(self, sr: str) -> None:
        version = 0
        while True:
            try:
                response = await self.client.get(
                    f"{self.pce}/v1/tables/{sr}", params={"since": version, "wait": 20}, timeout=30
                )
                if response.status_code == 200:
                    version = int(response.headers.get("X-Flame-Table-Version", version + 1))
                    self.paths[sr] = _paths_in(response.json())
                    self.wake.set()
                elif response.status_code != 304:
                    await asyncio.sleep(0.5)
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("table of %s: %s", sr, exc)
                await asyncio.sleep(0.5)

    async def reset_links(self) -> None:
        """Links left down in the PCE by a previous run (its probers saw their neighbours stop
        on the way down): the veths are new and up, so the PCE is told so. An operator's
        link-down does not outlive `flame up --netns` (docs/netns.md)."""
        while True:
            try:
                response = await self.client.get(f"{self.pce}/v1/topology", timeout=5)
                response.raise_for_status()
                for k in response.json().get("links", []):
                    link = self.plan.link(k["a"], k["b"])
                    if k.get("state") != "up" and link is not None and link.initially_up:
                        done = await self.client.post(
                            f"{self.pce}/v1/topology/links/{k['a']}/{k['b']}/up", timeout=5
                        )
                        done.raise_for_status()
                        log.info(
                            "link %s-%s: up again (left down by a previous run)", k["a"], k["b"]
                        )
                return
            except (httpx.HTTPError, ValueError) as exc:
                log.info("waiting for the PCE: %s", exc)
                await asyncio.sleep(0.2)

    async def follow_topology(self, interval_s: float = 0.1) -> None:
        await self.reset_links()
        while True:
            try:
                response = await self.client.get(f"{self.pce}/v1/topology", timeout=5)
                if response.status_code == 200:
                    links = response.json().get("links", [])
                    up = {frozenset((k["a"], k["b"])): k.get("state") == "up" for k in links}
                    admin_down = {
                        frozenset((k["a"], k["b"]))
                        for k in links
                        if k.get("state") != "up" and not k.get("detected")
                    }
                    await asyncio.to_thread(self._sync_links, admin_down)
                    if up != self.up:
                        self.up = up
                        self.wake.set()
            except (httpx.HTTPError, ValueError) as exc:
                log.debug("topology: %s", exc)
            await asyncio.sleep(interval_s)

    def _sync_links(self, admin_down: set[frozenset[str]]) -> None:
        """The operator's link-down/up on the PCE, made real on the veths (module docstring)."""
        for pair in admin_down - self.downed_by_us:
            link = self.plan.link(*sorted(pair))
            if link is not None:
                set_link(self.plan, link, up=False)
                self.downed_by_us.add(pair)
                log.info("link %s-%s down (the operator's): veths down", link.a, link.b)
        for pair in self.downed_by_us - admin_down:
            link = self.plan.link(*sorted(pair))
            if link is not None:
                set_link(self.plan, link, up=True)
                log.info("link %s-%s up (the operator's): veths up", link.a, link.b)
            self.downed_by_us.discard(pair)

    def apply(self) -> int:
        """Program what differs from the kernel's routes now (a device going down flushes its
        routes behind our back, so the kernel, not a cache, is the truth); routes changed."""
        paths = [p for ps in self.paths.values() for p in ps]
        primary, backup = planned_routes(self.plan, self.up, paths)
        changed = 0
        source = {n.ns: n.address for n in self.plan.nodes.values()}
        for ns, routes in primary.items():
            wanted = {(d, 0): r for d, r in routes.items()}
            wanted.update({(d, BACKUP_METRIC): r for d, r in backup.get(ns, {}).items()})
            lines = route_lines(wanted, _kernel_routes(ns), source[ns])
            if not lines:
                continue
            try:
                _run(["ip", "-n", ns, "-force", "-batch", "-"], "\n".join(lines) + "\n")
            except RuntimeError as exc:  # a device went down meanwhile: the next change fixes it
                log.info("routes in %s: %s", ns, str(exc).splitlines()[0])
            changed += len(lines)
        return changed

    async def run(self) -> None:
        tasks = [asyncio.create_task(self.follow_topology())]
        srs = [n.id for n in self.plan.nodes.values() if n.kind == "service_router"]
        tasks += [asyncio.create_task(self.follow_table(sr)) for sr in srs]
        for task in tasks:  # a follower that dies wakes the loop, which raises its error
            task.add_done_callback(lambda _: self.wake.set())
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                started = time.monotonic()
                changed = await asyncio.to_thread(self.apply)
                if changed:
                    log.info(
                        "%d route(s) programmed in %.1f ms",
                        changed,
                        (time.monotonic() - started) * 1000,
                    )
                if self.programmed == 0 and self.up:
                    print("netns routes: programmed", flush=True)
                self.programmed += 1
                for task in tasks:
                    if task.done():  # never silently: a follower that died is a bug
                        task.result()
        finally:
            for task in tasks:
                task.cancel()


def _client(token: str | None, ca_file: str | None) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = True
    if ca_file:
        verify = ssl.create_default_context(cafile=ca_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(headers=headers, verify=verify, trust_env=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flame.sandbox.netns_routes")
    parser.add_argument("--plan", required=True, type=Path, help="netns.json of flame up --netns")
    parser.add_argument("--pce", required=True, help="the PCE's URL")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FLAME_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    plan = NetnsPlan.from_json(args.plan.read_text(encoding="utf-8"))

    async def go() -> None:
        async with _client(os.environ.get("FLAME_TOKEN"), os.environ.get("FLAME_CA_FILE")) as c:
            await Programmer(plan, args.pce, c).run()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
