"""Where the CLMC is built (issue 18): `build_clmc(ClmcSettings)` gives the ASGI app of
`flame serve clmc` — the InfluxDB-compatible store and API (`service.ClmcService`), its alert
service (`alerts`, with the outbound webhook policy and the SFEMC/NATS notifier) and, with PCE
URLs, the tenants' FQDN delegations (`tenancy.HttpDelegations`).

The CLI only turns options and the config file into `ClmcSettings` and runs `BuiltClmc.app`;
the app's lifespan opens the store and starts and stops everything else.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flame.clmc.alerts.notify import Notifier
from flame.clmc.alerts.outbound import OutboundPolicy
from flame.clmc.alerts.service import AlertService
from flame.clmc.service import ClmcService
from flame.clmc.tenancy import HttpDelegations
from flame.common.auth import TokenStore

__all__ = ["BuiltClmc", "ClmcSettings", "build_clmc"]


@dataclass(frozen=True)
class ClmcSettings:
    directory: Path  # the DuckDB file, the write-ahead log and the alert rules
    tokens_path: Path | None  # the token store; None: every request is the operator's
    own_url: str  # this CLMC, as its clients reach it: never a webhook destination
    sfemc_url: str  # where alert events of rules handled by `flame_sfemc` go
    token: str | None = None  # the platform token, for the SFEMC and the PCEs
    retention_interval_s: float = 60.0
    nats_url: str | None = None  # also publish alert events there
    webhook_schemes: tuple[str, ...] = ("http", "https")
    webhook_reach: str = "private"
    webhook_allow: tuple[str, ...] = ()
    webhook_deny: tuple[str, ...] = ()
    platform_urls: tuple[str, ...] = ()  # the platform's other endpoints (API, PCE, SR, ...)
    pce_urls: tuple[
        str, ...
    ] = ()  # poll FQDN delegations from these (none: tenants see no 'flame')
    verify: ssl.SSLContext | bool = True  # the SFEMC's and PCEs' certificates, when https


@dataclass
class BuiltClmc:
    settings: ClmcSettings
    app: Any  # the FastAPI app; its lifespan opens the store and starts the rest
    service: ClmcService
    alerts: AlertService
    outbound: OutboundPolicy


def build_clmc(
    settings: ClmcSettings,
    *,
    warn: Callable[[str], None],
    note: Callable[[str], None],
) -> BuiltClmc:
    """The app and what it holds. `warn` hears what the operator should be warned of (an empty
    token store, no authentication), `note` what is only worth knowing (the webhook policy)."""
    tokens = None if settings.tokens_path is None else TokenStore(settings.tokens_path)
    if tokens is not None and not tokens.list():
        warn(
            f"no API tokens in {tokens.path}; every request will get 401. "
            "Issue one with 'flame token issue NAME --operator', or use --no-auth locally."
        )
    own = (settings.own_url, settings.sfemc_url, *settings.platform_urls)
    outbound = OutboundPolicy.build(
        schemes=settings.webhook_schemes,
        reach=settings.webhook_reach,
        allow=settings.webhook_allow,
        deny=settings.webhook_deny,
        platform_urls=[u for u in own if u],
    )
    note(f"alert webhooks: {outbound.describe()}")
    notifier = Notifier(
        settings.sfemc_url, token=settings.token, outbound=outbound, verify=settings.verify
    )
    alerts = AlertService(
        settings.directory / "alert-rules.json", notifier, nats_url=settings.nats_url
    )
    settings.directory.mkdir(parents=True, exist_ok=True)
    if tokens is None:
        warn("--no-auth: the CLMC takes every request as the operator's; never on a shared network")
    delegations = None
    if settings.pce_urls:
        delegations = HttpDelegations(settings.pce_urls, settings.token, verify=settings.verify)
    service = ClmcService(
        settings.directory,
        tokens,
        retention_interval_s=settings.retention_interval_s,
        alerts=alerts,
        delegations=delegations,
    )
    return BuiltClmc(settings, service.app, service, alerts, outbound)
