"""Exponential back-off: the one doubling-delay rule every retry loop uses.

The n-th consecutive failure waits `first * 2**(n-1)` seconds, capped at `maximum`. No jitter:
each user retries one thing (a process, a connection, an order), so there is no herd to spread,
and a fixed schedule is what operators read in the logs ("restart 3 in 0.8s").
"""

from __future__ import annotations

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(failures: int, first: float, maximum: float) -> float:
    """The wait after the `failures`-th consecutive failure (1 for the first), capped.

    Safe for any count: the exponent stops growing long after every cap is reached, where
    the float product would otherwise overflow.
    """
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    return min(first * 2.0**exponent, maximum)


# 2.0**1000 is finite; times any `first` it is at least 1e301 * first, beyond any real cap
# (an infinite product still compares correctly in `min`).
_MAX_EXPONENT = 1000


class Backoff:
    """A retry loop's back-off state: `failure()` returns the next wait, `reset()` on success."""

    __slots__ = ("failures", "first", "maximum")

    def __init__(self, first: float, maximum: float) -> None:
        # No validation: a cap under `first` simply wins (every wait is the cap), so a
        # misconfigured retry loop still retries instead of dying at its first failure.
        self.first = first
        self.maximum = maximum
        self.failures = 0

    def failure(self) -> float:
        """Count one more consecutive failure; the wait before the next attempt."""
        self.failures += 1
        return backoff_delay(self.failures, self.first, self.maximum)

    def reset(self) -> None:
        """A success: the next failure waits `first` again."""
        self.failures = 0

    @property
    def next_delay(self) -> float:
        """The wait the next failure would get, without counting it."""
        return backoff_delay(self.failures + 1, self.first, self.maximum)
