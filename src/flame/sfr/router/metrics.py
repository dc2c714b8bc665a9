"""Service routing measurements (CLMC-8): counters per FQDN and per endpoint, as line protocol.

Counters accumulate per flush interval; `collect()` turns the interval into InfluxDB line
protocol and folds it into the running totals shown by the status endpoint:

    sr_requests,sr=<sr>,fqdn=<fqdn>,sfe=<sfe>,cluster=<cluster>,worker=<n> requests=12i,...
    sr_fqdn,sr=<sr>,fqdn=<fqdn>,worker=<n> requests=40i,...,switches=1i

Fields (all for the interval): requests (answered to clients), errors (answered 5xx or cut),
rt_sum_ms / rt_count / rt_max_ms (head received to last byte sent) and response_time
(their mean in ms, when rt_count > 0), path_latency (the mean one-way network latency, in ms,
from this SR to the endpoints that served the interval's requests, from the forwarding table:
the user's distance to the content, which no amount of load or coalescing changes), bytes_in (request
bodies), bytes_out (responses to clients), coalesced (requests served by another request's
upstream fetch), fetches (upstream attempts), ejections, and per FQDN switches (table
changes that moved its best endpoints). The `worker` tag keeps the points of the processes of
one SR apart (InfluxDB would otherwise overwrite points of the same series and time).
Requests for FQDNs not in the table count under fqdn=`_unknown`, so that random Host headers
cannot grow the series without bound. Updating a counter is a few attribute additions; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from flame.common.lineproto import point
from flame.sfr.models import Endpoint

__all__ = ["UNKNOWN_FQDN", "Counters", "RouterMetrics"]

UNKNOWN_FQDN: Final = "_unknown"

_INT_FIELDS: Final = (
    "requests",
    "errors",
    "rt_count",
    "bytes_in",
    "bytes_out",
    "coalesced",
    "fetches",
    "ejections",
    "switches",
)


class Counters:
    """Counts of one FQDN or one endpoint."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "coalesced",
        "ejections",
        "errors",
        "fetches",
        "path_count",
        "path_sum_ms",
        "requests",
        "rt_count",
        "rt_max_ms",
        "rt_sum_ms",
        "switches",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.rt_sum_ms = 0.0
        self.rt_count = 0
        self.rt_max_ms = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.coalesced = 0
        self.fetches = 0
        self.ejections = 0
        self.switches = 0
        self.path_sum_ms = 0.0
        self.path_count = 0

    def active(self) -> bool:
        return bool(self.requests or self.fetches or self.errors or self.ejections or self.switches)

    def add(self, other: Counters) -> None:
        for name in _INT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.rt_sum_ms += other.rt_sum_ms
        self.rt_max_ms = max(self.rt_max_ms, other.rt_max_ms)
        self.path_sum_ms += other.path_sum_ms
        self.path_count += other.path_count

    def fields(self, *, switches: bool) -> dict[str, int | float]:
        result: dict[str, int | float] = {
            name: getattr(self, name) for name in _INT_FIELDS if switches or name != "switches"
        }
        result["rt_sum_ms"] = round(self.rt_sum_ms, 3)
        result["rt_max_ms"] = round(self.rt_max_ms, 3)
        if self.rt_count:
            # The interval's mean, so that an alert rule is a plain mean(response_time).
            result["response_time"] = round(self.rt_sum_ms / self.rt_count, 3)
        if self.path_count:  # only per FQDN, and only for requests an endpoint served
            result["path_latency"] = round(self.path_sum_ms / self.path_count, 3)
            result["path_count"] = self.path_count
        return result


