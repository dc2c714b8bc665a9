"""One process SFE as the process VIM tracks it (its state document, process and supervisor)
and the helpers that ask about its process: alive, exited with which status, its group
still running. Kept apart from process.py, which drives the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from flame.sfemc.images import ImageManifest
from flame.sfemc.vim._proc import ProcId
from flame.sfemc.vim._records import has_live_member, spec_from_json
from flame.sfemc.vim.base import EndpointSpec
from flame.sfemc.vim.endpoint_tls import EndpointCert

__all__ = [
    "Sfe",
    "cert_due",
    "exit_code",
    "group_running",
    "log_task_failure",
    "tls_on",
    "url_host",
    "wait_exit",
]

log = logging.getLogger("flame.sfemc.vim.process")  # the lifecycle's log, as before


@dataclasses.dataclass(eq=False)
class Sfe:
    name: str
    path: Path
    doc: dict[str, Any]
    proc: ProcId | None = None
    child: subprocess.Popen[bytes] | None = None  # only for processes this controller started
    started_at: float = 0.0
    healthy: bool | None = None
    task: asyncio.Task[None] | None = None
    cert: EndpointCert | None = None  # fetched for the next start, written by _spawn
    renew_after: float = 0.0  # monotonic: no renewal try before (the PCE was away)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def desired(self) -> str:
        return str(self.doc["desired"])

    def spec(self) -> EndpointSpec:
        return spec_from_json(self.doc["spec"])

    def manifest(self) -> ImageManifest:
        return ImageManifest.from_json(self.doc["manifest"])

    def alive(self) -> bool:
        if self.child is not None and self.child.poll() is not None:
            return False  # reaped here; /proc alone would not tell a zombie of ours apart
        return self.proc is not None and self.proc.alive()


def tls_on(rec: Sfe) -> bool:
    tls = rec.doc.get("tls")
    return isinstance(tls, dict) and bool(tls.get("on"))


def cert_due(rec: Sfe) -> bool:
    """A third of the running certificate's life left: time to renew (as SR identities)."""
    if not tls_on(rec):
        return False
    issued, until = float(rec.doc["tls"]["issued_at"]), float(rec.doc["tls"]["not_after"])
    return time.time() >= until - (until - issued) / 3


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def group_running(pgid: int, rec: Sfe) -> bool:
    if rec.child is not None:
        rec.child.poll()  # reap the leader so that it does not linger as a zombie
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (ours are reaped above; others are reaped by init): nothing runs.
    return has_live_member(pgid)


async def wait_exit(rec: Sfe, timeout: float) -> bool:
    """Whether the SFE's process ended within `timeout` (pidfd: no polling, any parent)."""
    proc = rec.proc
    if proc is None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:
        return not rec.alive()  # gone already (or no pidfd support: fall back to a check)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    try:
        if not rec.alive():  # the pid was reused between the check and pidfd_open
            return True

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(ended, timeout)
        except TimeoutError:
            return False
        return True
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def exit_code(rec: Sfe) -> int | None:
    """The exit status of our own child (None for an adopted process: not ours to wait for)."""
    if rec.child is None:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):
        # It died between poll() and the /proc check: reap it now for the status.
        return rec.child.wait(timeout=1.0)
    return None


def log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
