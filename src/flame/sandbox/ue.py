"""The user-equipment load generator (`flame ue run`): real HTTP requests through an SR.

Open loop: request i starts at i / rps seconds whatever happened to the earlier ones, so a slow
service shows up as latency and requests in flight, not as a quietly lower rate (a closed loop
would hide exactly the degradation the CLMC is meant to see). Requests that would exceed
`max_in_flight` are counted as `skipped` instead of being queued.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ["LoadReport", "LoadSpec", "percentile", "run_load"]


@dataclass(frozen=True, slots=True)
class LoadSpec:
    base_url: str  # the SR, e.g. http://127.0.1.1:8080
    fqdn: str  # sent as Host: the SR routes by it
    rps: float
    duration_s: float
    paths: Sequence[str] = ("/",)
    max_in_flight: int = 512
    timeout_s: float = 10.0
    ue: str = "ue"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rps) and self.rps > 0):
            raise ValueError(f"--rps must be a positive number, got {self.rps}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise ValueError(
                f"--duration must be a positive number of seconds, got {self.duration_s}"
            )
        if not self.paths or any(not p.startswith("/") for p in self.paths):
            raise ValueError(f"every --path must start with '/', got {list(self.paths)}")


@dataclass(slots=True)
class Second:
    """What happened in one second of the run (for the CLMC and the timeline)."""

    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0


@dataclass(slots=True)
class LoadReport:
    spec: LoadSpec
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # reason -> count
    skipped: int = 0
    elapsed_s: float = 0.0
    seconds: dict[int, Second] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "fqdn": self.spec.fqdn,
            "sr": self.spec.base_url,
            "rps_asked": self.spec.rps,
            "rps_achieved": round(self.requests / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "requests": self.requests,
            "failed": self.failed,
            "skipped": self.skipped,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "latency_ms": {
                "p50": percentile(lat, 50),
                "p90": percentile(lat, 90),
                "p99": percentile(lat, 99),
                "max": round(lat[-1], 3) if lat else None,
            },
        }


def percentile(ordered: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1], 3)


Reporter = Callable[[int, Second], None]


async def run_load(
    spec: LoadSpec,
    *,
    on_second: Reporter | None = None,
    client: httpx.AsyncClient | None = None,
) -> LoadReport:
    """Drive `spec` and report; `on_second(t, stats)` gets each finished second."""
    report = LoadReport(spec)
    own = client is None
    if client is None:
        client = httpx.AsyncClient(
            base_url=spec.base_url,
            timeout=spec.timeout_s,
            limits=httpx.Limits(max_connections=spec.max_in_flight, max_keepalive_connections=64),
            trust_env=False,  # never a proxy from the environment: the SR is the proxy
        )
    in_flight: set[asyncio.Task[None]] = set()
    paths = itertools.cycle(spec.paths)
    started = time.perf_counter()
    total = max(1, round(spec.rps * spec.duration_s))
    reported = 0
    try:
        for i in range(total):
            delay = started + i / spec.rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            second = int(time.perf_counter() - started)
            while reported < second:
                _flush_second(report, reported, on_second)
                reported += 1
            if len(in_flight) >= spec.max_in_flight:
                report.skipped += 1
                continue
            task = asyncio.create_task(_one(client, spec, next(paths), report, started))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
    finally:
        for task in in_flight:
            task.cancel()
        if own:
            await client.aclose()
    report.elapsed_s = time.perf_counter() - started
    last = int(report.elapsed_s) + 1
    for t in range(reported, last):
        _flush_second(report, t, on_second)
    return report


def _http_error(response: httpx.Response) -> str:
    """'HTTP 404 unknown_fqdn': the status, with the SR's (or endpoint's) error code if any."""
    reason = ""
    if response.headers.get("content-type", "").startswith("application/json"):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            reason = " " + body["error"][:60]
    return f"HTTP {response.status_code}{reason}"


def _flush_second(report: LoadReport, t: int, on_second: Reporter | None) -> None:
    stats = report.seconds.get(t)
    if stats is not None and on_second is not None:
        on_second(t, stats)


async def _one(
    client: httpx.AsyncClient, spec: LoadSpec, path: str, report: LoadReport, started: float
) -> None:
    t0 = time.perf_counter()
    error: str | None = None
    try:
        response = await client.get(path, headers={"Host": spec.fqdn})
        await response.aread()
        report.statuses[response.status_code] += 1
        if response.status_code >= 400:  # a 404 is no success for a user either
            error = _http_error(response)
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    t1 = time.perf_counter()
    latency_ms = (t1 - t0) * 1000
    report.latencies_ms.append(latency_ms)
    # By completion time: a second is reported once it is over, so it is complete.
    second = report.seconds.setdefault(int(t1 - started), Second())
    second.requests += 1
    second.latency_sum_ms += latency_ms
    if error is not None:
        report.errors[error] += 1
        second.errors += 1
