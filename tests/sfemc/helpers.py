"""Building blocks for SFEMC tests: a store with one endpoint, a recording bus subscriber."""

from __future__ import annotations

from pathlib import Path

from flame.sfemc.events import CONFIG_TOPIC, ConfigEvent, InProcessBus
from flame.sfemc.store import SfemcStore, open_store
from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec


def spec(
    sfe: str = "svc-1.web.c1", cluster: str = "c1", sf: str = "web", **kw: object
) -> EndpointSpec:
    values: dict[str, object] = {
        "sfe": sfe,
        "tenant": "acme",
        "sfc": "svc",
        "sfci": "svc-1",
        "sf": sf,
        "cluster": cluster,
        "fqdn": "web.acme.example",
        "image": "sha256:" + "a" * 64,
        "ports": (PortSpec("http", 8080),),
        "environment": {"A": "1"},
        "health": HealthSpec("/health", "http", 1.0, 0.5, 2),
        "cpus": 0.5,
        "memory_bytes": 100_000_000,
        "disk_bytes": 100_000_000,
    }
    values.update(kw)
    return EndpointSpec(**values)  # type: ignore[arg-type]


class Recorder:
    def __init__(self, bus: InProcessBus, topic: str = CONFIG_TOPIC) -> None:
        self.events: list[object] = []
        bus.subscribe(topic, self.events.append)

    @property
    def config(self) -> list[ConfigEvent]:
        return [e for e in self.events if isinstance(e, ConfigEvent)]


def sqlite_store(tmp: Path) -> SfemcStore:
    return open_store(tmp / "sfemc.db")
