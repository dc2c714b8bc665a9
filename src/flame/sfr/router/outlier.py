"""Outlier detection: endpoints that just failed are ejected for a growing back-off.

A failure (connect error, reset, time-out, a 5xx we retried elsewhere) ejects the endpoint for
its current back-off, starting at `base` seconds and doubling on each ejection up to
`maximum`; a success resets it. Failures reported while the endpoint is already ejected (the
other requests that were in flight when it died) do not extend or escalate the ejection:
only the first request after the ejection ends probes it again. Pure apart from the
injectable clock, so it is tested without sockets or sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from flame.common.backoff import backoff_delay

__all__ = ["OutlierDetector"]


class OutlierDetector:
    """Per-endpoint (by sfe id) ejection state of one worker."""

    __slots__ = ("_clock", "_failures", "_until", "base", "ejections", "maximum")

    def __init__(
        self,
        base: float = 1.0,
        maximum: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.maximum = maximum
        self._clock = clock
        self._until: dict[str, float] = {}  # sfe -> end of its ejection
        self._failures: dict[str, int] = {}  # sfe -> ejections since its last success
        self.ejections = 0

    @property
    def any_ejected(self) -> bool:
        return bool(self._until)

    def is_ejected(self, sfe: str) -> bool:
        if not self._until:  # the common case: nothing ejected, no clock read
            return False
        until = self._until.get(sfe)
        if until is None:
            return False
        if self._clock() < until:
            return True
        # Ejection over: the next request probes the endpoint; the back-off stays until a
        # success so that another failure ejects it for longer.
        del self._until[sfe]
        return False

    def failure(self, sfe: str) -> float | None:
        """Record a failure; the length of the new ejection, or None if already ejected."""
        now = self._clock()
        until = self._until.get(sfe)
        if until is not None and now < until:
            return None
        failures = self._failures.get(sfe, 0) + 1
        self._failures[sfe] = failures
        backoff = backoff_delay(failures, self.base, self.maximum)
        self._until[sfe] = now + backoff
        self.ejections += 1
        return backoff

    def success(self, sfe: str) -> None:
        """The endpoint answered: forget its past failures."""
        if self._failures:
            self._failures.pop(sfe, None)
        if self._until:
            self._until.pop(sfe, None)

    def retry_after(self, sfes: Iterable[str], default: float) -> int:
        """Whole seconds until the first of these endpoints comes back (for `Retry-After`)."""
        now = self._clock()
        remaining = [u - now for s in sfes if (u := self._until.get(s)) is not None and u > now]
        return max(1, math.ceil(min(remaining) if remaining else default))

    def ejected(self) -> dict[str, float]:
        """sfe -> seconds of ejection left, for the status endpoint."""
        now = self._clock()
        return {s: round(u - now, 3) for s, u in self._until.items() if u > now}

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of endpoints no longer in the table."""
        kept = set(keep)
        for sfe in [s for s in self._until if s not in kept]:
            del self._until[sfe]
        for sfe in [s for s in self._failures if s not in kept]:
            del self._failures[sfe]
