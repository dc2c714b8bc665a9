"""Sending a process VIM's SFE and host metrics to the CLMC every `interval_s` (CLMC-8).

A daemon thread samples (`flame.sfemc.vim.metrics`) and POSTs the points to
``{clmc}/write?db=flame`` with the VIM's token (operator, or a router token: both may write to
the platform database). Monitoring never stalls the VIM: when the CLMC is away a bounded
backlog is kept (the oldest points go first, counted in `dropped`); points carry their sample
time, and the CLMC keeps the last write per series and time, so re-sending is harmless.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path
from typing import Any

import httpx

from flame.sfemc.vim.metrics import HostSampler, SfeSampler

__all__ = ["DEFAULT_INTERVAL_S", "MetricsReporter", "for_process_vim"]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0


class MetricsReporter:
    def __init__(
        self,
        clmc_url: str,
        token: str | None,
        sfes: SfeSampler | None,
        host: HostSampler | None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        database: str = "flame",
        max_backlog: int = 50_000,
        verify: Any = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the metrics interval must be positive")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=clmc_url.rstrip("/"),
            headers=headers,
            timeout=max(2.0, interval_s),
            trust_env=False,
            verify=verify,
        )
        self.sfes = sfes
        self.host = host
        self.interval_s = interval_s
        self._db = database
        self._backlog: collections.deque[str] = collections.deque(maxlen=max_backlog)
        self._stop = threading.Event()
        self.sent = 0
        self.dropped = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="vim-metrics", daemon=True)

    def start(self) -> MetricsReporter:
        self._thread.start()
        return self

    def sample(self) -> list[str]:
        lines: list[str] = []
        if self.sfes is not None:
            lines += self.sfes.sample()
        if self.host is not None:
            lines += self.host.sample()
        self.samples += 1
        return lines

    def tick(self) -> bool:
        """Sample once and send what is waiting; False if the CLMC did not take it."""
        lines = self.sample()
        overflow = len(self._backlog) + len(lines) - (self._backlog.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
        self._backlog.extend(lines)
        return self._send()

    def _send(self) -> bool:
        batch = list(self._backlog)
        if not batch:
            return True
        try:
            response = self._client.post(
                "/write", params={"db": self._db, "precision": "n"}, content="\n".join(batch)
            )
        except httpx.HTTPError as exc:
            log.debug("CLMC unreachable (%s); %d metric points kept", exc, len(batch))
            return False
        if response.status_code >= 500 or response.status_code == 429:
            return False  # busy or failing: keep them for the next tick
        for _ in range(min(len(batch), len(self._backlog))):
            self._backlog.popleft()
        if response.status_code >= 300:
            self.dropped += len(batch)
            log.warning(
                "CLMC refused %d metric points: HTTP %d %s",
                len(batch),
                response.status_code,
                response.text[:200],
            )
            return False
        self.sent += len(batch)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:
                log.exception("sampling VIM metrics failed; trying again next interval")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._client.close()


def for_process_vim(
    vim: Any,
    clmc_url: str,
    token: str | None,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    verify: Any = True,
) -> MetricsReporter:
    """A started reporter for a `ProcessVim`: its SFEs, and its host once per cluster."""
    cgroups = getattr(vim, "cgroups", None)
    sfes = SfeSampler(Path(vim.sfes_dir), cgroup_base=cgroups.base if cgroups else None)
    host = HostSampler(sorted(vim.ports.ranges), Path(vim.root))
    reporter = MetricsReporter(clmc_url, token, sfes, host, interval_s=interval_s, verify=verify)
    return reporter.start()
