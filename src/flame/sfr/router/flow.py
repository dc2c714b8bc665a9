"""Back-pressure for one transport: why its reading is paused, and whether it can take writes.

Reading may be paused for several independent reasons at once (the other side's buffer is
full, pipelined requests are waiting, a body is buffered before its upstream connection
exists); it resumes only when the last reason is gone. Writing is paused by the transport
itself (`pause_writing` above the high-water mark); whoever feeds this transport checks
`writable` and registers one callback for when it drains. Modelled on uvicorn's
`flow_control.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

__all__ = [
    "BODY_BUFFER",
    "CLIENT_FULL",
    "HIGH_WATER",
    "PEER_FULL",
    "PIPELINE",
    "REJECTED",
    "FlowControl",
]

HIGH_WATER: Final = 64 * 1024  # default write buffer above which the feeding side pauses

# Reasons to pause reading (bit flags).
PIPELINE: Final = 1  # a request is queued behind the one being answered
BODY_BUFFER: Final = 2  # request body bytes are waiting for an upstream connection
PEER_FULL: Final = 4  # the transport we forward to cannot take more now
CLIENT_FULL: Final = 8  # (upstream side) the client, or the slowest joiner, cannot take more
REJECTED: Final = 16  # the request was refused: read nothing more, the connection closes


class FlowControl:
    """Pause/resume reading of one transport for several reasons; track its write state."""

    __slots__ = ("_blocks", "_transport", "on_writable", "writable")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._blocks = 0
        self.writable = True
        # Called once when writing resumes; whoever is waiting for the drain sets it.
        self.on_writable: Callable[[], None] | None = None

    @property
    def reading_paused(self) -> bool:
        return self._blocks != 0

    def block_reading(self, reason: int) -> None:
        if not self._blocks and not self._transport.is_closing():
            self._transport.pause_reading()
        self._blocks |= reason

    def unblock_reading(self, reason: int) -> None:
        if not self._blocks & reason:
            return
        self._blocks &= ~reason
        if not self._blocks and not self._transport.is_closing():
            self._transport.resume_reading()

    # Called by the protocol's pause_writing / resume_writing.
    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        callback = self.on_writable
        if callback is not None:
            self.on_writable = None
            callback()
