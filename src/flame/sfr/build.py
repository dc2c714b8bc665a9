"""Where the PCE is built (issue 18): typed settings in, the app and what it holds out.

`build_pce(PceSettings)` assembles the PCE of `flame serve pce`: the topology, the token store,
the state store (SQLite or PostgreSQL, with the standby lease), the content certificates
(platform CA, optional ACME, hop-by-hop identities) beside it, the `PceService` and its HTTP
API. The CLI parses options into the settings, runs `BuiltPce.app` and closes what comes back;
nothing here reads options, the config file or the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flame.common.auth import TokenStore
from flame.sfr.store import PgStore, Store, open_pce_store
from flame.topology.loader import load_topology
from flame.topology.model import Topology

if TYPE_CHECKING:
    from flame.sfr.certs import CertManager
    from flame.sfr.service import PceService

__all__ = ["BuiltPce", "PceSettings", "build_pce"]

HOP_TLS_MODES = ("off", "endpoints", "all")


@dataclass(frozen=True)
class PceSettings:
    """What the PCE is built from. `db` defaults to <state_dir>/pce.sqlite3."""

    state_dir: Path  # also holds tokens.json, the platform CA (ca/) and certs.key
    topology_path: Path
    db: str | Path | None = None  # a SQLite path or postgresql://...
    name: str | None = None  # this PCE's name in the lease (None: a random one)
    lease_ttl: float = 10.0
    certs: bool = True  # manage content certificates (SFR-22/23)
    cert_days: float = 30.0
    acme_directory: str | None = None
    acme_email: str | None = None
    acme_ca_file: Path | None = None
    hop_tls: str = "off"  # one of HOP_TLS_MODES

    def __post_init__(self) -> None:
        # The CLI says these as usage errors first; a programmatic caller gets the same rules.
        if self.acme_directory and not self.certs:
            raise ValueError("an ACME directory needs certificates")
        if self.hop_tls not in HOP_TLS_MODES:
            raise ValueError(f"hop_tls must be one of {HOP_TLS_MODES}, got {self.hop_tls!r}")
        if self.hop_tls != "off" and not self.certs:
            raise ValueError("hop-by-hop TLS needs the platform CA (certificates)")

    @property
    def database(self) -> str | Path:
        return self.db or self.state_dir / "pce.sqlite3"


@dataclass
class BuiltPce:
    settings: PceSettings
    app: Any  # the FastAPI app
    service: PceService
    store: Store
    certs: CertManager | None
    topology: Topology

    def describe(self) -> str:
        """What it runs, for the start-up line."""
        return (
            f"topology '{self.topology.name}', database {self.store.path}, "
            f"lease {self.settings.lease_ttl:g}s"
            + (f"; platform CA {self.certs.ca.cert_path}" if self.certs else "; no certificates")
        )

    def close(self) -> None:
        """After the server stopped: the ACME worker, the certificate store, the state store."""
        _close(self.store, self.certs)


def build_pce(settings: PceSettings, *, warn: Callable[[str], None]) -> BuiltPce:
    """The PCE's app and what it holds; `warn` hears what the operator should know at start
    (an empty token store). Close it with `BuiltPce.close` after the app stopped."""
    from flame.sfr.api import create_app  # noqa: PLC0415 - heavy (FastAPI)
    from flame.sfr.service import PceService  # noqa: PLC0415 - heavy (numpy)

    topology = load_topology(settings.topology_path)
    tokens = TokenStore(settings.state_dir / "tokens.json")
    if not tokens.list():
        warn(
            f"warning: no API tokens in {tokens.path}; every request will get 401. "
            "Issue one with 'flame token issue NAME --operator'."
        )
    store = open_pce_store(settings.database, settings.name, lease_ttl=settings.lease_ttl)
    certs = None
    try:
        if settings.certs:
            certs = _open_certs(settings, store)
        service = PceService(topology, store, certs=certs)
        app = create_app(service, tokens)
    except BaseException:
        _close(store, certs)
        raise
    return BuiltPce(settings, app, service, store, certs, topology)


def _open_certs(settings: PceSettings, store: Store) -> CertManager:
    """Content certificates beside the state database (<db>.certs.sqlite3; with PostgreSQL,
    <state_dir>/pce.certs.sqlite3), keys sealed with <state_dir>/certs.key."""
    from flame.sfr.acme import AcmeConfig  # noqa: PLC0415 - cryptography
    from flame.sfr.certs import open_cert_manager  # noqa: PLC0415 - cryptography
    from flame.sfr.hop_identity import HopTls  # noqa: PLC0415 - cryptography

    state_dir = settings.state_dir
    return open_cert_manager(
        state_dir,
        db=(
            state_dir / "pce.certs.sqlite3"
            if isinstance(store, PgStore)
            else store.path.with_suffix(".certs.sqlite3")
        ),
        lifetime_days=settings.cert_days,
        acme=(
            AcmeConfig(
                settings.acme_directory, email=settings.acme_email, ca_file=settings.acme_ca_file
            )
            if settings.acme_directory
            else None
        ),
        hop_tls=HopTls(settings.hop_tls),
    )


def _close(store: Store, certs: CertManager | None) -> None:
    try:
        if certs is not None:
            if certs.acme is not None:
                certs.acme.stop()
            certs.store.close()
    finally:
        store.close()
