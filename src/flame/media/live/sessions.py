"""Live sessions and the feeds they serve: one supervised ffmpeg per session.

A *session* is one contribution: an ffmpeg started for an RTMP connection (bound to its feed
once the RTMP front has read a valid stream key) or armed on the SRT port for the SRT feed
(bound when media starts to flow). A *feed* (``news``, ``sport``...) is what viewers ask for:
``/live/<feed>/`` serves the files of its current session, also after that session ended
(its playlists then carry ``#EXT-X-ENDLIST`` and its MPD is static) until the next one.

Every ffmpeg is watched by a named task: its exit is seen at once and classified as *ended*
(exit 0: the encoder stopped and ffmpeg wrote its final manifests) or *crashed* (anything
else: the window is closed by `close_window`, the crash is counted and the feed backs off,
0.5 s doubling to 30 s, reset after a session that ran 10 s). The SRT listener is re-armed after
every exit (after the back-off when it crashed); an RTMP encoder reconnects, as encoders do, and
a feed still backing off refuses it. Nothing here dies silently: a failing task is logged by
`TaskSet`, and the supervisor loop catches and logs its own errors before trying again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import re
import shutil
import signal
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flame.common.backoff import backoff_delay
from flame.media.live.config import LiveConfig
from flame.media.live.pipeline import close_window, parse_progress, session_argv, srt_url
from flame.media.tasks import TaskSet

__all__ = ["Feed", "LiveIngest", "Session"]

log = logging.getLogger(__name__)

State = Literal["pending", "listening", "live", "ended", "crashed", "refused"]
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_S = 10.0
_STOP_GRACE_S = 3.0


_SECRET = re.compile(r"(passphrase=)[^&\s]*")


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Lines of an ffmpeg pipe; an overlong one is skipped, and the pipe is always drained
    (a pipe nobody reads would block ffmpeg)."""
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # longer than the reader's limit: drop what is buffered
            await stream.read(65536)
            continue
        if not line:
            return
        yield line


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # An ffmpeg must not outlive an SF killed with SIGKILL (it would hold the SRT port).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass(eq=False)
class Session:
    id: str
    protocol: Literal["rtmp", "srt"]
    dir: Path
    state: State = "pending"
    feed: str | None = None
    proc: asyncio.subprocess.Process | None = None
    started: float = field(default_factory=time.time)
    live_since: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    stopping: bool = False
    bytes_in: int = 0
    progress: dict[str, float] = field(default_factory=dict)
    segments: int = 0
    segment_latency_ms: float | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    done: asyncio.Event = field(default_factory=asyncio.Event)
    refused_callers: int = 0  # SRT handshakes refused for a wrong passphrase

    def summary(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "protocol": self.protocol,
            "state": self.state,
            "pid": self.proc.pid if self.proc is not None else None,
            "live_since": self.live_since,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "bytes_in": self.bytes_in,
            "segments": self.segments,
            "segment_latency_ms": self.segment_latency_ms,
            "fps": self.progress.get("fps"),
            "dropped_frames": self.progress.get("drop_frames"),
        }


@dataclass(eq=False)
class Feed:
    name: str
    current: Session | None = None
    sessions: int = 0
    restarts: int = 0
    crash_streak: int = 0
    next_allowed: float = 0.0  # monotonic
    recordings: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return self.current is not None and self.current.state == "live"


