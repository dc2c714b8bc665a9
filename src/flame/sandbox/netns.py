"""`flame up --netns`: the topology as network namespaces joined by veth pairs (issue 13, item 4).

Layout (all of it inside namespaces this module creates; the host's own interfaces and routes are
never touched):

* a control namespace (`<tag>-ctl`) with a bridge `br0` at 10.199.0.1/16: the management network.
  Every other namespace has an `m0` port on it (10.199.1.N/16). The control plane listens there;
  management traffic never crosses the topology's links (an out-of-band network, as operators
  run one).
* one namespace per service router, switch, cluster host and UE (`<tag>-n<N>`), each with a data
  address 10.200.0.N/32 on its loopback;
* one veth pair per topology link (`l<K>` at both ends, 10.201.K.1/30 and .2/30) whose egress
  qdisc is netem: the link's latency (one way, each direction), its bandwidth as netem's rate and
  its loss; one veth pair (no delay) from each cluster host and UE to its SR (`a<J>`,
  10.202.J.1/30 and .2/30): the cluster's own network;
* routes to the data addresses: `flame.sandbox.netns_routes` programs them along the PCE's paths.

Namespace names carry a tag derived from the run directory, so stale ones of a crashed run of
the same instance are found and removed, and two instances never meet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flame.common.errors import UserError
from flame.topology.model import LinkState, NodeKind, Topology

__all__ = [
    "CONTROL_IP",
    "NetnsPlan",
    "available",
    "build",
    "plan_network",
    "teardown",
]

CONTROL_IP = "10.199.0.1"
MAX_NODES = 250
MAX_LINKS = 250
# netem's rate above this costs more CPU than it models on one box: the link is left unshaped.
MAX_SHAPED_BPS = 10e9
# TCP over the data network: a lost segment is retransmitted after 20 ms rather than the
# kernel's 200 ms floor, and ACKs are not delayed (so that short time-out never fires on a
# delayed ACK); `netns_routes` puts the same on the routes it programs.
ROUTE_TCP_OPTIONS = "rto_min 20ms quickack 1"


def available() -> str | None:
    """Why `flame up --netns` cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "flame up --netns needs root (it creates network namespaces and veth pairs)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"flame up --netns needs iproute2's '{tool}' (apt-get install iproute2)"
    return None


@dataclass(frozen=True, slots=True)
class NsNode:
    id: str
    kind: str  # a NodeKind value
    ns: str
    mgmt_ip: str
    address: str  # data address (/32 on lo)
    sr: str | None = None  # clusters and UEs: the SR they hang off


@dataclass(frozen=True, slots=True)
class NsLink:
    a: str
    b: str
    a_if: str
    b_if: str
    a_ip: str
    b_ip: str
    latency_ms: float = 0.0
    bandwidth_bps: float | None = None
    loss_pct: float = 0.0
    access: bool = False  # a cluster host's or UE's link to its SR (not a topology link)
    initially_up: bool = True  # the topology file's `state` (a down link starts with veths down)


