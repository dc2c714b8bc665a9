"""Events between components over NATS, for distributed deployments (in FLAME-in-a-box they
cross processes as HTTP webhooks instead; each deployment picks one).

Subjects are `flame.<kind>.<tenant>.<sfc>` (e.g. `flame.alerts.acme.vod`), payloads JSON
objects, so a subscriber can narrow by tenant or chain with NATS wildcards. nats-py
reconnects on its own; a publish while disconnected is buffered by it (bounded), and an event
that still cannot be sent raises to the caller, who decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["NatsEvents", "subject"]

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]


def _token(part: str) -> str:
    # NATS subject tokens may not hold '.', '*', '>' or whitespace.
    cleaned = "".join("_" if c in ".*> \t\r\n" else c for c in part)
    return cleaned or "_"


def subject(kind: str, tenant: str | None, sfc: str | None) -> str:
    return f"flame.{_token(kind)}.{_token(tenant or '_')}.{_token(sfc or '_')}"


class NatsEvents:
    def __init__(self, client: Client) -> None:
        self._client = client

    @classmethod
    async def connect(
        cls, url: str, *, name: str = "flame", token: str | None = None
    ) -> NatsEvents:
        client = await nats.connect(
            url,
            name=name,
            token=token,
            max_reconnect_attempts=-1,  # keep trying: a broker restart must not end the flow
            reconnect_time_wait=0.5,
        )
        return cls(client)

    async def publish(self, subj: str, payload: dict[str, Any]) -> None:
        await self._client.publish(subj, json.dumps(payload, separators=(",", ":")).encode())

    async def subscribe(self, subj: str, handler: Handler, *, queue: str = "") -> None:
        """Deliver each JSON event on `subj` (wildcards allowed) to `handler`; with `queue`,
        one member of the queue group gets each event (e.g. active and standby SFEMCs)."""

        async def on_message(msg: Msg) -> None:
            try:
                payload = json.loads(msg.data)
            except ValueError:
                log.warning(
                    "dropping a non-JSON event on %s (%d bytes)", msg.subject, len(msg.data)
                )
                return
            if not isinstance(payload, dict):
                log.warning("dropping a non-object event on %s", msg.subject)
                return
            try:
                await handler(msg.subject, payload)
            except Exception:
                log.exception("handling the event on %s failed", msg.subject)

        await self._client.subscribe(subj, queue=queue, cb=on_message)

    async def subscribed(self, timeout_s: float = 10.0) -> None:
        """Return once every subscription made so far is on the server.

        `flush()` does not prove it: nats-py writes flush's PING straight to the socket, ahead
        of SUBs still queued for its flusher task, so events published right after can miss
        them. The server handles one connection's commands in order, so an echo of a message
        sent after the SUBs to an inbox subscribed last proves they are all there."""
        inbox = self._client.new_inbox()
        echoed = asyncio.Event()

        async def on_echo(msg: Msg) -> None:
            echoed.set()

        probe = await self._client.subscribe(inbox, cb=on_echo)
        try:
            await self._client.publish(inbox, b"")
            await asyncio.wait_for(echoed.wait(), timeout_s)
        finally:
            await probe.unsubscribe()

    async def flush(self, timeout_s: int = 2) -> None:
        await self._client.flush(timeout=timeout_s)

    async def close(self) -> None:
        await self._client.drain()
