"""Issue 13 item 4: three hosts in network namespaces (control, metro, edge), running exactly the
topology and the commands of docs/deploy.md ("An example: three hosts"), read from that file.

Each host is its own network namespace with its own address (10.77.0.1-3), home directory and
environment; every line of the document runs on its host with bash (`flame serve` lines in the
background, waited for until they answer). Then: a user at the edge is served from the metro
cluster (across hosts: the edge SR hands the request to the metro SR, which reaches the SFE on
the metro host's address), then, once the tenant adds the edge, at the edge; no request fails;
registrations carry the cluster hosts' addresses; the agents pulled the image; after the
undeploy no SFE is left on any host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventually import eventually
from sfemc.procs import sfe_leaders, sfe_processes

from .netns import Host, Network, available

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"
DATA = Path(__file__).parent / "data"
ADDRESSES = {"control": "10.77.0.1", "metro": "10.77.0.2", "edge": "10.77.0.3"}


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]


def block(marker: str, language: str) -> str:
    """The fenced block that follows `<!-- marker ...` in docs/deploy.md."""
    text = DOC.read_text(encoding="utf-8")
    at = text.index(f"<!-- {marker}")
    start = text.index(f"```{language}\n", at) + len(language) + 4
    return text[start : text.index("```", start)]


def commands() -> list[tuple[str, str]]:
    lines = []
    for raw in block("three-hosts commands", "sh").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        host, sep, command = line.partition("$ ")
        assert sep, f"not 'host$ command': {raw!r}"
        assert host in ADDRESSES, f"unknown host in {raw!r}"
        lines.append((host, command))
    return lines


def health_probe(host: Host, command: str) -> str:
    """A command that succeeds on `host` once the server `command` starts answers."""
    argv = shlex.split(command)
    component = argv[argv.index("serve") + 1]

    def option(name: str, default: str) -> str:
        return argv[argv.index(name) + 1] if name in argv else default

    address = option("--host", host.address)
    ca = '--cacert "$FLAME_CA_FILE"'
    if component == "pce":
        return f"curl -sf {ca} https://{address}:{option('--port', '7070')}/health"
    if component == "orchestrator":
        return f"curl -sf {ca} https://{address}:{option('--port', '7080')}/health"
    if component == "vim":
        return f"curl -sf {ca} https://{address}:{option('--port', '7090')}/health"
    if component == "sr":
        port = option("--port", "8080")
        return f"curl -sf -H 'Host: _flame' http://{address}:{port}/.flame/health"
    raise AssertionError(f"no health probe for 'flame serve {component}'")


class Session:
    """Runs the document's lines: variables (`X=$(...)`) are shared by the hosts, as a user
    copying a printed token from one terminal to another; `export` sets a host's environment;
    `scp` copies between the hosts' homes; `flame serve` runs in the background."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.vars: dict[str, str] = {}
        self.outputs: list[tuple[str, str, str]] = []  # (host, command, stdout)
        self.timings: dict[str, float] = {}
        self.expect: list[str] = []  # what each `curl` in turn should be answered by
        # command prefix -> checks to run after each such line, in turn
        self.checks: dict[str, list[Callable[[str], None]]] = {}

    def run(self, host_name: str, command: str) -> None:
        self._run(host_name, command)
        for prefix, checks in self.checks.items():
            if command.startswith(prefix) and checks:
                checks.pop(0)(self.outputs[-1][2] if self.outputs else "")

    def _run(self, host_name: str, command: str) -> None:
        host = self.net.hosts[host_name]
        if m := re.fullmatch(r"([A-Z_]+)=\$\((.*)\)", command):
            self.vars[m.group(1)] = host.run(m.group(2), extra=self.vars).stdout.strip()
        elif command.startswith("export "):
            for assignment in shlex.split(command.removeprefix("export ")):
                name, _, value = assignment.partition("=")
                expanded = host.run(f'printf %s "{value}"', extra=self.vars).stdout
                host.env[name] = expanded
        elif command.startswith("scp "):
            self.scp(host, shlex.split(command)[1:])
        elif " serve " in f" {command} ":
            name = f"{shlex.split(command)[shlex.split(command).index('serve') + 1]}"
            name = f"{name}-{len(host.procs)}"
            started = time.monotonic()
            host.start(name, command, extra=self.vars)
            host.wait_ok(name, health_probe(host, command), timeout=90)
            self.timings[f"{host_name} {name}"] = time.monotonic() - started
        elif command.startswith("curl ") and self.expect:
            # A user's request right after a deploy: the new table may still be on its way to
            # the SR (milliseconds); asked again until it names the SFE the test expects.
            want = self.expect.pop(0)
            started = time.monotonic()
            out = eventually(lambda: host.run(command, extra=self.vars).stdout,
                             until=lambda text: json.loads(text).get("sfe") == want,
                             what=f"{command!r} to be answered by {want}")  # fmt: skip
            self.timings[f"{host_name}$ curl until {want}"] = time.monotonic() - started
            self.outputs.append((host_name, command, out))
        else:
            started = time.monotonic()
            out = host.run(command, extra=self.vars).stdout
            self.timings[f"{host_name}$ {command[:40]}"] = time.monotonic() - started
            self.outputs.append((host_name, command, out))

    def scp(self, source: Host, argv: list[str]) -> None:
        recursive = argv[0] == "-r"
        *sources, target = argv[1:] if recursive else argv
        where, _, path = target.partition(":")
        dest_host = self.net.hosts[where]
        dest = dest_host.home / path
        for item in sources:
            src = source.home / item
            into = dest / src.name if path == "" or path.endswith("/") else dest
            into.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                assert recursive, f"scp of a directory needs -r: {item}"
                shutil.copytree(src, into, dirs_exist_ok=True)
            else:
                shutil.copy2(src, into)

    def output(self, host: str, starts: str, nth: int = 0) -> str:
        found = [out for h, c, out in self.outputs if h == host and c.startswith(starts)]
        return found[nth]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "XDG_"))}
    base["FLAME_LOG_LEVEL"] = "INFO"
    network = Network(tmp_path / "hosts", base)
    try:
        for name, address in ADDRESSES.items():
            network.add(name, address)
        yield network
    finally:
        network.close()
        left = sfe_processes(tmp_path)
        assert not left, f"SFE processes left running: {left}"


