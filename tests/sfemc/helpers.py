"""Building blocks for SFEMC tests: a store with one endpoint, a recording bus subscriber."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict, Unpack

from flame.sfemc.events import CONFIG_TOPIC, ConfigEvent, InProcessBus
from flame.sfemc.store import SfemcStore, open_store
from flame.sfemc.vim.base import EndpointSpec, HealthSpec, PortSpec


class SpecFields(TypedDict, total=False):
    """The EndpointSpec fields a test may override beyond those a spec builder names."""

    tenant: str
    sfc: str
    sfci: str
    fqdn: str
    ports: tuple[PortSpec, ...]
    environment: Mapping[str, str]
    health: HealthSpec | None
    cpus: float | None
    memory_bytes: int | None
    disk_bytes: int | None


def spec(
    sfe: str = "svc-1.web.c1",
    cluster: str = "c1",
    sf: str = "web",
    image: str = "sha256:" + "a" * 64,
    **kw: Unpack[SpecFields],
) -> EndpointSpec:
    base = EndpointSpec(
        sfe=sfe,
        tenant="acme",
        sfc="svc",
        sfci="svc-1",
        sf=sf,
        cluster=cluster,
        fqdn="web.acme.example",
        image=image,
        ports=(PortSpec("http", 8080),),
        environment={"A": "1"},
        health=HealthSpec("/health", "http", 1.0, 0.5, 2),
        cpus=0.5,
        memory_bytes=100_000_000,
        disk_bytes=100_000_000,
    )
    return dataclasses.replace(base, **kw)


class Recorder:
    def __init__(self, bus: InProcessBus, topic: str = CONFIG_TOPIC) -> None:
        self.events: list[object] = []
        bus.subscribe(topic, self.events.append)

    @property
    def config(self) -> list[ConfigEvent]:
        return [e for e in self.events if isinstance(e, ConfigEvent)]


def sqlite_store(tmp: Path) -> SfemcStore:
    return open_store(tmp / "sfemc.db")
