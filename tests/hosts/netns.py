"""Hosts in network namespaces for the multi-host tests (issue 13): a "switch" namespace with a
bridge, and one namespace per host joined to it by a veth pair (`eth0` in the host, an address
of 10.77.0.0/24). Nothing is added to the namespace the tests run in: the hosts reach each other
and nobody else, and the test reaches them only through `ip netns exec`.

Each host has its own home directory (`HOME`, so `~/.local/share/flame` and
`~/.config/flame` are its own), its own environment, and runs commands with bash: in the
foreground (`run`, which must succeed) or in the background (`start`, stopped by `close`).
Namespace names carry the test process's pid, so concurrent runs never meet.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eventually import Fatal, eventually

VENV_BIN = str(Path(sys.executable).parent)


def available() -> str | None:
    """Why these tests cannot run here (None if they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if shutil.which("bwrap") is None:
        return "needs bubblewrap (the VIM agents sandbox their SFEs)"
    if shutil.which("curl") is None:
        return "needs curl"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    ns: str
    address: str
    home: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _argv(self, command: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, "bash", "-c", f"cd {self.home} && {command}"]

    def run(
        self, command: str, *, extra: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `command` to its end on this host; RuntimeError with its output if it fails."""
        done = subprocess.run(
            self._argv(command),
            check=False,
            env={**self.env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.name}$ {command}\nexit {done.returncode}\n{done.stdout[-2000:]}"
                f"\n{done.stderr[-3000:]}"
            )
        return done

    def start(self, name: str, command: str, *, extra: Mapping[str, str] | None = None) -> None:
        """Start a long-running `command` (its pid is the program's: `exec`)."""
        log = self.home / f"{name}.log"
        # `NAME=value exec program`: the program replaces bash (its pid is ours to signal).
        assigns, rest = re.fullmatch(r"((?:[A-Za-z_]\w*=\S*\s+)*)(.*)", command).groups()  # type: ignore[union-attr]
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen(
                self._argv(f"{assigns}exec {rest}"),
                env={**self.env, **(extra or {})},
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def wait_ok(self, name: str, probe: str, timeout: float = 60.0) -> float:
        """Until `probe` (a command) succeeds on this host; fails at once if `name` exits."""
        started = time.monotonic()

        def ready() -> bool:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise Fatal(f"{self.name}: {name} exited ({proc.returncode}):\n{self.log(name)}")
            done = subprocess.run(
                self._argv(probe), check=False, env=self.env, capture_output=True, timeout=30
            )
            return done.returncode == 0

        eventually(ready, timeout=timeout, every=0.1,
                   what=lambda: f"{self.name}: {name} to be ready:\n{self.log(name)}")  # fmt: skip
        return time.monotonic() - started

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


class Network:
    """Hosts on one bridge: `add(name, address)`, then `close()` (processes, namespaces)."""

    def __init__(self, root: Path, base_env: Mapping[str, str]) -> None:
        self.tag = f"fl{os.getpid() % 100000}"
        self.root = root
        self.base_env = dict(base_env)
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str, address: str) -> Host:
        ns = f"{self.tag}-{name}"
        port = f"v{self.tag}{len(self.hosts)}"[:15]
        _ip("netns", "add", ns)
        _ip(
            "link",
            "add",
            port,
            "netns",
            self.switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **self.base_env,
            "HOME": str(home),
            "PATH": f"{VENV_BIN}:{self.base_env.get('PATH', '/usr/bin:/bin')}",
        }
        host = Host(name, ns, address, home, env)
        self.hosts[name] = host
        return host

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def close(self) -> None:
        for host in list(self.hosts.values())[::-1]:
            host.stop_all()
        for host in self.hosts.values():
            _kill_namespace_processes(host.ns)
            with contextlib.suppress(RuntimeError):
                _ip("netns", "del", host.ns)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.switch)


def _kill_namespace_processes(ns: str) -> None:
    """Whatever is still running in `ns` (SFEs outlive their agents on purpose)."""
    done = subprocess.run(
        ["ip", "netns", "pids", ns], check=False, capture_output=True, text=True, timeout=30
    )
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
