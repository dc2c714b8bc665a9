"""Real `flame serve ...` processes for the multi-host tests (issue 13): started with their own
log file, waited for until healthy, killed (-9), frozen (SIGSTOP: a partition as the caller
sees it) and thawed, and always stopped by `close()`.

(Hosts in network namespaces: tests/hosts/netns.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FLAME = [sys.executable, "-m", "flame"]


def sfe_processes(root: Path) -> dict[int, str]:
    """pid -> SFE name of every live process working under `<root>/.../sfes/<sfe>/`."""
    found: dict[int, str] = {}
    prefix = str(root.resolve()) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state = stat.rsplit(")", 1)[1].split()[0]
        if state != "Z" and cwd.startswith(prefix) and "/sfes/" in cwd:
            found[int(entry)] = cwd.split("/sfes/", 1)[1].split("/", 1)[0]
    return found


def sfe_leaders(root: Path) -> dict[str, int]:
    """SFE name -> the pid its VIM recorded (the sandbox's leader), for SFEs that run now."""
    import json

    found: dict[str, int] = {}
    for pid_file in sorted(root.glob("**/sfes/*/pid.json")):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError):
            continue
        found[pid_file.parent.name] = pid
    return found


def wait_for(check: Callable[[], tuple[bool, object]], timeout: float, what: str) -> float:
    """Poll `check` until it says ok; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        ok, last = check()
        if ok:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout:g}s; last seen: {last}")


@dataclass
class Procs:
    logs: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)

    def start(
        self,
        name: str,
        args: Sequence[str],
        health: str | None,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*FLAME, *args],
                env=env or self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        if health is not None:
            self.wait_healthy(name, health, timeout)
        return proc

    def wait_healthy(self, name: str, health: str, timeout: float = 60.0) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.tail(name)}")
            if self._healthy(health):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not answer {health} in {timeout:g}s:\n{self.tail(name)}")

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(url, timeout=1, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def kill9(self, name: str) -> None:
        proc = self.procs.pop(name)
        self.frozen.discard(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def freeze(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        self.frozen.add(name)

    def thaw(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)
        self.frozen.discard(name)

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if name in self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.frozen.discard(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def close(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)
