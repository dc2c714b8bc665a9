"""Processes a test run left behind: found after the last test, reported and stopped.

Every test stops the servers it starts (fixtures with `finally`). What this catches is the
rest: a test that forgot, and an xdist worker that died mid-test (a crash, pytest-timeout's
`thread` method), whose fixtures' finalizers never ran. A process belongs to the run when it
carries the run's token in its environment (`RUN_VARIABLE`, set by the main pytest process
before the xdist workers start, so every child that inherits the environment has it) or
works in, or names, the run's base temporary directory (servers started with a fresh
environment, e.g. the SFEs a VIM confines, still run under some test's `tmp_path`).
A process started with a fresh environment outside `tmp_path` is not seen.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

RUN_VARIABLE = "PYTEST_FLAME_RUN"
GRACE_S = 5.0  # a server a test stopped last may still be exiting
KILL_WAIT_S = 5.0
# multiprocessing's helper processes of pytest itself: they exit with their parent, not leftovers
_OWN_HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")


def new_token() -> str:
    return secrets.token_hex(8)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _belongs(pid: str, marker: bytes, under: str) -> str | None:
    """The command line of process `pid` if it belongs to the run (and is not a zombie);
    `under` is the base temporary directory with a trailing slash."""
    try:
        if _read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[0] == b"Z":
            return None
        raw = _read(f"/proc/{pid}/cmdline")
        if any(helper in raw for helper in _OWN_HELPERS):
            return None
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        cwd = os.readlink(f"/proc/{pid}/cwd")
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
    except (OSError, IndexError):
        return None
    if marker in environ or (cwd + "/").startswith(under) or under in cmdline:
        return cmdline.strip()[:200]
    return None


def find(token: str, basetemp: Path, exclude: set[int]) -> dict[int, str]:
    """pid -> command line of every live process of this run, except `exclude`."""
    marker = f"{RUN_VARIABLE}={token}".encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            cmdline = _belongs(entry, marker, str(basetemp).rstrip("/") + "/")
            if cmdline is not None:
                found[int(entry)] = cmdline
    return found


def _wait_gone(probe: Callable[[], dict[int, str]], seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    left = probe()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = probe()
    return left


def sweep(token: str, basetemp: Path) -> dict[int, str]:
    """Stop what the run left behind; returns what was still running after the grace."""
    exclude = {os.getpid()}

    def probe() -> dict[int, str]:
        return find(token, basetemp, exclude)

    left = _wait_gone(probe, GRACE_S)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in probe():
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, sig)
        if not _wait_gone(probe, KILL_WAIT_S):
            break
    return left
