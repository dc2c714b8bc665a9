"""The transcoder SF put together: configuration from the environment, the job queue, the
CLMC reporter, the HTTP server.

    python -m flame.media.transcode [--host H] [--port N]

| variable | default | what |
|---|---|---|
| ``TRANSCODE_DATA_DIR`` | ``$HOME/transcode`` | uploaded sources and each job's outputs |
| ``TRANSCODE_WORKERS`` | 1 | jobs encoding at once |
| ``TRANSCODE_THREADS`` | ``nproc`` | threads per job (encoders, scalers, libvmaf) |
| ``TRANSCODE_MAX_QUEUE`` | 16 | queued jobs of all tenants (503 beyond) |
| ``TRANSCODE_MAX_ACTIVE`` | 4 | queued + running jobs per tenant (429 beyond) |
| ``TRANSCODE_MAX_SOURCE`` | 20GB | one source (fetched or uploaded) |
| ``TRANSCODE_MAX_RUNGS``, ``TRANSCODE_MAX_HEIGHT`` | 6, 2160 | one ladder |
| ``TRANSCODE_SOURCE_HOSTS`` | | when set, the only hosts source URLs may name (comma separated) |
| ``TRANSCODE_JOB_TIMEOUT_S`` | 21600 | a job running longer fails |
| ``TRANSCODE_MODE`` | ``transcode`` | ``package``: packaging jobs only (the hls-dash-packager image) |
| ``MEDIA_API_KEYS``, ``MEDIA_AUTH_URL``, ``MEDIA_TENANTS`` | | who may call it (as the content SF) |
| ``CLMC_URL``, ``CLMC_TOKEN``, ``CLMC_DB`` | ``CLMC_DB``: ``$FLAME_TENANT`` | measurements |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flame.common.errors import ConfigError
from flame.media.content.auth import Authenticator, parse_api_keys
from flame.media.content.reporter import ClmcReporter
from flame.media.content.service import size
from flame.media.serving import serve_app
from flame.media.tasks import TaskSet
from flame.media.transcode.jobs import Settings, Transcoder
from flame.media.transcode.ladder import JobLimits

__all__ = ["Config", "TranscodeService", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8091


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 1) -> int:
    raw = env.get(name) or str(default)
    if not raw.strip().isdigit() or int(raw) < lo:
        raise ConfigError(f"{name}={raw!r}: an integer, at least {lo}")
    return int(raw)


def _mode(env: Mapping[str, str]) -> str:
    mode = (env.get("TRANSCODE_MODE") or "transcode").lower()
    if mode not in ("transcode", "package"):
        raise ConfigError(f"TRANSCODE_MODE={mode!r}: transcode (both kinds of job) or package")
    return mode


@dataclass
class Config:
    settings: Settings
    limits: JobLimits = field(default_factory=JobLimits)
    api_keys: str = ""
    auth_url: str | None = None
    tenants: set[str] = field(default_factory=set)
    tenant: str | None = None
    clmc_url: str | None = None
    clmc_token: str | None = None
    clmc_db: str | None = None
    identity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        home = Path(env.get("HOME") or Path.home())
        tenant = env.get("FLAME_TENANT") or None
        tenants = {t for t in re.split(r"[,\s]+", env.get("MEDIA_TENANTS", "")) if t}
        if not tenants and tenant:
            tenants = {tenant}
        hosts = frozenset(
            h.lower() for h in re.split(r"[,\s]+", env.get("TRANSCODE_SOURCE_HOSTS", "")) if h
        )
        settings = Settings(
            data_dir=Path(env.get("TRANSCODE_DATA_DIR") or home / "transcode"),
            workers=_int(env, "TRANSCODE_WORKERS", 1),
            threads=_int(env, "TRANSCODE_THREADS", os.cpu_count() or 2),
            max_queue=_int(env, "TRANSCODE_MAX_QUEUE", 16, 0),
            max_active_per_tenant=_int(env, "TRANSCODE_MAX_ACTIVE", 4),
            max_source=size(env.get("TRANSCODE_MAX_SOURCE") or "20GB", "TRANSCODE_MAX_SOURCE"),
            job_timeout_s=float(_int(env, "TRANSCODE_JOB_TIMEOUT_S", 6 * 3600)),
            source_hosts=hosts,
            package_only=_mode(env) == "package",
        )
        limits = JobLimits(
            max_rungs=_int(env, "TRANSCODE_MAX_RUNGS", 6),
            max_height=_int(env, "TRANSCODE_MAX_HEIGHT", 2160, 64),
        )
        return cls(
            settings=settings,
            limits=limits,
            api_keys=env.get("MEDIA_API_KEYS", ""),
            auth_url=env.get("MEDIA_AUTH_URL") or None,
            tenants=tenants,
            tenant=tenant,
            clmc_url=env.get("CLMC_URL") or None,
            clmc_token=env.get("CLMC_TOKEN") or None,
            clmc_db=env.get("CLMC_DB") or tenant,
            identity={k: env.get(f"FLAME_{k.upper()}", "") for k in
                      ("sfc", "sfci", "sf", "sfe", "cluster")} | {"tenant": tenant or ""},
        )  # fmt: skip


class TranscodeService:
    """What the HTTP app uses; `start`/`close` run the workers and the reporter."""

    def __init__(self, config: Config) -> None:
        self.config = config
        config.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator(
            api_keys=parse_api_keys(config.api_keys, config.tenant) if config.api_keys else {},
            whoami_url=config.auth_url,
            tenants=config.tenants,
        )
        if not self.auth.configured:
            raise ConfigError(
                "the transcoder has no way to authenticate callers: set MEDIA_API_KEYS "
                "and/or MEDIA_AUTH_URL (the orchestrator's URL, for platform tokens)"
            )
        self.reporter = ClmcReporter(
            config.clmc_url, config.clmc_token, config.clmc_db, config.identity
        )
        self.transcoder = Transcoder(config.settings, self.reporter)
        self.tasks = TaskSet("the transcoder SF")
        self._stop = asyncio.Event()
        self.started = time.monotonic()

    async def start(self) -> None:
        self._stop.clear()
        await self.transcoder.start()
        self.tasks.spawn(self.reporter.run(self._stop), name="clmc-reporter")
        self.tasks.spawn(self._gauge(), name="transcode-gauge")

    async def _gauge(self) -> None:
        while not self._stop.is_set():
            stats = self.transcoder.stats()
            self.reporter.point(
                "media_transcoder",
                {"queued": stats["queued"], "running": stats["running"],
                 "done": self.transcoder.counts["done"],
                 "failed": self.transcoder.counts["failed"],
                 "workers": self.config.settings.workers},
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 10.0)

    async def close(self) -> None:
        self._stop.set()
        await self.transcoder.close()
        await self.tasks.cancel_all("closing")
        await self.reporter.flush()
        await self.reporter.close()
        await self.auth.close()


def main(argv: list[str] | None = None) -> int:
    import sys  # noqa: PLC0415

    from flame.media.transcode.app import create_app  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m flame.media.transcode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default=os.environ.get("FLAME_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=None,
                   help=f"default: $FLAME_PORT, else {DEFAULT_PORT}")  # fmt: skip
    p.add_argument("--log-level", default=os.environ.get("FLAME_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        port = args.port if args.port is not None else int(
            os.environ.get("FLAME_PORT") or DEFAULT_PORT)  # fmt: skip
        service = TranscodeService(Config.from_env(os.environ))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return serve_app(create_app(service), args.host, port)
