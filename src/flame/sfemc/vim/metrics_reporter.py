"""Sending a process VIM's SFE and host metrics to the CLMC every `interval_s` (CLMC-8).

The common CLMC writer (`flame.common.clmc_client`), on a thread of its own, samples
(`flame.sfemc.vim.metrics`) each interval and POSTs the points to ``{clmc}/write?db=flame``
with the VIM's token (operator, or a router token: both may write to the platform database).
Monitoring never stalls the VIM: when the CLMC is away a bounded backlog is kept (the oldest
points go first, counted in `dropped`) and sent after a back-off; points carry their sample
time, and the CLMC keeps the last write per series and time, so re-sending is harmless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flame.common.clmc_client import ClmcTarget, ThreadedReporter, Verify
from flame.sfemc.vim.metrics import HostSampler, SfeSampler

__all__ = ["DEFAULT_INTERVAL_S", "MetricsReporter", "for_process_vim"]

DEFAULT_INTERVAL_S = 2.0


class MetricsReporter(ThreadedReporter):
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
        verify: Verify = True,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the metrics interval must be positive")
        self.sfes = sfes
        self.host = host
        self.interval_s = interval_s
        self.samples = 0
        super().__init__(
            ClmcTarget(clmc_url, database, token, verify, timeout_s=max(2.0, interval_s)),
            name="vim-metrics",
            interval_s=interval_s,
            max_backlog=max_backlog,
        )

    def start(self) -> MetricsReporter:
        self._writer.start(collect=self.sample)
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
        """Sample once and send what is waiting now; False if the CLMC did not take it all."""
        self._writer.add_many(self.sample())
        return self.flush()


def for_process_vim(
    vim: Any,
    clmc_url: str,
    token: str | None,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    verify: Verify = True,
) -> MetricsReporter:
    """A started reporter for a `ProcessVim`: its SFEs, and its host once per cluster."""
    cgroups = getattr(vim, "cgroups", None)
    sfes = SfeSampler(Path(vim.sfes_dir), cgroup_base=cgroups.base if cgroups else None)
    host = HostSampler(sorted(vim.ports.ranges), Path(vim.root))
    reporter = MetricsReporter(clmc_url, token, sfes, host, interval_s=interval_s, verify=verify)
    return reporter.start()
