"""Which level of detail a client gets, from its HTTP Client Hints, the way an ABR player picks
a rendition from its throughput estimate. Pure functions; `parse_hints` never raises.

Hints read (each optional; a malformed value is ignored, as if absent):

| header | meaning (spec) | use |
|---|---|---|
| ``Downlink`` | effective bandwidth, Mbit/s (Network Information API) | the byte budget |
| ``ECT`` | ``slow-2g``, ``2g``, ``3g``, ``4g`` | the bandwidth when ``Downlink`` is absent |
| ``RTT`` | round-trip time, ms | taken off the time budget |
| ``Save-Data`` | ``on`` | the smallest level |
| ``Device-Memory`` | GiB (0.25 ... 8) | a triangle cap: `TRIANGLES_PER_GIB` per GiB |
| ``Sec-CH-Viewport-Width``, ``Sec-CH-DPR`` | CSS pixels, device pixel ratio | a triangle cap: `TRIANGLES_PER_PIXEL` per physical pixel of width |

The rule: the largest level whose bytes arrive within the time budget at 80 % of the
bandwidth and whose triangles fit under the caps; the smallest level when none does. No
bandwidth hint at all: `Policy.default_mbps` is assumed, as a player assumes a start rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ACCEPT_CH",
    "ECT_MBPS",
    "ECT_RTT_MS",
    "Candidate",
    "Choice",
    "Hints",
    "Policy",
    "choose",
    "parse_hints",
]

HINT_HEADERS = (
    "Downlink",
    "ECT",
    "RTT",
    "Save-Data",
    "Device-Memory",
    "Sec-CH-Viewport-Width",
    "Sec-CH-DPR",
)
ACCEPT_CH = ", ".join(HINT_HEADERS)
# The Network Information API's effective connection types: the upper bound of each class's
# downlink (Mbit/s) and its typical RTT (ms), per the WICG spec's table.
ECT_MBPS = {"slow-2g": 0.05, "2g": 0.07, "3g": 0.7, "4g": 10.0}
ECT_RTT_MS = {"slow-2g": 2000.0, "2g": 1400.0, "3g": 270.0, "4g": 50.0}
TRIANGLES_PER_GIB = 250_000
TRIANGLES_PER_PIXEL = 150
_MAX_MBPS = 100_000.0  # a hint above 100 Gbit/s is clamped, not trusted further


@dataclass(frozen=True, slots=True)
class Hints:
    downlink_mbps: float | None = None
    ect: str | None = None
    rtt_ms: float | None = None
    save_data: bool = False
    device_memory_gib: float | None = None
    viewport_px: float | None = None  # physical pixels: width x DPR

    @property
    def bandwidth_mbps(self) -> float | None:
        if self.downlink_mbps is not None:
            return self.downlink_mbps
        return ECT_MBPS.get(self.ect) if self.ect else None


@dataclass(frozen=True, slots=True)
class Candidate:
    lod: str
    triangles: int
    size: int


@dataclass(frozen=True, slots=True)
class Policy:
    budget_s: float = 3.0  # a model should arrive within this time
    default_mbps: float = 5.0  # assumed when the client sends no bandwidth hint
    safety: float = 0.8  # share of the hinted bandwidth counted on


@dataclass(frozen=True, slots=True)
class Choice:
    lod: str
    reason: str


def _number(value: str | None, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 32:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or number < lo:
        return None
    return min(number, hi)


def parse_hints(headers: Mapping[str, str]) -> Hints:
    """The hints of a request (`headers` with lower-case names); malformed values are ignored."""
    ect = (headers.get("ect") or "").strip().lower() or None
    width = _number(headers.get("sec-ch-viewport-width") or headers.get("viewport-width"), 1, 1e5)
    dpr = _number(headers.get("sec-ch-dpr") or headers.get("dpr"), 0.1, 16) or 1.0
    return Hints(
        downlink_mbps=_number(headers.get("downlink"), 0.0, _MAX_MBPS),
        ect=ect if ect in ECT_MBPS else None,
        rtt_ms=_number(headers.get("rtt"), 0.0, 600_000.0),
        save_data=(headers.get("save-data") or "").strip().lower() == "on",
        device_memory_gib=_number(headers.get("device-memory"), 0.0, 1024.0),
        viewport_px=None if width is None else width * dpr,
    )


def choose(hints: Hints, levels: Sequence[Candidate], policy: Policy = Policy()) -> Choice:
    """The level for these hints (see the module doc); `levels` must not be empty."""
    if not levels:
        raise ValueError("no levels to choose from")
    ordered = sorted(levels, key=lambda c: (c.size, c.triangles))
    smallest = ordered[0]
    if hints.save_data:
        return Choice(smallest.lod, "save-data")
    mbps = hints.bandwidth_mbps
    source = "downlink" if hints.downlink_mbps is not None else ("ect" if mbps else "default")
    if mbps is None:
        mbps = policy.default_mbps
    rtt_ms = hints.rtt_ms
    if rtt_ms is None and hints.ect:
        rtt_ms = ECT_RTT_MS[hints.ect]
    seconds = max(policy.budget_s - (rtt_ms or 0.0) / 1000.0, policy.budget_s / 4)
    budget = mbps * 1e6 / 8 * policy.safety * seconds
    cap = _triangle_cap(hints)
    fitting = [c for c in ordered if c.size <= budget and (cap is None or c.triangles <= cap)]
    if not fitting:
        return Choice(smallest.lod, f"{source}: no level fits, the smallest")
    best = max(fitting, key=lambda c: (c.triangles, c.size))
    capped = cap is not None and any(c.size <= budget and c.triangles > cap for c in ordered)
    return Choice(best.lod, f"{source}{' + device' if capped else ''}")


def _triangle_cap(hints: Hints) -> float | None:
    caps = []
    if hints.device_memory_gib is not None:
        caps.append(max(hints.device_memory_gib, 0.25) * TRIANGLES_PER_GIB)
    if hints.viewport_px is not None:
        caps.append(hints.viewport_px * TRIANGLES_PER_PIXEL)
    return min(caps) if caps else None
