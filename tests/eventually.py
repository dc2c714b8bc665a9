"""One way for tests to wait for a condition: `eventually(probe)` (and `eventually_async`).

The suite runs on shared 2-core machines where a process can stall for seconds, so waits poll a
probe until it holds, with a generous default deadline; the deadline only decides how long a
*broken* feature takes to fail, never whether a working one passes. On time-out the failure
names what was awaited and shows the probe's last value or exception, so a hang in CI reads
like an assertion, not a bare "timed out".

    job = eventually(lambda: http.get(url).json(), until=lambda j: j["state"] == "done",
                     what="the job to finish")
    eventually(lambda: proc.poll() is None and health_ok(), what="the SF to be healthy")

The probe may raise (a connection refused while a server starts, a failing `assert`): that
counts as "not yet". Raising `Fatal` ends the wait at once, which suits a probe that checks a
child process is still alive."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

# Generous: a loaded CI machine, not the feature, sets how long things take.
DEFAULT_TIMEOUT_S = 60.0
_NOTHING = object()
Described = str | Callable[[], str]  # a callable is asked at the time-out, for the state then


class Fatal(AssertionError):
    """Raise from a probe to stop waiting at once (e.g. the process being waited on died)."""


class _Attempts:
    """The state of one wait: what the probe said last, and when to give up."""

    def __init__(self, until: Callable[[Any], bool] | None, timeout: float, what: Described):
        self.until, self.timeout, self.what = until, timeout, what
        self.deadline = time.monotonic() + timeout
        self.last: Any = _NOTHING
        self.error: BaseException | None = None
        self.polls = 0

    def holds(self, value: Any) -> bool:
        self.last, self.error = value, None
        return bool(self.until(value)) if self.until is not None else bool(value)

    def failed(self, error: Exception) -> None:  # "not yet"; shown if the wait times out
        self.error = error

    def give_up_if_late(self) -> None:
        self.polls += 1
        if time.monotonic() < self.deadline:
            return
        what = self.what() if callable(self.what) else self.what
        shown = "no value" if self.last is _NOTHING else f"last value {self.last!r:.2000}"
        if self.error is not None:
            shown = f"last exception {type(self.error).__name__}: {self.error!s:.2000}"
        message = f"timed out after {self.timeout:g} s ({self.polls} polls) waiting for {what}"
        raise AssertionError(f"{message}; {shown}") from self.error


def eventually(
    probe: Callable[[], T],
    *,
    until: Callable[[T], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    every: float = 0.05,
    what: Described = "the condition",
) -> T:
    """Call `probe` until its value is truthy (or `until(value)` holds) and return that value.

    An exception from the probe or `until` means "not yet", except `Fatal`, which is re-raised
    at once."""
    attempts = _Attempts(until, timeout, what)
    while True:
        try:
            value = probe()
            if attempts.holds(value):
                return value
        except Fatal:
            raise
        except Exception as exc:
            attempts.failed(exc)
        attempts.give_up_if_late()
        time.sleep(every)


# Two signatures so that a coroutine function's result type is its awaited value (one
# `T | Awaitable[T]` leaves mypy unable to pick T for an `async def` probe).
@overload
async def eventually_async(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    every: float = 0.05,
    what: Described = "the condition",
) -> T: ...


@overload
async def eventually_async(
    probe: Callable[[], T],
    *,
    until: Callable[[T], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    every: float = 0.05,
    what: Described = "the condition",
) -> T: ...


async def eventually_async(
    probe: Callable[[], Any],
    *,
    until: Callable[[Any], bool] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    every: float = 0.05,
    what: Described = "the condition",
) -> Any:
    """`eventually` for asyncio tests: the probe may be a coroutine function; waits yield the loop."""
    attempts = _Attempts(until, timeout, what)
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if attempts.holds(value):
                return value
        except Fatal:
            raise
        except Exception as exc:
            attempts.failed(exc)
        attempts.give_up_if_late()
        await asyncio.sleep(every)
