"""Link liveness probes between neighbouring nodes, reported to the PCE (issue 13, item 4).

Each SR (and each switch, as the seed's SDN switches report their ports to the controller) sends a
small UDP hello on every one of its links to the node at the other end, every `interval_ms`, and
listens for the neighbour's. A link whose hellos stop for `dead_ms` is reported down to the PCE
(`POST /v1/topology/links/{a}/{b}/liveness`, a router token); one whose hellos come back `rise`
times in a row is reported up. The PCE then recomputes paths as for `flame topology link-down`,
so a failure nobody announced (a cable pulled, `ip link set ... down` behind the platform's back)
is routed around. A bidirectional-forwarding-detection in miniature: no authentication of the
hellos (a neighbour on a point-to-point link is trusted), no echo mode.

Run as `python -m flame.sfr.liveness --node ID --pce URL --link PEER=LOCAL_IP,PEER_IP ...` (the
token in FLAME_TOKEN, the platform CA in FLAME_CA_FILE); `flame up --netns` starts one per SR and
switch namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from flame.common.backoff import backoff_delay

__all__ = ["LinkProbe", "Prober", "main"]

log = logging.getLogger("flame.sfr.liveness")

PORT = 4799
MAGIC = b"flame-hello "


@dataclass(slots=True)
class LinkProbe:
    peer: str  # the neighbour's node id
    local_ip: str
    peer_ip: str
    up: bool | None = None  # None: not seen yet (never reported before it is first seen)
    last_seen: float = 0.0
    streak: int = 0  # hellos in a row without a gap of `dead` (for `rise`)
    wanted: bool | None = None  # the state to report
    reported: bool | None = None  # the state the PCE last took from this prober
    sock: socket.socket | None = field(default=None, repr=False)


class Prober:
    def __init__(
        self,
        node: str,
        links: list[LinkProbe],
        report: Callable[[str, str, bool], Awaitable[None]],
        *,
        interval_ms: float = 20.0,
        dead_ms: float = 120.0,
        rise: int = 3,
    ) -> None:
        self.node = node
        self.links = links
        self.report = report
        self.interval = interval_ms / 1000
        self.dead = dead_ms / 1000
        self.rise = rise
        self._by_ip = {link.peer_ip: link for link in links}
        self._reporting: dict[str, asyncio.Task[None]] = {}

    def _open(self, link: LinkProbe) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setblocking(False)
        s.bind((link.local_ip, PORT))
        link.sock = s
        asyncio.get_running_loop().add_reader(s.fileno(), self._receive, link)

    def _receive(self, link: LinkProbe) -> None:
        assert link.sock is not None
        while True:
            try:
                data, (ip, _) = link.sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            probe = self._by_ip.get(ip)
            if probe is None or not data.startswith(MAGIC):
                continue
            now = time.monotonic()
            probe.streak = probe.streak + 1 if now - probe.last_seen <= self.dead else 1
            probe.last_seen = now

    def _tick(self) -> None:
        now = time.monotonic()
        hello = MAGIC + self.node.encode()
        for link in self.links:
            if link.sock is not None:
                with contextlib.suppress(OSError):  # the link is down: nothing to send on
                    link.sock.sendto(hello, (link.peer_ip, PORT))
            silent = now - link.last_seen
            if link.up is not False and link.last_seen and silent > self.dead:
                link.up, link.streak = False, 0
                log.warning(
                    "link %s-%s down: no hello for %.0f ms", self.node, link.peer, silent * 1000
                )
                self._send(link, up=False)
            elif link.up is not True and link.streak >= self.rise:
                was_seen = link.up is False
                link.up = True
                if was_seen:
                    log.warning("link %s-%s up again", self.node, link.peer)
                    self._send(link, up=True)

    def _send(self, link: LinkProbe, *, up: bool) -> None:
        """Report the link's state, one report at a time per link, the latest state last (a
        flap while a report is on its way must not leave the PCE with the older one)."""
        link.wanted = up
        if link.peer in self._reporting:
            return
        task = asyncio.create_task(self._report_latest(link))
        self._reporting[link.peer] = task
        task.add_done_callback(self._reported)

    async def _report_latest(self, link: LinkProbe) -> None:
        try:
            while link.reported is not link.wanted:
                state = link.wanted
                assert state is not None
                await self.report(self.node, link.peer, state)
                link.reported = state
        finally:
            self._reporting.pop(link.peer, None)

    def _reported(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("reporting a link state failed: %s", task.exception())

    async def run(self) -> None:
        for link in self.links:
            self._open(link)
        print(f"liveness: probing {len(self.links)} link(s) of {self.node}", flush=True)
        try:
            while True:
                self._tick()
                await asyncio.sleep(self.interval)
        finally:
            for link in self.links:
                if link.sock is not None:
                    asyncio.get_running_loop().remove_reader(link.sock.fileno())
                    link.sock.close()


class ReportFn:
    """Reports a link's state to the PCE, retrying until it answers (a PCE restarting)."""

    def __init__(self, client: httpx.AsyncClient, pce_url: str) -> None:
        self.client = client
        self.pce = pce_url.rstrip("/")

    async def __call__(self, node: str, peer: str, up: bool) -> None:
        for attempt in range(20):
            try:
                response = await self.client.post(
                    f"{self.pce}/v1/topology/links/{node}/{peer}/liveness",
                    json={"up": up, "reporter": node},
                    timeout=2.0,
                )
            except httpx.HTTPError as exc:
                log.warning("PCE unreachable reporting %s-%s: %s", node, peer, exc)
            else:
                if response.is_success:
                    log.info("reported %s-%s %s", node, peer, "up" if up else "down")
                    return
                if response.status_code < 500:
                    raise RuntimeError(f"the PCE refused the report: {response.text[:200]}")
            await asyncio.sleep(backoff_delay(attempt + 1, 0.05, 2.0))
        raise RuntimeError(f"the PCE did not take the report {node}-{peer} up={up}")


def _parse_link(text: str) -> LinkProbe:
    peer, _, ips = text.partition("=")
    local_ip, _, peer_ip = ips.partition(",")
    if not (peer and local_ip and peer_ip):
        raise argparse.ArgumentTypeError(f"--link wants PEER=LOCAL_IP,PEER_IP, got {text!r}")
    return LinkProbe(peer, local_ip, peer_ip)


def _prioritise() -> None:
    """Real-time scheduling where allowed (root): a prober starved of CPU by a busy machine
    would miss its neighbour's hellos and report a live link dead. It uses almost no CPU."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(-10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flame.sfr.liveness")
    parser.add_argument("--node", required=True)
    parser.add_argument("--pce", required=True)
    parser.add_argument("--link", action="append", type=_parse_link, default=[])
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--dead-ms", type=float, default=120.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FLAME_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _prioritise()
    token, ca_file = os.environ.get("FLAME_TOKEN"), os.environ.get("FLAME_CA_FILE")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True

    async def go() -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(headers=headers, verify=verify, trust_env=False) as client:
            prober = Prober(
                args.node,
                args.link,
                ReportFn(client, args.pce),
                interval_ms=args.interval_ms,
                dead_ms=args.dead_ms,
            )
            await prober.run()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
