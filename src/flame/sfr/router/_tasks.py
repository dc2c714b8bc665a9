"""The one place where the data plane starts asyncio tasks, and keeps the long-lived ones alive.

A task nobody references can be garbage-collected while it runs, and a task whose exception
nobody retrieves fails silently. `TaskSet.spawn` names every task, keeps a reference until it
ends and logs its failure, so no task is ever forgotten (a test checks that no other module of
the package calls `create_task`). Short tasks (a new upstream connection) are spawned.

A task meant to live as long as its worker (the table source, the CLMC reporter, the time-out
sweeper) is started with `TaskSet.supervise`: when it raises, it is logged and started again
after a back-off (0.5 s doubling to 30 s; back to 0.5 s once a run lasted a minute), for as
long as the worker lives. Its state (`Supervised`: running, restarting, done; failures, the
last error and when) is shown by the SR's status endpoint, and an `essential` one that is
failing makes /.flame/health answer 503 (status.py): a worker whose table source keeps
failing routes on a stale table, and says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from flame.common.backoff import Backoff

__all__ = ["Supervised", "TaskSet"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RESTART_INITIAL = 0.5  # seconds before the first restart ...
RESTART_MAX = 30.0  # ... doubling up to this while the task keeps failing
STABLE_AFTER = 60.0  # a run this long resets the back-off


class Supervised:
    """A long-lived task and what happened to it (for the status endpoint)."""

    __slots__ = (
        "essential",
        "factory",
        "failures",
        "last_error",
        "last_failure",
        "name",
        "restart_at",
        "started",
        "state",
        "task",
    )

    def __init__(
        self, name: str, factory: Callable[[], Coroutine[Any, Any, None]], *, essential: bool
    ) -> None:
        self.name = name
        self.factory = factory
        self.essential = essential  # failing: the worker is not healthy
        self.state = "starting"  # running | restarting (waiting for its back-off) | done
        self.failures = 0
        self.started = 0  # runs begun (restarts = started - 1)
        self.last_error: str | None = None
        self.last_failure: float | None = None  # wall clock
        self.restart_at: float | None = None  # wall clock, while restarting
        self.task: asyncio.Task[None] | None = None

    @property
    def failing(self) -> bool:
        return self.state == "restarting"

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "essential": self.essential,
            "restarts": max(0, self.started - 1),
            "failures": self.failures,
            "last_error": self.last_error,
            "last_failure": self.last_failure,
            "restart_in": (
                None
                if self.restart_at is None
                else round(max(0.0, self.restart_at - time.time()), 3)
            ),
        }


class TaskSet:
    """Named, referenced background tasks of one owner (a worker, a connection pool, ...)."""

    __slots__ = (
        "_loop",
        "_owner",
        "_tasks",
        "restart_initial",
        "restart_max",
        "stable_after",
        "supervised",
    )

    def __init__(
        self,
        owner: str,
        *,
        restart_initial: float = RESTART_INITIAL,
        restart_max: float = RESTART_MAX,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cached: asyncio.get_running_loop() costs a getpid() system call per call.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.restart_initial = restart_initial
        self.restart_max = restart_max
        self.stable_after = stable_after
        self.supervised: dict[str, Supervised] = {}

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start `coro` as a task called `name`; its failure is logged, never lost."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def supervise(
        self,
        factory: Callable[[], Coroutine[Any, Any, None]],
        *,
        name: str,
        essential: bool = True,
    ) -> Supervised:
        """Run `factory()` as task `name` for the owner's life: restarted with a back-off
        whenever it raises; a normal return ends it (state `done`)."""
        sup = self.supervised[name] = Supervised(name, factory, essential=essential)
        sup.task = self.spawn(self._run(sup), name=name)
        return sup

    async def _run(self, sup: Supervised) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.restart_initial, self.restart_max)
        while True:
            sup.state = "running"
            sup.restart_at = None
            sup.started += 1
            began = loop.time()
            try:
                await sup.factory()
            except Exception as exc:
                sup.failures += 1
                sup.last_error = repr(exc)
                sup.last_failure = time.time()
                if loop.time() - began >= self.stable_after:
                    backoff.reset()
                delay = backoff.failure()
                sup.state = "restarting"
                sup.restart_at = time.time() + delay
                log.error(
                    "task %s of %s failed: %r; restarting it in %gs (failure %d)",
                    sup.name,
                    self._owner,
                    exc,
                    delay,
                    sup.failures,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
                continue
            sup.state = "done"
            return

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "task %s of %s failed: %r",
                task.get_name(),
                self._owner,
                exc,
                exc_info=exc,
            )

    def __len__(self) -> int:
        return len(self._tasks)

    def states(self) -> dict[str, dict[str, Any]]:
        """name -> state of every supervised task (for the status endpoint)."""
        return {name: sup.describe() for name, sup in sorted(self.supervised.items())}

    def failing(self, *, essential_only: bool = False) -> list[str]:
        """The supervised tasks now waiting to be restarted after a failure."""
        return sorted(
            name
            for name, sup in self.supervised.items()
            if sup.failing and (sup.essential or not essential_only)
        )

    async def cancel_all(self, reason: str) -> None:
        """Cancel every task still running and wait until they have all ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
