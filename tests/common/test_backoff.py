"""One exponential back-off (issue 18 item 4): doubling from `first`, capped, for any count."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from flame.common.backoff import Backoff, backoff_delay

firsts = st.floats(0.001, 60.0)
caps = st.floats(0.001, 3600.0)


def test_the_schedule_operators_read_in_logs() -> None:
    assert [backoff_delay(n, 0.2, 30.0) for n in range(1, 10)] == [
        0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0,
    ]  # fmt: skip


@given(st.integers(1, 60), firsts, caps)
def test_equals_the_doubling_formula(failures: int, first: float, cap: float) -> None:
    maximum = max(first, cap)
    assert backoff_delay(failures, first, maximum) == min(first * 2 ** (failures - 1), maximum)


@given(st.integers(1, 10**6), firsts, caps)
def test_grows_monotonically_to_the_cap_and_never_overflows(
    failures: int, first: float, cap: float
) -> None:
    maximum = max(first, cap)
    delay = backoff_delay(failures, first, maximum)
    assert math.isfinite(delay)
    assert first <= delay <= maximum
    assert backoff_delay(failures + 1, first, maximum) >= delay
    assert backoff_delay(10**9, first, maximum) == maximum


def test_state_counts_failures_and_resets_on_success() -> None:
    backoff = Backoff(0.5, 4.0)
    assert backoff.next_delay == 0.5
    assert [backoff.failure() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.failures == 5
    backoff.reset()
    assert backoff.failure() == 0.5


def test_a_cap_under_the_first_wait_wins() -> None:
    assert [Backoff(2.0, 1.0).failure() for _ in range(3)] == [1.0, 1.0, 1.0]
    assert backoff_delay(5, 2.0, 1.0) == 1.0
