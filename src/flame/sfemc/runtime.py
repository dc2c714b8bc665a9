"""Assembling a running SFEMC from configuration: store, process VIM, registrar (ORCH-6).

Used by `flame serve orchestrator`; the process VIM serves every cluster of the topology whose
VIM is `process` (or unset), each with its own port range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flame.common.errors import ConfigError
from flame.sfemc.control import Sfemc
from flame.sfemc.events import EventBus
from flame.sfemc.images import ImageRepository
from flame.sfemc.registrar import HttpRegistrar, InProcessRegistrar, Registrar
from flame.sfemc.store import open_store
from flame.sfemc.vim.base import VimDriver
from flame.sfemc.vim.process import ProcessVim
from flame.topology.model import Topology, Vim

__all__ = ["Runtime", "build_runtime", "port_ranges"]

PORTS_PER_CLUSTER = 500


def port_ranges(topology: Topology, base: int) -> dict[str, range]:
    """Disjoint port ranges per process cluster, in cluster-id order."""
    clusters = sorted(c for c, n in topology.clusters.items() if n.vim in (None, Vim.PROCESS))
    top = base + PORTS_PER_CLUSTER * len(clusters)
    if base < 1024 or top > 65535:
        raise ConfigError(
            f"port base {base} gives ports up to {top}: pick a base from 1024 to "
            f"{65535 - PORTS_PER_CLUSTER * len(clusters)}"
        )
    return {
        c: range(base + i * PORTS_PER_CLUSTER, base + (i + 1) * PORTS_PER_CLUSTER)
        for i, c in enumerate(clusters)
    }


@dataclass
class Runtime:
    sfemc: Sfemc
    vims: Mapping[str, VimDriver]
    registrar: Registrar

    async def close(self) -> None:
        for vim in {id(v): v for v in self.vims.values()}.values():
            await vim.close()
        await self.registrar.close()
        self.sfemc.store.close()


def build_runtime(
    topology: Topology,
    bus: EventBus,
    *,
    db: str,
    state_dir: Path,
    images_dir: Path,
    pce_urls: Sequence[str] = (),
    pce_token: str | None = None,
    delegations: Mapping[str, str] | None = None,
    drain_s: float = 1.0,
    resync_s: float = 30.0,
    port_base: int = 20000,
    sr_urls: Mapping[str, str] | None = None,
    allow_unconfined_sfes: bool = False,
) -> Runtime:
    """`sr_urls` (SR id -> URL) tells each SFE its cluster's SR (FLAME_SR_URL).

    SFEs run sandboxed (bubblewrap); where this host cannot, they are refused unless
    `allow_unconfined_sfes` lets them run as this process's user (docs/sfemc.md)."""
    ranges = port_ranges(topology, port_base)
    images = ImageRepository(images_dir)
    by_cluster = {
        cluster: (sr_urls or {})[node.sr]
        for cluster, node in topology.clusters.items()
        if node.sr is not None and node.sr in (sr_urls or {})
    }
    vim = ProcessVim(
        state_dir / "vim",
        ranges,
        images,
        sr_urls=by_cluster,
        allow_unconfined=allow_unconfined_sfes,
    )
    vims: dict[str, VimDriver] = dict.fromkeys(ranges, vim)
    registrar: Registrar
    if pce_urls:
        registrar = HttpRegistrar(list(pce_urls), pce_token)
    else:
        registrar = InProcessRegistrar(delegations)
    store = open_store(db)
    sfemc = Sfemc(
        store, bus, topology, vims, registrar, drain_s=drain_s, resync_s=resync_s, images=images
    )
    return Runtime(sfemc, vims, registrar)
