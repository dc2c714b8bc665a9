"""The content SF put together: configuration from the environment, the parts, their tasks.

    python -m flame.media.content [--host H] [--port N]

Configuration (environment variables of the SF's template; sizes as ``10GB`` or bytes):

| variable | default | what |
|---|---|---|
| ``MEDIA_DATA_DIR`` | ``$HOME/media-content`` | staging, the SQLite file, filesystem objects |
| ``MEDIA_DB`` | ``sqlite:///<data>/content.sqlite3`` | or ``postgresql://user@host:port/db`` |
| ``MEDIA_STORAGE`` | ``file`` | or ``s3://bucket[/prefix]`` (+ ``MEDIA_S3_ENDPOINT``, ``MEDIA_S3_REGION``, ``MEDIA_S3_CREATE_BUCKET``, AWS_* credentials) |
| ``MEDIA_API_KEYS`` | | tenant API keys (see `auth`) |
| ``MEDIA_AUTH_URL`` | | the orchestrator, to check platform tokens with ``/v1/whoami`` |
| ``MEDIA_TENANTS`` | ``$FLAME_TENANT`` | tenants whose platform tokens are let in |
| ``MEDIA_MAX_UPLOAD``, ``MEDIA_MAX_MULTIPART`` | 50GB, 64MB | one upload |
| ``MEDIA_QUOTA``, ``MEDIA_QUOTAS`` | 100GB | per tenant; ``MEDIA_QUOTAS="a=1GB,b=5GB"`` |
| ``MEDIA_UPLOAD_TTL`` | 86400 | seconds an idle unfinished upload is kept |
| ``MEDIA_ANALYSIS`` | ``on`` | ``off``: store only; ``probe``: no no-reference filters |
| ``MEDIA_ANALYSIS_WORKERS``, ``MEDIA_ANALYSIS_THREADS``, ``MEDIA_VMAF_SUBSAMPLE`` | 1, 2, 1 | |
| ``MEDIA_RULE`` | ``{}`` | the default acceptance rule (JSON); ``PUT /v1/rule`` per tenant |
| ``CLMC_URL``, ``CLMC_TOKEN``, ``CLMC_DB`` | ``CLMC_DB``: ``$FLAME_TENANT`` | measurements |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError
from flame.common.units import ScalarError, parse_scalar
from flame.media.content.analysis import Options
from flame.media.content.auth import Authenticator, parse_api_keys
from flame.media.content.catalog import Catalog
from flame.media.content.db import Database
from flame.media.content.ingest import Ingest, Limits
from flame.media.content.jobs import Worker
from flame.media.content.reporter import ClmcReporter
from flame.media.content.rules import check_rule
from flame.media.content.storage import BlobStore, open_store
from flame.media.content.tus import Uploads
from flame.media.serving import serve_app
from flame.media.tasks import TaskSet

__all__ = ["Config", "ContentService", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8090


def size(value: str, what: str) -> int:
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        return int(parse_scalar(value, "scalar-unit.size"))
    except ScalarError as exc:
        raise ConfigError(f"{what}={value!r}: {exc}") from None


@dataclass
class Config:
    data_dir: Path
    db_url: str
    storage: str = "file"
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_create_bucket: bool = False
    api_keys: str = ""
    auth_url: str | None = None
    tenants: set[str] = field(default_factory=set)
    tenant: str | None = None
    limits: Limits = field(default_factory=Limits)
    analysis_workers: int = 1
    analysis: Options = field(default_factory=Options)
    analysis_mode: str = "on"
    rule: dict[str, Any] = field(default_factory=dict)
    clmc_url: str | None = None
    clmc_token: str | None = None
    clmc_db: str | None = None
    identity: dict[str, str] = field(default_factory=dict)
    auth_cache_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        home = Path(env.get("HOME") or Path.home())
        data = Path(env.get("MEDIA_DATA_DIR") or home / "media-content")
        tenant = env.get("FLAME_TENANT") or None
        tenants = {t for t in re.split(r"[,\s]+", env.get("MEDIA_TENANTS", "")) if t}
        if not tenants and tenant:
            tenants = {tenant}
        limits = Limits()
        if env.get("MEDIA_MAX_UPLOAD"):
            limits.max_upload = size(env["MEDIA_MAX_UPLOAD"], "MEDIA_MAX_UPLOAD")
        if env.get("MEDIA_MAX_MULTIPART"):
            limits.max_multipart = size(env["MEDIA_MAX_MULTIPART"], "MEDIA_MAX_MULTIPART")
        if env.get("MEDIA_QUOTA"):
            limits.quota = size(env["MEDIA_QUOTA"], "MEDIA_QUOTA")
        for item in re.split(r"[,\s]+", env.get("MEDIA_QUOTAS", "")):
            if item:
                name, eq, value = item.partition("=")
                if not eq:
                    raise ConfigError(f"MEDIA_QUOTAS entry {item!r} is not tenant=size")
                limits.quotas[name] = size(value, f"MEDIA_QUOTAS {name}")
        for var, attr in (
            ("MEDIA_UPLOAD_TTL", "upload_ttl_s"),
            ("MEDIA_BODY_IDLE_S", "body_idle_s"),
            ("MEDIA_BODY_MIN_RATE", "body_min_rate"),
            ("MEDIA_BODY_GRACE_S", "body_grace_s"),
        ):
            if env.get(var):
                setattr(limits, attr, _float(env[var], var))
        mode = (env.get("MEDIA_ANALYSIS") or "on").lower()
        if mode not in ("on", "off", "probe"):
            raise ConfigError(f"MEDIA_ANALYSIS={mode!r}: use on, off or probe")
        options = Options(
            threads=int(_float(env.get("MEDIA_ANALYSIS_THREADS") or "2", "MEDIA_ANALYSIS_THREADS")),
            vmaf_subsample=int(
                _float(env.get("MEDIA_VMAF_SUBSAMPLE") or "1", "MEDIA_VMAF_SUBSAMPLE")
            ),
        )
        rule: dict[str, Any] = {}
        if env.get("MEDIA_RULE"):
            try:
                rule = check_rule(json.loads(env["MEDIA_RULE"]))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"MEDIA_RULE is not JSON: {exc}") from None
            except Exception as exc:
                raise ConfigError(f"MEDIA_RULE: {getattr(exc, 'message', exc)}") from None
        identity = {
            "sfc": env.get("FLAME_SFC", ""),
            "sfci": env.get("FLAME_SFCI", ""),
            "sf": env.get("FLAME_SF", ""),
            "sfe": env.get("FLAME_SFE", ""),
            "cluster": env.get("FLAME_CLUSTER", ""),
            "tenant": tenant or "",
        }
        return cls(
            data_dir=data,
            db_url=env.get("MEDIA_DB") or f"sqlite:///{data / 'content.sqlite3'}",
            storage=env.get("MEDIA_STORAGE") or "file",
            s3_endpoint=env.get("MEDIA_S3_ENDPOINT") or None,
            s3_region=env.get("MEDIA_S3_REGION") or None,
            s3_create_bucket=(env.get("MEDIA_S3_CREATE_BUCKET") or "") in ("1", "true", "yes"),
            api_keys=env.get("MEDIA_API_KEYS", ""),
            auth_url=env.get("MEDIA_AUTH_URL") or None,
            tenants=tenants,
            tenant=tenant,
            limits=limits,
            analysis_workers=int(
                _float(env.get("MEDIA_ANALYSIS_WORKERS") or "1", "MEDIA_ANALYSIS_WORKERS")
            ),
            analysis=options,
            analysis_mode=mode,
            rule=rule,
            clmc_url=env.get("CLMC_URL") or None,
            clmc_token=env.get("CLMC_TOKEN") or None,
            clmc_db=env.get("CLMC_DB") or tenant,
            identity=identity,
        )


def _float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{what}={value!r} is not a number") from None


class ContentService:
    """Everything the HTTP app uses; `start`/`close` run its background tasks."""

    def __init__(self, config: Config, *, store: BlobStore | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth = Authenticator(
            api_keys=parse_api_keys(config.api_keys, config.tenant) if config.api_keys else {},
            whoami_url=config.auth_url,
            tenants=config.tenants,
            cache_s=config.auth_cache_s,
        )
        if not self.auth.configured:
            raise ConfigError(
                "the content SF has no way to authenticate callers: set MEDIA_API_KEYS "
                "and/or MEDIA_AUTH_URL (the orchestrator's URL, for platform tokens)"
            )
        self.db = Database(config.db_url)
        self.catalog = Catalog(self.db)
        self.store = store or open_store(
            config.storage,
            config.data_dir / "objects",
            **(
                {
                    "endpoint_url": config.s3_endpoint,
                    "region": config.s3_region,
                    "create_bucket": config.s3_create_bucket,
                }
                if config.storage.startswith("s3://")
                else {}
            ),
        )
        self.ingest = Ingest(self.catalog, self.store, config.data_dir / "staging", config.limits)
        self.uploads = Uploads(self.ingest)
        self.reporter = ClmcReporter(
            config.clmc_url, config.clmc_token, config.clmc_db, config.identity
        )
        self.worker = Worker(
            self.catalog,
            self.store,
            self.reporter,
            options=config.analysis,
            concurrency=config.analysis_workers,
            default_rule=config.rule,
            no_reference=config.analysis_mode == "on",
        )
        self.ingest.hooks.append(self._ingested)
        self.tasks = TaskSet("the content SF")
        self._stop = asyncio.Event()
        self.started = time.monotonic()
        self.ingested = {"tus": 0, "multipart": 0, "bytes": 0}

    async def _ingested(self, asset: dict[str, Any], event: dict[str, Any]) -> None:
        self.ingested[event["method"]] += 1
        self.ingested["bytes"] += int(event["bytes"])
        seconds = float(event["seconds"])
        self.reporter.point(
            "media_ingest",
            {
                "asset": asset["id"],
                "bytes": int(event["bytes"]),
                "duration_s": round(seconds, 4),
                "throughput_mbps": round(event["bytes"] * 8 / seconds / 1e6, 3),
            },
            {"method": event["method"], "storage": self.store.kind},
        )
        if self.config.analysis_mode != "off":
            await self.worker.submit(asset["tenant"], asset["id"])
            # Renditions uploaded before their source: compare them now that it is here.
            rows = await self.db.query(
                "SELECT id FROM assets WHERE tenant = ? AND reference = ? AND vmaf IS NULL "
                "AND status IN ('accepted', 'rejected', 'stored')",
                (asset["tenant"], asset["id"]),
            )
            for row in rows:
                await self.worker.submit(asset["tenant"], row["id"])

    async def start(self) -> None:
        self._stop.clear()
        try:
            await self.store.check()
        except Exception as exc:  # the SF still starts: uploads answer 503 until it is back
            log.warning("the storage is not usable yet: %s", getattr(exc, "message", exc))
        if self.config.analysis_mode != "off":
            await self.worker.start()
        self.tasks.spawn(self.reporter.run(self._stop), name="clmc-reporter")
        self.tasks.spawn(self._housekeeping(), name="content-housekeeping")

    async def _housekeeping(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 10.0)
            try:
                expired = await self.uploads.expire()
                if expired:
                    log.info("expired %d idle uploads", expired)
                await self._gauge()
            except Exception:
                log.exception("housekeeping failed")

    async def _gauge(self) -> None:
        rows = await self.db.query(
            "SELECT tenant, count(*) AS n, COALESCE(sum(size), 0) AS b FROM assets GROUP BY tenant"
        )
        jobs = await self.worker.counts()
        open_uploads = await self.db.query(
            "SELECT count(*) AS n FROM uploads WHERE state = 'receiving'"
        )
        self.reporter.point(
            "media_content",
            {
                "assets": sum(int(r["n"]) for r in rows),
                "bytes": sum(int(r["b"]) for r in rows),
                "uploads_open": int(open_uploads[0]["n"]),
                "jobs_queued": jobs.get("queued", 0),
                "jobs_running": jobs.get("running", 0),
                "jobs_failed": jobs.get("failed", 0),
            },
        )

    async def close(self) -> None:
        self._stop.set()
        await self.worker.close()
        await self.tasks.cancel_all("closing")
        await self.reporter.flush()
        await self.reporter.close()
        await self.auth.close()
        await self.store.close()
        self.db.close()


def main(argv: list[str] | None = None) -> int:
    import sys  # noqa: PLC0415

    from flame.media.content.app import create_app  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m flame.media.content", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default=os.environ.get("FLAME_HOST", "127.0.0.1"))
    p.add_argument(
        "--port", type=int, default=None, help=f"default: $FLAME_PORT, else {DEFAULT_PORT}"
    )
    p.add_argument("--log-level", default=os.environ.get("FLAME_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        port = (
            args.port
            if args.port is not None
            else int(os.environ.get("FLAME_PORT") or DEFAULT_PORT)
        )
        service = ContentService(Config.from_env(os.environ))
    except ConfigError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return serve_app(create_app(service), args.host, port)
