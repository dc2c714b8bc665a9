"""Where the orchestrator is built (issue 18): `build_orchestrator(OrchestratorSettings)` gives
the ASGI app of `flame serve orchestrator` — the orchestrator API hosting the SFEMC (built by
`flame.sfemc.build`), its alert sink, and what it sends the CLMC.

With a CLMC (`clmc_url`): alert rules go to its API (`clmc_sink.HttpAlertSink`), endpoint
lifecycle events and cluster places to its `/write` (`ClmcReporter`), configuration records and
resource metrics through `monitoring.Monitoring`. Without one (`clmc_url=None`, which a caller
must say: the field has no default), rules stay in this process (`InProcessAlertSink`) and are
never evaluated, so no policy fires; `flame serve orchestrator` refuses to start that way
unless given `--no-clmc`, and then says so. Tests build the same app with their own VIMs and
registrar (`SfemcParts`).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.auth import TokenStore
from flame.common.nats_events import NatsEvents
from flame.orchestrator.alerts import AlertSink, InProcessAlertSink
from flame.orchestrator.api import create_app
from flame.orchestrator.clmc_sink import HttpAlertSink
from flame.orchestrator.config_record import ConfigRecorder
from flame.orchestrator.monitoring import Monitoring
from flame.orchestrator.service import Orchestrator
from flame.sfemc.build import SfemcParts, SfemcSettings, build_sfemc, no_tokens_warning
from flame.sfemc.clmc_reporter import ClmcReporter, Place
from flame.sfemc.events import InProcessBus
from flame.sfemc.nats_alerts import subscribe_alerts
from flame.sfemc.runtime import Runtime
from flame.topology.loader import load_topology
from flame.topology.model import Topology

__all__ = ["BuiltOrchestrator", "OrchestratorSettings", "build_orchestrator"]

Closer = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class OrchestratorSettings:
    topology_path: Path
    sfemc: SfemcSettings  # its state_dir also holds the token store (tokens.json)
    clmc_url: str | None  # None: no CLMC, alert rules never evaluated (see the module doc)
    token: str | None = None  # the platform token the CLMC accepts
    nats_url: str | None = None  # also take CLMC alert events from this NATS server
    metrics_interval_s: float = 2.0  # SFE and host resource samples to the CLMC (0: none)
    verify: ssl.SSLContext | bool = True  # the CLMC's certificate, when https

    @property
    def tokens_path(self) -> Path:
        return self.sfemc.state_dir / "tokens.json"


@dataclass
class BuiltOrchestrator:
    settings: OrchestratorSettings
    app: Any  # the FastAPI app; its lifespan starts the SFEMC and closes everything below
    orchestrator: Orchestrator
    runtime: Runtime
    topology: Topology
    alerts: AlertSink
    bus: InProcessBus
    closers: list[Closer] = field(default_factory=list)

    async def start(self) -> None:
        """At start (the app's lifespan): also take alert events from NATS, when configured."""
        if self.settings.nats_url is None:
            return
        events = await NatsEvents.connect(self.settings.nats_url, name="flame-sfemc")
        await subscribe_alerts(events, self.runtime.sfemc.handle_alert)
        self.closers.insert(0, events.close)

    async def close(self) -> None:
        """At the end (the app's lifespan, after the SFEMC stopped): NATS, the VIMs, registrar
        and store, then what talks to the CLMC."""
        for closer in self.closers:
            await closer()

    def describe(self) -> str:
        """What it runs, for the start-up line."""
        urls = self.settings.sfemc.pce_urls
        registrar = "PCE " + ",".join(urls) if urls else "in-process"
        return (
            f"topology '{self.topology.name}', store {self.runtime.sfemc.store.dialect}, "
            f"registrar {registrar}"
        )


def build_orchestrator(
    settings: OrchestratorSettings,
    *,
    warn: Callable[[str], None],
    parts: SfemcParts | None = None,
) -> BuiltOrchestrator:
    """The app and what it holds. `warn` hears what the operator should know at start (an
    empty token store, clusters left without a VIM); `parts` replaces the VIMs and registrar."""
    topology = load_topology(settings.topology_path)
    tokens = TokenStore(settings.tokens_path)
    warning = no_tokens_warning(tokens, "Issue one with 'flame token issue NAME --operator'.")
    if warning:
        warn(warning)
    bus = InProcessBus()
    runtime = build_sfemc(settings.sfemc, topology, bus, parts=parts)
    for reason in runtime.unserved.values():
        warn(reason)
    closers: list[Closer] = [runtime.close]
    alerts: AlertSink = InProcessAlertSink()
    recorder = None
    if settings.clmc_url:
        alerts, recorder = _to_clmc(settings, settings.clmc_url, runtime, topology, bus, closers)
    orchestrator = Orchestrator(runtime.sfemc, alerts, config=recorder)
    built = BuiltOrchestrator(
        settings=settings,
        app=None,
        orchestrator=orchestrator,
        runtime=runtime,
        topology=topology,
        alerts=alerts,
        bus=bus,
        closers=closers,
    )
    built.app = create_app(orchestrator, tokens, on_close=built.close, on_start=built.start)
    return built


def _to_clmc(
    settings: OrchestratorSettings,
    clmc_url: str,
    runtime: Runtime,
    topology: Topology,
    bus: InProcessBus,
    closers: list[Closer],
) -> tuple[AlertSink, ConfigRecorder]:
    """Alert rules, lifecycle events, configuration records and resource metrics to the CLMC."""
    monitoring = Monitoring.start(
        runtime.vims.values(),
        topology,
        settings.topology_path,
        clmc_url,
        settings.token,
        settings.sfemc.state_dir,
        metrics_interval_s=settings.metrics_interval_s,
        verify=settings.verify,
    )
    closers.append(monitoring.close)
    sink = HttpAlertSink(clmc_url, settings.token, verify=settings.verify)
    places = {
        cluster: Place(
            node.location.latitude if node.location else None,
            node.location.longitude if node.location else None,
            node.location_name,
        )
        for cluster, node in topology.clusters.items()
    }
    reporter = ClmcReporter(bus, clmc_url, settings.token, places=places, verify=settings.verify)

    async def close_sink() -> None:
        sink.close()
        reporter.close()

    closers.append(close_sink)
    return sink, monitoring.config
