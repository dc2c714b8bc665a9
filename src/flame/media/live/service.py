"""``python -m flame.media.live``: the live ingest SF (settings: `flame.media.live.config`).

Starts the HTTP side on ``FLAME_PORT_API`` (else ``FLAME_PORT``), the RTMP front on
``FLAME_PORT_RTMP``, the supervised SRT listener on ``FLAME_PORT_SRT`` (``off`` for none) and,
with ``CLMC_URL`` set, a measurement every second to the CLMC:

``live_feed`` (tags ``feed``, ``protocol``): ``live`` (bool), ``input_kbps`` (bytes the RTMP
front relayed; SRT input is not metered), ``fps``, ``frames``, ``dropped_frames``,
``dup_frames``, ``speed``, ``segments``, ``segment_latency_ms``, ``restarts``.
``live_ingest``: ``feeds_live``, ``max_feeds``, ``refused``, ``restarts``, ``pending``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time

from flame.common.errors import ConfigError
from flame.media.content.reporter import ClmcReporter
from flame.media.live.app import LiveApp
from flame.media.live.config import LiveConfig
from flame.media.live.front import RtmpFront
from flame.media.live.sessions import LiveIngest
from flame.media.runtime import run
from flame.media.server import HttpServer

__all__ = ["main", "report"]

log = logging.getLogger(__name__)


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg  # type: ignore[import-untyped]  # noqa: PLC0415 - only the SF process needs it

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        raise ConfigError(f"no ffmpeg: {exc}") from None


def report(ingest: LiveIngest, reporter: ClmcReporter, last_bytes: dict[str, int]) -> None:
    """One round of measurements (`last_bytes`: bytes seen per session at the previous one)."""
    restarts = 0
    for feed in ingest.feeds.values():
        restarts += feed.restarts
        s = feed.current
        fields: dict[str, object] = {"live": feed.busy, "restarts": feed.restarts}
        tags = {"feed": feed.name}
        if s is not None:
            tags["protocol"] = s.protocol
            if s.protocol == "rtmp" and feed.busy:
                before = last_bytes.get(s.id, 0)
                fields["input_kbps"] = round((s.bytes_in - before) * 8 / 1000.0, 1)
                last_bytes[s.id] = s.bytes_in
            p = s.progress
            fields.update({
                "fps": p.get("fps"), "frames": _int(p.get("frame")),
                "dropped_frames": _int(p.get("drop_frames")),
                "dup_frames": _int(p.get("dup_frames")), "speed": p.get("speed"),
                "segments": s.segments, "segment_latency_ms": s.segment_latency_ms,
            })  # fmt: skip
        reporter.point("live_feed", fields, tags)
    reporter.point("live_ingest", {
        "feeds_live": ingest.live_count(), "max_feeds": ingest.config.max_feeds,
        "refused": sum(ingest.refused.values()), "restarts": restarts,
        "pending": ingest.pending_rtmp(),
    })  # fmt: skip


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


async def _report_loop(ingest: LiveIngest, reporter: ClmcReporter, stop: asyncio.Event) -> None:
    last: dict[str, int] = {}
    while not stop.is_set():
        try:
            report(ingest, reporter, last)
        except Exception:  # a bad round is logged; the next one is tried
            log.exception("live measurements failed")
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - started)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flame.media.live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--log-level", default=os.environ.get("FLAME_LOG_LEVEL", "info"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def serve(stop: asyncio.Event) -> None:
        config = LiveConfig.from_env()
        ingest = LiveIngest(config, _ffmpeg())
        ingest.prepare()
        env = os.environ
        reporter = ClmcReporter(
            config.clmc_url, config.clmc_token, config.clmc_db,
            {"sfc": env.get("FLAME_SFC", ""), "sfci": env.get("FLAME_SFCI", ""),
             "sf": env.get("FLAME_SF", ""), "sfe": env.get("FLAME_SFE", ""),
             "cluster": env.get("FLAME_CLUSTER", ""), "tenant": env.get("FLAME_TENANT", "")},
        )  # fmt: skip
        app = LiveApp(ingest, sfe=env.get("FLAME_SFE", ""))
        server = HttpServer(app.handle, server_header="flame-live-ingest")
        front = RtmpFront(ingest)
        try:
            api = await server.start(config.host, config.api_port)
            rtmp = ingest.rtmp_port = await front.start(config.host, config.rtmp_port)
            ingest.tasks.spawn(ingest.supervise_srt(stop), name="srt-supervisor")
            ingest.tasks.spawn(reporter.run(stop), name="clmc-reporter")
            ingest.tasks.spawn(_report_loop(ingest, reporter, stop), name="live-measurements")
            srt = f"srt://{config.host}:{config.srt_port}" if config.srt_feed else "off"
            log.info("live ingest: rtmp://%s:%d/live/<key>, %s, feeds %s",
                     config.host, rtmp, srt, ", ".join(config.keys))  # fmt: skip
            print(f"listening on http://{config.host}:{api}/ rtmp={rtmp} srt={srt}", flush=True)
            await stop.wait()
        finally:
            await front.stop()
            await ingest.close()
            await server.stop(grace_s=1.0)
            await reporter.close()

    return run(serve, args.log_level)
