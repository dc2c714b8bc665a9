"""The one place where the data plane starts asyncio tasks.

A task nobody references can be garbage-collected while it runs, and a task whose exception
nobody retrieves fails silently. `TaskSet.spawn` names every task, keeps a reference until it
ends and logs its failure, so no task is ever forgotten (a test checks that no other module of
the package calls `create_task`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskSet"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class TaskSet:
    """Named, referenced background tasks of one owner (a worker, a connection pool, ...)."""

    __slots__ = ("_loop", "_owner", "_tasks")

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()
        # Cached: asyncio.get_running_loop() costs a getpid() system call per call.
        self._loop: asyncio.AbstractEventLoop | None = None

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start `coro` as a task called `name`; its failure is logged, never lost."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "task %s of %s failed: %r; it is not restarted",
                task.get_name(),
                self._owner,
                exc,
                exc_info=exc,
            )

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, reason: str) -> None:
        """Cancel every task still running and wait until they have all ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel(reason)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
