"""What `flame serve orchestrator` sends the CLMC beside alert rules and lifecycle events:
the configuration records (CLMC-3, `config_record`) and, for the clusters this host runs
itself, SFE and host resource metrics (CLMC-8, `flame.sfemc.vim.metrics_reporter`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.orchestrator.config_record import ConfigRecorder
from flame.sfemc.vim.metrics_reporter import DEFAULT_INTERVAL_S, MetricsReporter, for_process_vim
from flame.sfemc.vim.process import ProcessVim
from flame.topology.model import Topology

__all__ = ["Monitoring"]

log = logging.getLogger(__name__)


@dataclass
class Monitoring:
    config: ConfigRecorder
    metrics: list[MetricsReporter] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        vims: Iterable[Any],
        topology: Topology,
        topology_path: Path | None,
        clmc_url: str,
        token: str | None,
        state_dir: Path,
        *,
        metrics_interval_s: float = DEFAULT_INTERVAL_S,
        verify: Any = True,
    ) -> Monitoring:
        """Record the topology in force, and sample every local process VIM (agents sample
        their own host: `flame serve vim --clmc`)."""
        recorder = ConfigRecorder(clmc_url, token, state_dir / "config-spool", verify=verify)
        text = None
        if topology_path is not None:
            try:
                text = topology_path.read_text()
            except OSError as exc:
                log.warning("cannot read the topology %s to record it: %s", topology_path, exc)
        recorder.topology(topology, text)
        reporters: list[MetricsReporter] = []
        if metrics_interval_s > 0:
            local = {id(v): v for v in vims if isinstance(v, ProcessVim)}
            for vim in local.values():
                reporters.append(
                    for_process_vim(
                        vim, clmc_url, token, interval_s=metrics_interval_s, verify=verify
                    )
                )
        return cls(recorder, reporters)

    async def close(self) -> None:
        for reporter in self.metrics:
            reporter.close()
        self.config.close()
