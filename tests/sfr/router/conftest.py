"""Fixtures of the data-plane tests: uvloop, upstream endpoints and routers that are always
stopped, and a check that no test leaves a task behind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from flame.sfr.models import ForwardingTable
from flame.sfr.router import Router, RouterConfig, StaticTableSource

from .helpers import SR, Handler, Upstream, echo_handler


def pytest_asyncio_loop_factories(
    config: Any, item: Any
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # The router runs on uvloop in production: test it there.
    return {"uvloop": uvloop.new_event_loop}


UpstreamFactory = Callable[..., Awaitable[Upstream]]
RouterFactory = Callable[..., Awaitable[Router]]


@pytest_asyncio.fixture
async def upstreams() -> AsyncIterator[UpstreamFactory]:
    started: list[Upstream] = []

    async def make(name: str, handler: Handler = echo_handler) -> Upstream:
        up = await Upstream(name, handler).start()
        started.append(up)
        return up

    yield make
    for up in started:
        await up.close()


@pytest_asyncio.fixture
async def make_router() -> AsyncIterator[RouterFactory]:
    started: list[Router] = []

    async def make(
        table: ForwardingTable | None = None,
        *,
        sr_id: str = SR,
        sock: socket.socket | None = None,
        **settings: Any,
    ) -> Router:
        config = RouterConfig(sr_id=sr_id, port=0, **settings)
        router = Router(config, source=StaticTableSource(table))
        await router.start(sock)
        started.append(router)
        return router

    yield make
    for router in started:
        await router.shutdown(grace=0.5)
    await _no_tasks_left()


async def _no_tasks_left() -> None:
    """kopf's practice: a test that leaks a task fails."""
    current = asyncio.current_task()
    # Tasks ending on their own (an upstream's handler seeing the pooled connection close) get
    # 10 s, not 0.5: a loaded 2-core machine stalls that long; a leaked task still fails.
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        left = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not left:
            return
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    pytest.fail(f"tasks left running after the test: {[t.get_name() for t in left]}")
