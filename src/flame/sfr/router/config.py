"""Configuration of one service router: identity, listener, control plane, limits, time-outs.

Values are frozen dataclasses so that a worker process receives exactly what the parent was
given (`to_dict` / `from_dict` carry them across the process boundary as JSON-able data).
"""

from __future__ import annotations

import math
import resource
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from flame.common.errors import ConfigError

__all__ = ["Limits", "RouterConfig", "Timeouts", "client_connection_cap"]

KIB = 1024
MIB = 1024 * KIB

# File descriptors a worker keeps for itself besides client and upstream connections: its
# listening and sibling sockets, the PCE long-poll and CLMC clients, the table file, the
# event loop's own, logging. The automatic client connection cap leaves them free.
FD_RESERVE = 128
AUTO_CAP_MAX = 32768  # the automatic cap never goes above this many clients per worker
# Limits that may be 0 (meaning: automatic, or no limit).
_ZERO_MEANS_AUTO = frozenset({"max_client_connections", "max_connections_per_ip"})


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes the router enforces or keeps to."""

    max_head_bytes: int = 16 * KIB  # request line + headers; above -> 431
    max_body_bytes: int = 1024 * MIB  # request body; above -> 413
    retry_body_bytes: int = 64 * KIB  # a body up to this size is kept to retry elsewhere
    write_high_water: int = 64 * KIB  # transport buffer above which the other side pauses
    upstream_max_connections: int = 1024  # per endpoint and worker (busy + idle)
    upstream_max_idle: int = 256  # idle keep-alive connections kept per endpoint and worker
    coalesce_max_bytes: int = 64 * MIB  # a shared response stops taking joiners above this
    coalesce_backlog_bytes: int = 4 * MIB  # then the slowest joiner may lag this much
    coalesce_vary_resources: int = 4096  # resources whose learnt Vary a worker keeps (LRU)
    # Client connections open at once per worker; more are answered 503 and closed at once.
    # 0: derived from the file descriptor limit (`client_connection_cap`).
    max_client_connections: int = 0
    max_connections_per_ip: int = 0  # per client address and worker; 0: no such limit
    max_websockets: int = 1024  # WebSocket tunnels open at once per worker; more get 503

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name in _ZERO_MEANS_AUTO else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                kind = "a non-negative" if low == 0 else "a positive"
                raise ConfigError(
                    f"router limit {f.name} must be {kind} integer, got {value!r}",
                    key=f"limits.{f.name}",
                )


def client_connection_cap(limits: Limits) -> int:
    """The most client connections one worker keeps open at once.

    Configured, or else half of what the process's file descriptor limit leaves after
    `FD_RESERVE`: each client connection may hold one upstream connection besides its own
    (and idle pooled ones stay from busier moments), so clients alone never exhaust the
    descriptors the table source, the CLMC reporter and new upstream connections need.
    """
    if limits.max_client_connections:
        return limits.max_client_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return AUTO_CAP_MAX
    return max(16, min(AUTO_CAP_MAX, (soft - FD_RESERVE) // 2))


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds the router waits for each thing before giving up on it."""

    header: float = 10.0  # from the first byte of a request to the end of its head -> 408
    keepalive: float = 75.0  # an idle client connection is closed after this
    upstream_connect: float = 3.0
    # A connect the network refused (no route: ENETUNREACH, EHOSTUNREACH) is tried once more
    # after this, instead of ejecting the endpoint (routes converge in milliseconds).
    network_retry: float = 0.05
    upstream_response: float = 60.0  # to the response head, then between body bytes -> 504
    upstream_idle: float = 30.0  # an idle pooled upstream connection is closed after this
    coalesce_window: float = 10.0  # a shared response takes joiners this long after it started
    shutdown_grace: float = 10.0  # in-flight requests may finish this long after SIGTERM
    retry_after: float = 5.0  # `Retry-After` of a 503 when no ejection says better
    websocket_idle: float = 300.0  # a WebSocket with no byte either way is closed after this

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(
                    f"router time-out {f.name} must be a positive number of seconds, got {value!r}",
                    key=f"timeouts.{f.name}",
                )


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """One SR: `serve(config)` runs `workers` processes sharing `host:port` (SFR-1)."""

    sr_id: str
    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (shared by all workers)
    workers: int | None = None  # None: os.cpu_count()
    pce_urls: tuple[str, ...] = ()  # tried in order; empty: the table comes from table_file only
    token: str | None = field(default=None, repr=False)  # bearer token towards the PCE
    clmc_url: str | None = None  # base URL; measurements go to POST {clmc_url}/write?db=flame
    clmc_token: str | None = field(default=None, repr=False)
    clmc_db: str = "flame"
    metrics_interval: float = 10.0
    table_file: str | None = None  # last table, loaded at start and rewritten on each change
    poll_wait: float = 25.0  # seconds a PCE long-poll is held
    coalescing: bool = True  # FLIPS coincidental multicast of identical concurrent GETs
    emulate_latency: bool = False  # delay each attempt by its route's round-trip path latency
    # Egress hop (FLIPS): a request for an endpoint behind another SR goes to that SR (the
    # route's egress_address, this port), which hands it to the endpoint; off: straight there.
    egress_hop: bool = False
    egress_port: int | None = None  # None: the port this SR listens on (every SR on its address)
    backlog: int = 2048  # listen backlog per worker
    # TLS (SFR-19, issue 15): a second listener on `tls_port` (0: a free one) when set; the
    # plain one on `port` stays. Certificates per FQDN from the PCE (`tls_from_pce`, with the
    # router token) and/or files (`tls_certs`: (chain, key) paths); `tls_redirect`: FQDNs of
    # `tls_certs` whose plain HTTP requests are redirected to https (the PCE's carry their own).
    tls_port: int | None = None
    tls_certs: tuple[tuple[str, str], ...] = ()
    tls_redirect: tuple[str, ...] = ()
    tls_from_pce: bool = True
    # 80 random bytes (hex) every worker uses as TLS session ticket keys; set by `serve`.
    tls_ticket_key: str | None = field(default=None, repr=False)
    # Hop-by-hop TLS (docs/tls.md): take the SR's platform identity from the PCE's bundle and
    # reach endpoints registered with `tls` over mutual TLS; `hop_tls_port`: also listen for
    # egress hops over mutual TLS there (every SR on the same port, like `egress_port`).
    hop_tls: bool = False
    hop_tls_port: int | None = None
    # A fixed identity from files (chain, key, CA) instead of the PCE's bundle (mode
    # "endpoints"): an SR without a PCE, or a benchmark.
    hop_tls_files: tuple[str, str, str] | None = None
    ca_file: str | None = None  # CA to verify the PCE and CLMC with over https (None: system's)
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if not isinstance(self.sr_id, str) or not self.sr_id.strip():
            raise ConfigError("the SR needs an id (sr_id), e.g. 'sr-bristol-1'", key="sr_id")
        if any(c.isspace() or c == "," for c in self.sr_id):
            raise ConfigError(
                f"SR id {self.sr_id!r} may not contain spaces or commas: it is sent in `Via`",
                key="sr_id",
            )
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port!r}", key="port")
        if self.tls_port is not None and (
            not isinstance(self.tls_port, int)
            or isinstance(self.tls_port, bool)
            or not 0 <= self.tls_port <= 65535
        ):
            raise ConfigError(
                f"tls_port must be 0..65535 (or None for no TLS listener), got {self.tls_port!r}",
                key="tls_port",
            )
        if self.tls_port is None and self.tls_certs:
            raise ConfigError(
                "TLS certificates given but no TLS listener: set tls_port (--tls-port)",
                key="tls_port",
            )
        if self.hop_tls_port is not None and (
            not isinstance(self.hop_tls_port, int)
            or isinstance(self.hop_tls_port, bool)
            or not 1 <= self.hop_tls_port <= 65535
        ):
            raise ConfigError(
                f"hop_tls_port must be 1..65535 (or None), got {self.hop_tls_port!r}",
                key="hop_tls_port",
            )
        if self.hop_tls_files is not None and (not self.hop_tls or len(self.hop_tls_files) != 3):
            raise ConfigError(
                "hop_tls_files is (chain, key, CA) files and needs hop_tls", key="hop_tls_files"
            )
        if self.hop_tls_port is not None and not self.hop_tls:
            raise ConfigError("hop_tls_port needs hop_tls", key="hop_tls_port")
        if self.egress_port is not None and (
            not isinstance(self.egress_port, int)
            or isinstance(self.egress_port, bool)
            or not 1 <= self.egress_port <= 65535
        ):
            raise ConfigError(
                f"egress_port must be 1..65535 (or None for this SR's port), got {self.egress_port!r}",
                key="egress_port",
            )
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(
                f"workers must be a positive integer (or None for one per CPU), got {self.workers!r}",
                key="workers",
            )
        for url in self.pce_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"PCE URL {url!r} must start with http:// or https://", key="pce_urls"
                )
        if self.clmc_url is not None and not self.clmc_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"CLMC URL {self.clmc_url!r} must start with http:// or https://", key="clmc_url"
            )
        for name in ("metrics_interval", "poll_wait"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}", key=name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pce_urls"] = list(self.pce_urls)
        data["tls_certs"] = [list(pair) for pair in self.tls_certs]
        data["tls_redirect"] = list(self.tls_redirect)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RouterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown router settings {unknown}; known: {sorted(known)}", key=unknown[0]
            )
        values = dict(data)
        values["pce_urls"] = tuple(values.get("pce_urls") or ())
        values["tls_certs"] = tuple(
            (str(pair[0]), str(pair[1])) for pair in values.get("tls_certs") or ()
        )
        values["tls_redirect"] = tuple(values.get("tls_redirect") or ())
        if values.get("hop_tls_files") is not None:
            values["hop_tls_files"] = tuple(str(f) for f in values["hop_tls_files"])
        for name, kind in (("limits", Limits), ("timeouts", Timeouts)):
            given = dict(values.get(name) or {})
            allowed = {f.name for f in fields(kind)}
            if set(given) - allowed:
                raise ConfigError(
                    f"unknown router {name} {sorted(set(given) - allowed)}; known: {sorted(allowed)}",
                    key=name,
                )
            values[name] = kind(**given)
        return cls(**values)
