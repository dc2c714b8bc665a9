"""Real child processes for FLAME-in-a-box: start, wait for health, stop, leave nothing behind.

Each component runs in its own session (process group), so stopping it also stops whatever it
started (an SR's workers, the SFEs of the process VIM). The running instance is described in
`<run_dir>/up.json` and guarded by an exclusive lock on `<run_dir>/up.lock`, held for the life
of the supervising process: a second `flame up` finds the lock taken and says so, and
`flame down` finds the pids to signal even when the supervisor itself was killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from flame.common.errors import FlameError, UserError

__all__ = [
    "AlreadyRunning",
    "Component",
    "Supervisor",
    "read_instance",
    "stop_instance",
]

log = logging.getLogger(__name__)


class AlreadyRunning(UserError):
    """Another FLAME-in-a-box holds this state directory."""


@dataclass(frozen=True, slots=True)
class Component:
    name: str  # "pce", "sr-ue-1", ...
    argv: Sequence[str]
    url: str | None = None  # what `flame up` prints
    health_url: str | None = None  # GET -> 2xx when ready
    health_host: str | None = None  # Host header of that GET (an SR answers for `_flame`)
    ready_line: str | None = None  # or: this text appears in its log
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 30.0
    health_ca_file: str | None = None  # the CA of an https health_url (flame up --netns)


@dataclass(slots=True)
class Running:
    component: Component
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts components in order and stops them in reverse order."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.running: list[Running] = []
        self._lock: IO[str] | None = None
        self.extra: dict[str, Any] = {}  # shown in up.json (tokens are never written there)

    # -- the instance lock ----------------------------------------------------------------------

    def acquire(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.run_dir / "up.lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            instance = read_instance(self.run_dir)
            pid = instance.get("pid", "?") if instance else "?"
            raise AlreadyRunning(
                f"FLAME-in-a-box is already running from {self.run_dir} (pid {pid}); "
                "use it, or stop it first with 'flame down'"
            ) from None
        self._lock = lock
        # A previous supervisor killed outright left its components running (each in its own
        # session): they hold the ports and the old tokens, so stop them before starting anew.
        left = stop_leftovers(self.run_dir)
        if left:
            log.warning("stopped %s left running by a previous flame up", ", ".join(left))

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "up.json").unlink()
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- processes ------------------------------------------------------------------------------

    def start(self, component: Component) -> Running:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{component.name}.log"
        env = {**os.environ, **component.env}
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                list(component.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        running = Running(component, process, log_path)
        self.running.append(running)
        self.write_state(ready=False)
        return running

    def wait_ready(self, running: Running, stopping: Callable[[], bool] = lambda: False) -> None:
        """Block until `running` is ready; raise if it exits or times out. Returns early (not
        ready) when `stopping()` turns true, so that Ctrl-C during start-up is prompt."""
        component = running.component
        deadline = time.monotonic() + component.ready_timeout_s
        offset = 0
        while not stopping():
            if running.process.poll() is not None:
                raise FlameError(
                    f"{component.name} exited with status {running.process.returncode} while "
                    f"starting; its log {running.log_path} ends with:\n{_tail(running.log_path)}"
                )
            if component.health_url is not None and _healthy(
                component.health_url, component.health_host, component.health_ca_file
            ):
                return
            if component.ready_line is not None:
                text = running.log_path.read_text(errors="replace")
                if component.ready_line in text[offset:]:
                    return
            if time.monotonic() > deadline:
                raise FlameError(
                    f"{component.name} was not ready after {component.ready_timeout_s:g}s; "
                    f"its log {running.log_path} ends with:\n{_tail(running.log_path)}"
                )
            time.sleep(0.05)

    def write_state(self, *, ready: bool) -> None:
        state = {
            "pid": os.getpid(),
            "ready": ready,
            "started": time.time(),
            "components": [
                {
                    "name": r.component.name,
                    "pid": r.process.pid,
                    "start": process_start(r.process.pid),
                    "url": r.component.url,
                    "log": str(r.log_path),
                }
                for r in self.running
            ],
            **self.extra,
        }
        path = self.run_dir / "up.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    def exited(self) -> list[Running]:
        return [r for r in self.running if r.process.poll() is not None]

    def stop_all(self, grace_s: float = 10.0) -> None:
        """SIGTERM every group (last started first), then SIGKILL what is left after grace."""
        for running in reversed(self.running):
            _signal_group(running.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for running in reversed(self.running):
            try:
                running.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %gs; killing it", running.component.name, grace_s)
        for running in self.running:
            _signal_group(running.process.pid, signal.SIGKILL)  # also stray grandchildren
            with contextlib.suppress(subprocess.TimeoutExpired):
                running.process.wait(5)
        self.running.clear()


def read_instance(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "up.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def instance_running(run_dir: Path) -> bool:
    """True while some process holds the instance lock."""
    path = run_dir / "up.lock"
    if not path.exists():
        return False
    with path.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def stop_instance(run_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the instance in `run_dir`; False if none was running."""
    instance = read_instance(run_dir)
    if not instance_running(run_dir):
        if instance is None:
            return False
        stop_leftovers(run_dir)  # the supervisor died without cleaning up
        return True
    pid = int(instance["pid"]) if instance else None
    if pid is None:
        raise UserError(f"FLAME-in-a-box in {run_dir} is running but left no up.json; stop it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while instance_running(run_dir):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for component in (instance or {}).get("components", []):
                _signal_group(int(component["pid"]), signal.SIGKILL)
            break
        time.sleep(0.1)
    # The lock goes just before the supervisor exits; wait for the exit itself.
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def stop_leftovers(run_dir: Path, timeout_s: float = 10.0) -> list[str]:
    """Kill the components a dead supervisor recorded in up.json (each process group whose
    leader is still the process recorded: same pid *and* start time, so a recycled pid is never
    hit), wait until they are gone and remove up.json. Returns their names."""
    instance = read_instance(run_dir)
    if instance is None:
        return []
    stopped: list[tuple[str, int]] = []
    for component in instance.get("components", []):
        try:
            pid, start = int(component["pid"]), component.get("start")
        except (KeyError, TypeError, ValueError):
            continue
        if not pid_alive(pid) or (start is not None and process_start(pid) != start):
            continue
        _signal_group(pid, signal.SIGKILL)
        stopped.append((str(component.get("name", pid)), pid))
    deadline = time.monotonic() + timeout_s
    for _, pid in stopped:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / "up.json").unlink()
    return [name for name, _ in stopped]


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rpartition(")")[2].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _healthy(url: str, host: str | None = None, ca_file: str | None = None) -> bool:
    headers = {"Host": host} if host else {}
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    try:
        return httpx.get(
            url, headers=headers, timeout=1.0, trust_env=False, verify=verify
        ).is_success
    except httpx.HTTPError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextlib.contextmanager
def supervised(
    run_dir: Path, on_stopped: Callable[[], object] | None = None
) -> Iterator[Supervisor]:
    """A supervisor holding the instance lock; everything is stopped on the way out, then
    `on_stopped` runs (still holding the lock) for what the components leave behind."""
    supervisor = Supervisor(run_dir)
    supervisor.acquire()
    try:
        yield supervisor
    finally:
        supervisor.stop_all()
        if on_stopped is not None:
            try:
                on_stopped()
            except Exception:
                log.exception("cleaning up after the components failed")
        supervisor.release()
