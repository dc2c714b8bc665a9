"""The endpoint lifecycle state machine (SFEMC-5).

::

    unplaced -> placing -> placed -> booting -> booted -> connecting -> connected
        ^                    |  ^                  |  ^                     |
        +---- removing <-----+  +---- stopping <---+  +--- disconnecting <--+

    any state but unplaced -> failed (with a reason): an operation failed, or the VIM lost
    what was placed or running; failed -> removing (withdraw, clean up, then start again)

Stable states are what a template asks for (`EndpointState`); transient states say an operation
is under way, so a restarted reconciler knows what to finish. Every transition is persisted first
(compare-and-set on the previous state, in the same transaction as the history row), then
published as a `ConfigEvent`: a crash in between loses an event, never a state.

Exceptions: `IllegalTransition` (a bug in the caller: the machine forbids the move) and
`StaleState` (another worker moved the endpoint first); both are `FlameError`s.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import ClassVar, Protocol

from flame.common.errors import FlameError
from flame.sfemc.events import CONFIG_TOPIC, ConfigEvent, EventBus

__all__ = [
    "STABLE",
    "TRANSITIONS",
    "IllegalTransition",
    "Lifecycle",
    "LifecycleState",
    "StaleState",
    "TransitionLog",
    "is_legal",
    "rank",
]


class LifecycleState(enum.StrEnum):
    UNPLACED = "unplaced"
    PLACING = "placing"
    PLACED = "placed"
    BOOTING = "booting"
    BOOTED = "booted"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTING = "disconnecting"
    STOPPING = "stopping"
    REMOVING = "removing"
    FAILED = "failed"


S = LifecycleState
TRANSITIONS: dict[LifecycleState, frozenset[LifecycleState]] = {
    S.UNPLACED: frozenset({S.PLACING}),
    S.PLACING: frozenset({S.PLACED, S.FAILED}),
    S.PLACED: frozenset({S.BOOTING, S.REMOVING, S.FAILED}),
    S.BOOTING: frozenset({S.BOOTED, S.FAILED}),
    S.BOOTED: frozenset({S.CONNECTING, S.STOPPING, S.FAILED}),
    S.CONNECTING: frozenset({S.CONNECTED, S.FAILED}),
    S.CONNECTED: frozenset({S.DISCONNECTING, S.FAILED}),
    S.DISCONNECTING: frozenset({S.BOOTED, S.FAILED}),
    S.STOPPING: frozenset({S.PLACED, S.FAILED}),
    S.REMOVING: frozenset({S.UNPLACED, S.FAILED}),
    S.FAILED: frozenset({S.REMOVING}),
}
# Stable states by how far along they are; the reconciler moves one step at a time.
STABLE: tuple[LifecycleState, ...] = (S.UNPLACED, S.PLACED, S.BOOTED, S.CONNECTED)


def rank(state: LifecycleState) -> int:
    return STABLE.index(state)


def is_legal(src: LifecycleState, dst: LifecycleState) -> bool:
    return dst in TRANSITIONS[src]


class IllegalTransition(FlameError):
    """The state machine forbids this move: a bug in the caller, not the user's mistake."""

    code: ClassVar[str] = "illegal_transition"

    def __init__(self, sfe: str, src: LifecycleState, dst: LifecycleState) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[src])) or "nothing"
        super().__init__(
            f"endpoint '{sfe}': no transition {src} -> {dst}; from {src} only {allowed}",
            sfe=sfe,
            src=src.value,
            dst=dst.value,
        )


class StaleState(FlameError):
    """The endpoint was not in the state the caller believed (moved concurrently, or gone)."""

    code: ClassVar[str] = "stale_state"


class TransitionLog(Protocol):
    """Where transitions are persisted (`flame.sfemc.store.SfemcStore` implements it)."""

    def record_transition(
        self, sfe: str, src: LifecycleState, dst: LifecycleState, reason: str | None, now: float
    ) -> ConfigEvent:
        """Atomically move `sfe` from `src` to `dst` and append the history row; StaleState if
        `sfe` is not in `src`."""
        ...


class Lifecycle:
    """Checks, persists and publishes transitions. The only way an endpoint's state changes."""

    def __init__(
        self, log: TransitionLog, bus: EventBus, clock: Callable[[], float] = time.time
    ) -> None:
        self._log = log
        self._bus = bus
        self._clock = clock

    def transition(
        self, sfe: str, src: LifecycleState, dst: LifecycleState, reason: str | None = None
    ) -> ConfigEvent:
        if not is_legal(src, dst):
            raise IllegalTransition(sfe, src, dst)
        if dst is S.FAILED and not reason:
            raise FlameError(f"endpoint '{sfe}': a move to failed needs a reason", sfe=sfe)
        event = self._log.record_transition(sfe, src, dst, reason, self._clock())
        self._bus.publish(CONFIG_TOPIC, event)
        return event