@dataclass(frozen=True, slots=True)
class NetnsPlan:
    tag: str
    control_ns: str
    nodes: dict[str, NsNode] = field(default_factory=dict)
    links: tuple[NsLink, ...] = ()

    @property
    def namespaces(self) -> list[str]:
        return [self.control_ns, *(n.ns for n in self.nodes.values())]

    def link(self, a: str, b: str) -> NsLink | None:
        for link in self.links:
            if {link.a, link.b} == {a, b} and not link.access:
                return link
        return None

    def to_json(self) -> str:
        return json.dumps(
            {
                "tag": self.tag,
                "control_ns": self.control_ns,
                "nodes": [asdict(n) for n in self.nodes.values()],
                "links": [asdict(k) for k in self.links],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> NetnsPlan:
        data = json.loads(text)
        nodes = {n["id"]: NsNode(**n) for n in data["nodes"]}
        links = tuple(NsLink(**k) for k in data["links"])
        return cls(data["tag"], data["control_ns"], nodes, links)


def tag_for(run_dir: Path) -> str:
    """A short tag for `run_dir` (namespace names are limited, interface names to 15 bytes)."""
    return "fu" + hashlib.blake2b(str(run_dir.resolve()).encode(), digest_size=3).hexdigest()


def plan_network(topology: Topology, run_dir: Path) -> NetnsPlan:
    """Namespaces, addresses and links for `topology` (nothing is created yet)."""
    tag = tag_for(run_dir)
    kinds = (NodeKind.SERVICE_ROUTER, NodeKind.SWITCH, NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT)
    ordered = [n for kind in kinds for n in sorted(topology.of_kind(kind).values(), key=_id)]
    if len(ordered) > MAX_NODES:
        raise UserError(f"flame up --netns handles up to {MAX_NODES} nodes, not {len(ordered)}")
    nodes: dict[str, NsNode] = {}
    for i, node in enumerate(ordered, start=1):
        attached = node.sr if node.kind in (NodeKind.CLUSTER, NodeKind.USER_EQUIPMENT) else None
        nodes[node.id] = NsNode(
            node.id, node.kind.value, f"{tag}-n{i}", f"10.199.1.{i}", f"10.200.0.{i}", attached
        )
    links: list[NsLink] = []
    for k, link in enumerate(topology.links):
        if link.a not in nodes or link.b not in nodes:
            continue  # a link to a node kind without a namespace (none today)
        links.append(
            NsLink(
                link.a,
                link.b,
                f"l{k}",
                f"l{k}",
                f"10.201.{k}.1",
                f"10.201.{k}.2",
                latency_ms=link.latency_ms,
                bandwidth_bps=link.bandwidth_bps,
                loss_pct=link.loss_pct,
                initially_up=link.state is LinkState.UP,
            )
        )
    leaves = [n for n in nodes.values() if n.sr is not None and n.sr in nodes]
    for j, leaf in enumerate(leaves):
        links.append(
            NsLink(
                leaf.sr or "", leaf.id, f"a{j}", "a0", f"10.202.{j}.1", f"10.202.{j}.2", access=True
            )
        )
    if len(links) > MAX_LINKS:
        raise UserError(f"flame up --netns handles up to {MAX_LINKS} links, not {len(links)}")
    return NetnsPlan(tag, f"{tag}-ctl", nodes, tuple(links))


def _id(node: object) -> str:
    return str(getattr(node, "id", ""))


# -- creating and removing ---------------------------------------------------------------------


def _run(argv: Sequence[str], batch: str | None = None) -> None:
    done = subprocess.run(
        list(argv), input=batch, check=False, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def _batch(ns: str | None, lines: Iterable[str], tool: str = "ip") -> None:
    """Run `lines` with one `ip`/`tc` process (`-batch`), in namespace `ns`."""
    text = "\n".join(lines) + "\n"
    _run([tool, *(("-n", ns) if ns else ()), "-batch", "-"], text)


def build(plan: NetnsPlan, *, netem: bool = True) -> None:
    """Create the namespaces, links, addresses and queueing disciplines of `plan` (`netem`:
    the kernel has netem, see `netem_available`)."""
    _batch(None, [f"netns add {ns}" for ns in plan.namespaces])
    ctl = plan.control_ns
    host_lines: list[str] = []
    ctl_lines = ["link add br0 type bridge", f"addr add {CONTROL_IP}/16 dev br0", "link set br0 up"]
    ctl_lines.append("link set lo up")
    for i, node in enumerate(plan.nodes.values()):
        host_lines.append(f"link add m{i} netns {ctl} type veth peer name m0 netns {node.ns}")
        ctl_lines += [f"link set m{i} master br0", f"link set m{i} up"]
        # The control plane reaches the data addresses over the management network (the agents
        # listen on the cluster hosts' addresses).
        ctl_lines.append(f"route add {node.address}/32 via {node.mgmt_ip}")
    for link in plan.links:
        a, b = plan.nodes[link.a], plan.nodes[link.b]
        host_lines.append(
            f"link add {link.a_if} netns {a.ns} type veth peer name {link.b_if} netns {b.ns}"
        )
    _batch(None, host_lines)
    node_lines: dict[str, list[str]] = {
        n.ns: [
            "link set lo up",
            f"addr add {n.address}/32 dev lo",
            f"addr add {n.mgmt_ip}/16 dev m0",
            "link set m0 up",
        ]
        for n in plan.nodes.values()
    }
    tc_lines: dict[str, list[str]] = {}
    for link in plan.links:
        a, b = plan.nodes[link.a], plan.nodes[link.b]
        for node, dev, ip, peer_ip in (
            (a, link.a_if, link.a_ip, link.b_ip),
            (b, link.b_if, link.b_ip, link.a_ip),
        ):
            node_lines[node.ns].append(f"addr add {ip}/30 dev {dev}")
            if link.initially_up:
                node_lines[node.ns].append(f"link set {dev} up")
            if link.access and node.id == link.b:  # a cluster host or UE: all via its SR
                node_lines[node.ns].append(
                    f"route add 10.200.0.0/16 via {peer_ip} dev {dev} src {node.address}"
                    f" {ROUTE_TCP_OPTIONS}"
                )
            elif link.access:  # its SR reaches the cluster host or UE directly
                node_lines[node.ns].append(f"route add {b.address}/32 via {peer_ip} dev {dev}")
            tc_lines.setdefault(node.ns, []).extend(_qdisc(link, dev, netem))
    _batch(ctl, ctl_lines)
    for ns, lines in node_lines.items():
        _batch(ns, lines)
    for ns, lines in tc_lines.items():
        if lines:
            _batch(ns, lines, tool="tc")
    for node in plan.nodes.values():
        # Routers forward; replies may come back another way than requests went (asymmetric
        # paths during a reroute): no reverse-path filter. A route over a link whose far end
        # went down (no carrier) is skipped, so the backup route of `netns_routes` takes over
        # at once on both ends of a failed link (the near end's routes go with its device).
        devs = [
            k.a_if if k.a == node.id else k.b_if
            for k in plan.links
            if node.id in (k.a, k.b) and not k.access
        ]
        _run(
            [
                "ip", "netns", "exec", node.ns, "sysctl", "-qw",
                f"net.ipv4.ip_forward={1 if node.sr is None else 0}",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
                "net.ipv4.conf.default.ignore_routes_with_linkdown=1",
                *(f"net.ipv4.conf.{dev}.ignore_routes_with_linkdown=1" for dev in devs),
            ]
        )  # fmt: skip


def netem_available(tag: str) -> bool:
    """Does this kernel have netem (sch_netem)? Tried on a veth in a scratch namespace: some
    kernels (this project's CI VM) ship without it, and have only htb and the fifos."""
    ns = f"{tag}-probe"
    with contextlib.suppress(RuntimeError):
        _run(["ip", "netns", "del", ns])
    _batch(None, [f"netns add {ns}"])
    try:
        _batch(ns, ["link add p0 type veth peer name p1"])
        done = subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", "p0", "root", "netem", "delay", "1ms"],
            check=False,
            capture_output=True,
            timeout=30,
        )
        return done.returncode == 0
    finally:
        with contextlib.suppress(RuntimeError):
            _run(["ip", "netns", "del", ns])


def _qdisc(link: NsLink, dev: str, netem: bool) -> list[str]:
    """`tc` batch lines shaping one direction of `link` on `dev`: netem (delay, loss, rate) when
    the kernel has it, else htb (rate only; the SRs then emulate the delay)."""
    if netem:
        args = _netem(link)
        return [f"qdisc add dev {dev} root {args}"] if args else []
    if link.bandwidth_bps is None or link.access:
        return []
    rate = int(min(link.bandwidth_bps, MAX_SHAPED_BPS))
    return [
        f"qdisc add dev {dev} root handle 1: htb default 1",
        f"class add dev {dev} parent 1: classid 1:1 htb rate {rate}bit",
    ]


def _netem(link: NsLink) -> str:
    """netem's arguments for one direction of `link` ('' for none)."""
    parts: list[str] = []
    if link.latency_ms > 0:
        parts.append(f"delay {link.latency_ms:g}ms")
    if link.loss_pct > 0:
        parts.append(f"loss {link.loss_pct:g}%")
    if link.bandwidth_bps is not None and link.bandwidth_bps < MAX_SHAPED_BPS:
        parts.append(f"rate {int(link.bandwidth_bps)}bit")
    if not parts:
        return ""
    # The default limit (1000 packets) drops at a few hundred Mbit/s with 15 ms of delay.
    return "netem limit 100000 " + " ".join(parts)


def existing(tag: str) -> list[str]:
    """Namespaces whose names start with `tag-` (this instance's, maybe of a crashed run)."""
    done = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True, timeout=30
    )
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{tag}-")]


def teardown(tag: str) -> list[str]:
    """Kill every process in this instance's namespaces, then delete them (their veths go with
    them). Returns the namespaces removed."""
    found = existing(tag)
    for ns in found:
        _kill_namespace(ns)
    for ns in found:
        with contextlib.suppress(RuntimeError):
            _run(["ip", "netns", "del", ns])
    return found


def _kill_namespace(ns: str) -> None:
    """SFEs outlive their agents on purpose; nothing may outlive the namespace."""
    for attempt in range(50):
        done = subprocess.run(
            ["ip", "netns", "pids", ns], check=False, capture_output=True, text=True, timeout=30
        )
        pids = [int(p) for p in done.stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if attempt < 10 else signal.SIGKILL)
        time.sleep(0.1)


# -- link state ------------------------------------------------------------------------------


def set_link(plan: NetnsPlan, link: NsLink, up: bool) -> None:
    """`ip link set ... up/down` on both ends of `link`."""
    state = "up" if up else "down"
    _run(["ip", "-n", plan.nodes[link.a].ns, "link", "set", link.a_if, state])
    _run(["ip", "-n", plan.nodes[link.b].ns, "link", "set", link.b_if, state])