class LiveIngest:
    """Sessions, feeds, the SRT supervisor; the RTMP front and the HTTP app call in."""

    def __init__(self, config: LiveConfig, ffmpeg: str) -> None:
        self.config = config
        self.ffmpeg = ffmpeg
        self.sessions_dir = config.data_dir / "sessions"
        self.dvr_dir = config.data_dir / "dvr"
        self.feeds = {name: Feed(name) for name in config.keys}
        self.sessions: dict[str, Session] = {}
        self.refused: Counter[str] = Counter()
        self.tasks = TaskSet("the live ingest")
        self._seq = 0
        self._closing = False
        self.srt_session: Session | None = None
        self.srt_backoff = Feed("(srt listener)")  # its own crash streak and back-off
        self.rtmp_port = config.rtmp_port  # the bound one, once the front listens

    def prepare(self) -> None:
        # Sessions of a previous run are not served again (their ffmpeg is gone).
        shutil.rmtree(self.sessions_dir, ignore_errors=True)
        self.sessions_dir.mkdir(parents=True, exist_ok=True)
        self.dvr_dir.mkdir(parents=True, exist_ok=True)

    # -- sessions ------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._seq += 1
        return f"s{int(time.time() * 1000):x}{self._seq:03d}"

    def pending_rtmp(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state == "pending")

    def live_count(self) -> int:
        return sum(1 for f in self.feeds.values() if f.busy)

    async def start_session(
        self, protocol: Literal["rtmp", "srt"], source: list[str], *, feed: str | None = None
    ) -> Session:
        sid = self._new_id()
        out = self.sessions_dir / sid
        out.mkdir(parents=True)
        session = Session(sid, protocol, out, state="listening" if feed else "pending", feed=feed)
        argv = session_argv(self.ffmpeg, self.config, sid, out, source)
        try:
            session.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        except OSError:
            shutil.rmtree(out, ignore_errors=True)
            raise
        self.sessions[sid] = session
        self.tasks.spawn(self._watch(session), name=f"live-session-{sid}")
        log.info("session %s (%s) started, ffmpeg pid %d", sid, protocol, session.proc.pid)
        return session

    def admit(self, session: Session, feed_name: str) -> str | None:
        """Bind a session to its feed; returns why it is refused, or None."""
        feed = self.feeds[feed_name]
        if feed.busy and feed.current is not session:
            return "feed_busy"
        if time.monotonic() < feed.next_allowed:
            return "backing_off"
        if self.live_count() >= self.config.max_feeds:
            return "max_feeds"
        previous = feed.current
        feed.current = session
        feed.sessions += 1
        session.feed = feed_name
        session.state = "live"
        session.live_since = time.time()
        if previous is not None and previous is not session and previous.state != "live":
            self.sessions.pop(previous.id, None)
            shutil.rmtree(previous.dir, ignore_errors=True)
        log.info("feed %s is live (session %s, %s)", feed_name, session.id, session.protocol)
        return None

    def refuse(self, session: Session | None, reason: str) -> None:
        self.refused[reason] += 1
        log.warning("contribution refused: %s", reason)
        if session is not None and session.state in ("pending", "listening"):
            session.state = "refused"
            self.stop_session(session)

    def stop_session(self, session: Session) -> None:
        session.stopping = True
        if session.proc is not None and session.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                session.proc.send_signal(signal.SIGTERM)

    async def _watch(self, session: Session) -> None:
        assert session.proc is not None
        reader = self.tasks.spawn(self._read_progress(session), name=f"progress-{session.id}")
        errors = self.tasks.spawn(self._read_stderr(session), name=f"stderr-{session.id}")
        watcher = self.tasks.spawn(self._watch_segments(session), name=f"segments-{session.id}")
        try:
            session.exit_code = await session.proc.wait()
            await asyncio.gather(reader, errors, return_exceptions=True)
            watcher.cancel()
            self._exited(session)
        except Exception:  # e.g. the disk refused closing the window: say so, carry on
            log.exception("session %s: handling its ffmpeg's exit failed", session.id)
        finally:
            watcher.cancel()
            session.done.set()  # the SRT supervisor and shutdown wait on it, whatever happened

    def _exited(self, session: Session) -> None:
        session.ended_at = time.time()
        code = session.exit_code
        if session.state in ("pending", "listening", "refused"):
            if session.state != "refused" and code not in (0, None) and not session.stopping:
                self._crashed(session, bound=False)
            session.state = "refused" if session.state == "refused" else "ended"
            self.sessions.pop(session.id, None)
            shutil.rmtree(session.dir, ignore_errors=True)
            return
        feed = self.feeds[session.feed] if session.feed else None
        if code == 0 or session.stopping:
            session.state = "ended"
            if close_window(session.dir):  # stopped before it could write the end itself
                log.info("session %s: closed its live window", session.id)
            log.info("feed %s ended (session %s)", session.feed, session.id)
            live_s = time.time() - (session.live_since or time.time())
            if feed is not None and live_s >= _STABLE_S:
                feed.crash_streak = 0
        else:
            session.state = "crashed"
            close_window(session.dir)
            tail = " | ".join(list(session.stderr)[-3:])
            log.error("session %s of feed %s: ffmpeg exited %s (%s)",
                      session.id, session.feed, code, tail or "no output")  # fmt: skip
            self._crashed(session, bound=True)
        self._keep_recording(session)

    def _crashed(self, session: Session, *, bound: bool) -> None:
        """Count a crash and back off: the feed (a live session) or the SRT listener (armed)."""
        name = session.feed
        if name is None:
            return
        # An armed SRT listener that fails must not lock RTMP publishers out of the feed.
        owner = self.feeds[name] if bound else self.srt_backoff
        stable = session.live_since is not None and time.time() - session.live_since >= _STABLE_S
        owner.crash_streak = 1 if stable else owner.crash_streak + 1
        delay = backoff_delay(owner.crash_streak, _BACKOFF_FIRST_S, _BACKOFF_MAX_S)
        owner.next_allowed = time.monotonic() + delay
        owner.restarts += 1
        log.warning("feed %s: ffmpeg crashed (%s), next start in %.1f s",
                    name, "live" if bound else "armed", delay)  # fmt: skip

    def _keep_recording(self, session: Session) -> None:
        dvr = session.dir / "dvr.ts"
        if session.feed is None or not dvr.exists() or dvr.stat().st_size == 0:
            return
        target = self.dvr_dir / session.feed / f"{session.id}.ts"
        target.parent.mkdir(parents=True, exist_ok=True)
        dvr.replace(target)
        self.feeds[session.feed].recordings.append(target.name)

    async def _read_progress(self, session: Session) -> None:
        assert session.proc is not None
        assert session.proc.stdout is not None
        block: dict[str, str] = {}
        async for raw in _lines(session.proc.stdout):
            key, _, value = raw.decode("utf-8", "replace").strip().partition("=")
            if key != "progress":
                if len(block) < 64:
                    block[key] = value
                continue
            session.progress = parse_progress(block)
            block = {}
            if session.protocol == "srt" and session.state == "listening":
                self._srt_media_started(session)

    async def _read_stderr(self, session: Session) -> None:
        assert session.proc is not None
        assert session.proc.stderr is not None
        async for raw in _lines(session.proc.stderr):
            # ffmpeg may quote its input URL, and an SRT URL holds the feed's key.
            text = _SECRET.sub(r"\1***", raw.decode("utf-8", "replace").rstrip()[:300])
            if "Incorrect passphrase" in text and "processConnectRequest" in text:
                session.refused_callers += 1
                self.refused["bad_key"] += 1
                continue
            if session.state == "pending" and session.protocol == "rtmp":
                continue  # the handshake of a refused client is not the SF's problem
            session.stderr.append(text)

    async def _watch_segments(self, session: Session) -> None:
        """Counts the top rung's segments and how late each became available."""
        prefix = f"{session.id}-chunk-0-"
        seen: set[str] = set()
        seg = self.config.segment_s
        while True:
            await asyncio.sleep(0.25)
            if session.live_since is None:
                continue
            try:
                names = [p for p in session.dir.iterdir() if p.name.startswith(prefix)]
            except OSError:
                continue
            for path in sorted(names):
                if path.name in seen or path.name.endswith(".tmp"):
                    continue
                seen.add(path.name)
                session.segments += 1
                try:
                    number = int(path.stem.rsplit("-", 1)[1])
                    mtime = path.stat().st_mtime
                except (ValueError, OSError):
                    continue
                # When the segment's last frame was due on the ingest's clock.
                due = session.live_since + number * seg
                session.segment_latency_ms = round(max(0.0, mtime - due) * 1000.0, 1)

    # -- SRT -----------------------------------------------------------------------------

    def _srt_media_started(self, session: Session) -> None:
        assert session.feed is not None
        session.state = "pending"
        reason = self.admit(session, session.feed)
        if reason is not None:
            self.refuse(session, reason)

    async def supervise_srt(self, stop: asyncio.Event) -> None:
        """Keep an ffmpeg armed on the SRT port for the SRT feed, re-armed after every exit."""
        name, port = self.config.srt_feed, self.config.srt_port
        if name is None or port is None:
            return
        key = self.config.keys[name].plain
        assert key is not None
        feed = self.feeds[name]
        url = srt_url(self.config.host, port, key)
        while not stop.is_set() and not self._closing:
            # A crashed live SRT session backs the feed off; a failing listener, the listener.
            wait = max(feed.next_allowed, self.srt_backoff.next_allowed) - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                continue
            try:
                # MPEG-TS over SRT: probe 1 s, not ffmpeg's default 5 s, before going live.
                source = ["-analyzeduration", "1000000", "-i", url]
                session = await self.start_session("srt", source, feed=name)
            except Exception:  # a failed start is retried after the back-off, never silently
                log.exception("cannot start the SRT listener for feed %s", name)
                self.srt_backoff.next_allowed = time.monotonic() + _BACKOFF_MAX_S
                self.srt_backoff.restarts += 1
                continue
            self.srt_session = session
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(session.done.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        sessions = [s for s in self.sessions.values() if s.proc and s.proc.returncode is None]
        for session in sessions:
            self.stop_session(session)
        deadline = time.monotonic() + _STOP_GRACE_S
        for session in sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.done.wait(), max(0.0, deadline - time.monotonic()))
            if session.proc is not None and session.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    session.proc.kill()
        await self.tasks.cancel_all("the live ingest stopped")