class RouterMetrics:
    """The counters of one worker."""

    def __init__(self, sr_id: str, worker: int = 0) -> None:
        self.sr_id = sr_id
        self.worker = worker
        self._fqdns: dict[str, Counters] = {}
        self._endpoints: dict[tuple[str, str], tuple[Endpoint, Counters]] = {}
        self._fqdn_totals: dict[str, Counters] = {}
        self._endpoint_totals: dict[tuple[str, str], tuple[Endpoint, Counters]] = {}
        # (fqdn, sfe) -> one-way path latency of the route, from the current table
        self._path_ms: dict[tuple[str, str], float] = {}
        # The (FQDN, endpoint) pair counted last and its counters: most requests in a row
        # are for the same pair, which then costs no key tuples and no dict lookups.
        self._last_fqdn: str | None = None
        self._last_endpoint: Endpoint | None = None
        self._last_counters = Counters()  # the FQDN's (placeholders until a pair is chosen)
        self._last_endpoint_counters = Counters()
        self._last_path: float | None = None
        self.batches_sent = 0
        self.batches_dropped = 0
        self.points_dropped = 0

    # -- recording (hot path) -------------------------------------------------------------------

    def fqdn(self, fqdn: str) -> Counters:
        counters = self._fqdns.get(fqdn)
        if counters is None:
            counters = self._fqdns[fqdn] = Counters()
        return counters

    def endpoint(self, fqdn: str, endpoint: Endpoint) -> Counters:
        entry = self._endpoints.get((fqdn, endpoint.sfe))
        if entry is None:
            entry = self._endpoints[(fqdn, endpoint.sfe)] = (endpoint, Counters())
        return entry[1]

    def set_paths(self, path_ms: dict[tuple[str, str], float]) -> None:
        """The path latency of each (FQDN, endpoint) route of the table now in use."""
        self._path_ms = path_ms
        self._last_fqdn = None

    def _select(self, fqdn: str, endpoint: Endpoint) -> None:
        """Point the `_last_*` fields at the counters of (fqdn, endpoint)."""
        if fqdn is self._last_fqdn and endpoint is self._last_endpoint:
            return
        self._last_endpoint_counters = self.endpoint(fqdn, endpoint)
        self._last_counters = self.fqdn(fqdn)
        self._last_path = self._path_ms.get((fqdn, endpoint.sfe))
        self._last_fqdn = fqdn
        self._last_endpoint = endpoint

    def request_done(
        self,
        fqdn: str,
        endpoint: Endpoint | None,
        *,
        status: int,
        complete: bool,
        rt_ms: float,
        bytes_in: int,
        bytes_out: int,
        coalesced: bool,
    ) -> None:
        error = status >= 500 or not complete
        if endpoint is None:
            c = self._fqdns.get(fqdn) or self.fqdn(fqdn)
            _count(c, error, rt_ms, bytes_in, bytes_out, coalesced)
            return
        self._select(fqdn, endpoint)
        c = self._last_counters
        _count(c, error, rt_ms, bytes_in, bytes_out, coalesced)
        path = self._last_path
        if path is not None:
            c.path_sum_ms += path
            c.path_count += 1
        _count(self._last_endpoint_counters, error, rt_ms, bytes_in, bytes_out, coalesced)

    def fetch(self, fqdn: str, endpoint: Endpoint) -> None:
        self._select(fqdn, endpoint)
        self._last_endpoint_counters.fetches += 1
        self._last_counters.fetches += 1

    def upstream_error(self, fqdn: str, endpoint: Endpoint) -> None:
        self.endpoint(fqdn, endpoint).errors += 1

    def ejection(self, fqdn: str, endpoint: Endpoint) -> None:
        self.endpoint(fqdn, endpoint).ejections += 1
        self.fqdn(fqdn).ejections += 1

    def switch(self, fqdns: Iterable[str]) -> None:
        for fqdn in fqdns:
            self.fqdn(fqdn).switches += 1

    # -- reporting ------------------------------------------------------------------------------

    def collect(self, timestamp_ns: int) -> list[str]:
        """The interval's points as line protocol; the interval starts again at zero."""
        fqdns, self._fqdns = self._fqdns, {}
        endpoints, self._endpoints = self._endpoints, {}
        self._last_fqdn = None  # its counters belong to the interval just ended
        worker = str(self.worker)
        lines: list[str] = []
        for (fqdn, _sfe), (endpoint, counters) in sorted(endpoints.items()):
            if not counters.active():
                continue
            tags = {
                "sr": self.sr_id,
                "fqdn": fqdn,
                "sfe": endpoint.sfe,
                "cluster": endpoint.cluster,
                "worker": worker,
            }
            lines.append(point("sr_requests", tags, counters.fields(switches=False), timestamp_ns))
            self._endpoint_totals.setdefault((fqdn, endpoint.sfe), (endpoint, Counters()))[1].add(
                counters
            )
        for fqdn, counters in sorted(fqdns.items()):
            if not counters.active():
                continue
            tags = {"sr": self.sr_id, "fqdn": fqdn, "worker": worker}
            lines.append(point("sr_fqdn", tags, counters.fields(switches=True), timestamp_ns))
            self._fqdn_totals.setdefault(fqdn, Counters()).add(counters)
        return lines

    def snapshot(self) -> dict[str, Any]:
        """Totals since the worker started (flushed intervals + the current one)."""
        fqdns: dict[str, Counters] = {}
        for source in (self._fqdn_totals, self._fqdns):
            for fqdn, counters in source.items():
                fqdns.setdefault(fqdn, Counters()).add(counters)
        endpoints: dict[tuple[str, str], Counters] = {}
        for esource in (self._endpoint_totals, self._endpoints):
            for key, (_, counters) in esource.items():
                endpoints.setdefault(key, Counters()).add(counters)
        return {
            "fqdns": {f: c.fields(switches=True) for f, c in sorted(fqdns.items())},
            "endpoints": {
                f"{fqdn}/{sfe}": c.fields(switches=False)
                for (fqdn, sfe), c in sorted(endpoints.items())
            },
            "clmc": {
                "batches_sent": self.batches_sent,
                "batches_dropped": self.batches_dropped,
                "points_dropped": self.points_dropped,
            },
        }


def _count(
    c: Counters, error: bool, rt_ms: float, bytes_in: int, bytes_out: int, coalesced: bool
) -> None:
    c.requests += 1
    if error:
        c.errors += 1
    c.rt_sum_ms += rt_ms
    c.rt_count += 1
    c.rt_max_ms = max(c.rt_max_ms, rt_ms)
    c.bytes_in += bytes_in
    c.bytes_out += bytes_out
    if coalesced:
        c.coalesced += 1