def test_three_hosts_as_docs_deploy_md_says(net: Network) -> None:
    control = net.hosts["control"]
    (control.home / "three-hosts.yaml").write_text(block("three-hosts topology", "yaml"))
    (control.home / "examples").symlink_to(ROOT / "examples")
    for template in ("echo.yaml", "echo-edge.yaml"):
        shutil.copy(DATA / template, control.home / template)
    session = Session(net)
    session.expect = ["echo-1.web.metro", "echo-1.web.edge"]
    homes = {name: host.home for name, host in net.hosts.items()}

    def served_across(out: str) -> None:
        answer = json.loads(out)
        assert answer["sfe"] == "echo-1.web.metro"
        # Through the edge SR, handed to the metro SR (the egress hop, across hosts).
        via = answer["headers"].get("Via") or answer["headers"].get("via")
        assert "sr-edge" in via, answer
        assert "sr-metro" in via, answer
        assert {n: set(sfe_leaders(h)) for n, h in homes.items()} == {
            "control": set(),
            "metro": {"echo-1.web.metro"},
            "edge": set(),
        }

    def served_at_edge(out: str) -> None:
        answer = json.loads(out)
        assert answer["sfe"] == "echo-1.web.edge"
        via = answer["headers"].get("Via") or answer["headers"].get("via")
        assert "sr-metro" not in via, answer
        assert {n: set(sfe_leaders(h)) for n, h in homes.items()} == {
            "control": set(),
            "metro": {"echo-1.web.metro"},
            "edge": {"echo-1.web.edge"},
        }

    def routed_to_the_metro_host(out: str) -> None:
        assert "10.77.0.2" in out, out  # registered with the metro host's address

    session.checks = {
        "curl": [served_across, served_at_edge],
        "flame routes": [routed_to_the_metro_host],
    }
    started = time.monotonic()
    for host, command in commands():
        session.run(host, command)
    total = time.monotonic() - started

    assert all(not checks for checks in session.checks.values()), "a check did not run"
    load = json.loads(session.output("edge", "flame --json ue run"))
    assert load["requests"] >= 50, load
    assert load["failed"] == 0, load
    assert load["statuses"] == {"200": load["requests"]}, load
    status = session.output("control", "FLAME_TOKEN=$ACME flame status")
    assert "echo-1.web.metro" in status
    assert "echo-1.web.edge" in status
    # Each agent pulled the image into its own cache and ran its SFE on its own host.
    for name in ("metro", "edge"):
        images = list((net.hosts[name].home / ".local/share/flame/vim-agent/images/meta").glob("*"))
        assert len(images) == 1, name
    assert sfe_processes(net.root) == {}  # undeployed: nothing left anywhere
    print(
        f"three hosts: {total:.1f}s for every line of the document; UE across hosts: "
        f"{load['requests']} requests, {load['failed']} failed, p50 "
        f"{load['latency_ms']['p50']} ms, p99 {load['latency_ms']['p99']} ms; "
        + "; ".join(f"{k} {v:.2f}s" for k, v in session.timings.items())
    )
