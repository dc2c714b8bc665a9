"""The RTMP front: the port encoders push to, in front of one ffmpeg per connection.

For each connection the front starts a session's ffmpeg in RTMP listen mode on a private
loopback port and relays bytes both ways, reading the client's side with `PublishSniffer`
until the ``publish`` command names the stream key. A key that matches no feed, a feed that
is already live, one backing off after a crash, or ``MAX_FEEDS`` feeds live: the connection is
cut and the ffmpeg stopped before it wrote anything. At most ``max(4, MAX_FEEDS)`` connections
may be waiting for their publish at once, each for at most `PUBLISH_TIMEOUT_S`. A feed backing off
after a crash holds its encoder's publish until the back-off is over (if within 5 s). Bytes received after
the publish are counted for the input bitrate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from flame.common.ports import free_port
from flame.media.live.rtmp import PublishSniffer, RtmpRefused
from flame.media.live.sessions import LiveIngest, Session

__all__ = ["PUBLISH_TIMEOUT_S", "RtmpFront"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0
_READ = 64 * 1024
_HOLD_MAX_S = 5.0
_MIN_PENDING = 4  # connections before their publish, each with an ffmpeg of its own


class RtmpFront:
    def __init__(self, ingest: LiveIngest) -> None:
        self.ingest = ingest
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.ingest.tasks.spawn(self._relay(reader, writer), name=f"rtmp-{self.connections}")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ingest = self.ingest
        if ingest.pending_rtmp() >= max(_MIN_PENDING, ingest.config.max_feeds):
            ingest.refuse(None, "too_many_pending")
            writer.close()
            return
        session: Session | None = None
        upstream: asyncio.StreamWriter | None = None
        try:
            port = free_port("127.0.0.1")
            session = await ingest.start_session(
                "rtmp", ["-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/feed"]
            )
            up_reader, upstream = await self._connect(session, port)
            back = ingest.tasks.spawn(
                self._back(up_reader, writer, upstream), name=f"rtmp-back-{session.id}"
            )
            try:
                await self._forward(reader, upstream, session)
            finally:
                back.cancel()
        except (OSError, TimeoutError, RtmpRefused) as exc:
            if session is not None and session.state == "pending":
                ingest.refuse(session, _reason(exc))
            log.info("rtmp connection closed: %s", exc)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            if session is not None and session.state == "pending":
                ingest.refuse(session, "closed_before_publish")

    async def _connect(
        self, session: Session, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # ffmpeg takes the first connection to its listen port: so no probing, just retries.
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while True:
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                if session.done.is_set() or time.monotonic() > deadline:
                    raise OSError("the session's ffmpeg did not listen") from None
                await asyncio.sleep(0.02)

    async def _forward(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, session: Session
    ) -> None:
        sniffer = PublishSniffer()
        deadline = time.monotonic() + PUBLISH_TIMEOUT_S
        while session.state == "pending":
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no publish within the time limit")
            data = await asyncio.wait_for(reader.read(_READ), left)
            if not data:
                return
            name = sniffer.feed(data)
            if name is not None:
                key = self.ingest.config.feed_for(name.partition("?")[0])
                if key is None:
                    raise RtmpRefused("bad_key")
                # A feed backing off after a crash takes its encoder once the delay is over:
                # the publish is answered late rather than refused (the restart with back-off).
                wait = self.ingest.feeds[key.feed].next_allowed - time.monotonic()
                if 0 < wait <= _HOLD_MAX_S:
                    await asyncio.sleep(wait + 0.05)  # event-loop timers may fire a little early
                reason = self.ingest.admit(session, key.feed)
                if reason is not None:
                    raise RtmpRefused(reason)
            upstream.write(data)
            await upstream.drain()
        await self._pump(reader, upstream, session)

    async def _back(
        self, src: asyncio.StreamReader, client: asyncio.StreamWriter, up: asyncio.StreamWriter
    ) -> None:
        """ffmpeg to the encoder; when ffmpeg goes away (it ended or died) so does the encoder."""
        await self._pump(src, client, None)
        client.close()
        up.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, session: Session | None
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(_READ):
                if session is not None:
                    session.bytes_in += len(data)
                dst.write(data)
                await dst.drain()
        # The other side may have closed the transport meanwhile (uvloop raises RuntimeError).
        with contextlib.suppress(OSError, RuntimeError):
            if not dst.is_closing() and dst.can_write_eof():
                dst.write_eof()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RtmpRefused):
        text = str(exc)
        return text if text.isidentifier() else "bad_rtmp"
    if isinstance(exc, TimeoutError):
        return "publish_timeout"
    return "relay_failed"
