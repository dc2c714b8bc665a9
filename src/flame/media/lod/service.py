"""The LOD SF put together: configuration from the environment, the store, builds, metrics.

    python -m flame.media.lod [--host H] [--port N]

| variable | default | what |
|---|---|---|
| ``LOD_DATA_DIR`` | ``$HOME/media-lod`` | models and their levels |
| ``LOD_LADDER`` | ``100,50,20,5`` | the levels, in percent of the source's triangles (100 is always kept) |
| ``LOD_SEED_DIR`` | | ``*.glb`` files shipped with the image, built for ``$FLAME_TENANT`` at start |
| ``LOD_API_KEYS`` | | tenant API keys, as the content SF's ``MEDIA_API_KEYS`` |
| ``LOD_AUTH_URL``, ``LOD_TENANTS`` | , ``$FLAME_TENANT`` | platform tokens checked with the orchestrator's ``/v1/whoami`` |
| ``LOD_MAX_UPLOAD`` | ``64MB`` | one .glb |
| ``LOD_MAX_TRIANGLES`` | ``2000000`` | triangles of one model |
| ``LOD_MAX_MODELS``, ``LOD_QUOTA`` | 200, ``4GB`` | per tenant |
| ``LOD_WORKERS``, ``LOD_MAX_PENDING`` | 1, 4 | builds at once; builds waiting beyond that are refused (503) |
| ``LOD_BUDGET_S``, ``LOD_DEFAULT_MBPS`` | 3, 5 | the chooser's time budget, the bandwidth assumed without hints |
| ``LOD_MAX_AGE`` | 300 | ``Cache-Control: max-age`` of a level (s) |
| ``CLMC_URL``, ``CLMC_TOKEN``, ``CLMC_DB`` | ``CLMC_DB``: ``$FLAME_TENANT`` | measurements |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame.common.errors import ConfigError
from flame.common.units import ScalarError, parse_scalar
from flame.media.content.auth import Authenticator, parse_api_keys
from flame.media.content.errors import (
    BadRequest,
    ContentError,
    Invalid,
    NotFound,
    TooLarge,
)
from flame.media.content.reporter import ClmcReporter
from flame.media.lod.build import BuildError, Level, build_lods
from flame.media.lod.choose import Policy
from flame.media.lod.glb import GlbError, inspect_glb
from flame.media.lod.store import MODEL_NAME, Model, ModelStore
from flame.media.serving import serve_app
from flame.media.tasks import TaskSet

__all__ = ["Busy", "Config", "LodService", "check_name", "main"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8095


class Busy(ContentError):
    code = "busy"
    http_status = 503


def _size(value: str, what: str) -> int:
    value = value.strip()
    if value.isdigit():
        return int(value)
    try:
        return int(parse_scalar(value, "scalar-unit.size"))
    except ScalarError as exc:
        raise ConfigError(f"{what}={value!r}: {exc}") from None


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < lo:
        raise ConfigError(f"{name}={raw!r}: expected a whole number >= {lo}")
    return int(raw)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if not value > 0:
        raise ConfigError(f"{name}={raw!r}: expected a number above 0")
    return value


def parse_ladder(spec: str) -> list[int]:
    """``"100,50,20,5"`` -> [100, 50, 20, 5]; 100 is added when missing."""
    percents = set()
    for item in re.split(r"[,\s]+", spec.strip()):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 100:
            raise ConfigError(f"LOD_LADDER: {item!r} is not a percentage from 1 to 100")
        percents.add(int(item))
    if len(percents) > 8:
        raise ConfigError("LOD_LADDER: at most 8 levels")
    return sorted(percents | {100}, reverse=True)


@dataclass
class Config:
    data_dir: Path
    ladder: list[int] = field(default_factory=lambda: [100, 50, 20, 5])
    seed_dir: Path | None = None
    tenant: str | None = None
    tenants: set[str] = field(default_factory=set)
    api_keys: str = ""
    auth_url: str | None = None
    max_upload: int = 64 * 1024**2
    max_triangles: int = 2_000_000
    max_models: int = 200
    quota: int = 4 * 1024**3
    workers: int = 1
    max_pending: int = 4
    policy: Policy = field(default_factory=Policy)
    max_age: int = 300
    clmc_url: str | None = None
    clmc_token: str | None = None
    clmc_db: str | None = None
    identity: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        home = Path(env.get("HOME") or Path.home())
        tenant = env.get("FLAME_TENANT") or None
        tenants = {t for t in re.split(r"[,\s]+", env.get("LOD_TENANTS", "")) if t}
        seed = env.get("LOD_SEED_DIR")
        return cls(
            data_dir=Path(env.get("LOD_DATA_DIR") or home / "media-lod"),
            ladder=parse_ladder(env.get("LOD_LADDER") or "100,50,20,5"),
            seed_dir=Path(seed) if seed else None,
            tenant=tenant,
            tenants=tenants or ({tenant} if tenant else set()),
            api_keys=env.get("LOD_API_KEYS", ""),
            auth_url=env.get("LOD_AUTH_URL") or None,
            max_upload=_size(env.get("LOD_MAX_UPLOAD") or "64MB", "LOD_MAX_UPLOAD"),
            max_triangles=_int(env, "LOD_MAX_TRIANGLES", 2_000_000),
            max_models=_int(env, "LOD_MAX_MODELS", 200),
            quota=_size(env.get("LOD_QUOTA") or "4GB", "LOD_QUOTA"),
            workers=_int(env, "LOD_WORKERS", 1),
            max_pending=_int(env, "LOD_MAX_PENDING", 4, lo=0),
            policy=Policy(
                budget_s=_float(env, "LOD_BUDGET_S", 3.0),
                default_mbps=_float(env, "LOD_DEFAULT_MBPS", 5.0),
            ),
            max_age=_int(env, "LOD_MAX_AGE", 300, lo=0),
            clmc_url=env.get("CLMC_URL") or None,
            clmc_token=env.get("CLMC_TOKEN") or None,
            clmc_db=env.get("CLMC_DB") or tenant,
            identity={
                k: env.get(f"FLAME_{k.upper()}", "")
                for k in ("sfc", "sfci", "sf", "sfe", "cluster", "tenant")
            },
        )


def check_name(name: str) -> None:
    if not MODEL_NAME.fullmatch(name):
        raise BadRequest(
            f"{name[:80]!r} is not a model name: letters, digits, '-' and '_', 64 at most",
            code="invalid_name",
        )


class LodService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = ModelStore(config.data_dir)
        self.auth = Authenticator(
            api_keys=parse_api_keys(config.api_keys, config.tenant) if config.api_keys else {},
            whoami_url=config.auth_url,
            tenants=config.tenants,
        )
        self.reporter = ClmcReporter(
            config.clmc_url, config.clmc_token, config.clmc_db, config.identity
        )
        self._builds = asyncio.Semaphore(config.workers)
        self._pending = 0
        # One build per model at a time; a lock lives while someone holds or awaits it.
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._served: dict[tuple[str, str, str], list[int]] = {}  # (model, lod, how) -> n, bytes
        self._stop = asyncio.Event()
        self._tasks = TaskSet("the LOD SF")

    async def start(self) -> None:
        await asyncio.to_thread(self.store.load)
        if self.config.seed_dir is not None and self.config.tenant:
            await self.seed(self.config.seed_dir, self.config.tenant)
        self._tasks.spawn(self._report(), name="lod-report")

    async def close(self) -> None:
        self._stop.set()
        await self._tasks.cancel_all("shutting down")
        await self.reporter.flush()
        await self.reporter.close()
        await self.auth.close()

    async def seed(self, directory: Path, tenant: str) -> None:
        """Build the models shipped with the image (skipped when built from the same bytes)."""
        for path in sorted(directory.glob("*.glb")):
            name = path.stem
            data = path.read_bytes()
            known = self.store.get(tenant, name)
            digest = hashlib.sha256(data).hexdigest()
            if known is not None and known.manifest["source"]["sha256"] == digest:
                continue
            try:
                with self.admitted():
                    await self.put_model(tenant, name, data, seeded=True)
            except ContentError as exc:
                log.error("shipped model %s refused: %s", path, exc.message)

    # -- uploads -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """A place for one upload, from its first body byte to its levels on disk: at most
        `workers` building and `max_pending` waiting, each holding at most `max_upload` bytes;
        beyond that a 503 before the body is read."""
        if self._pending >= self.config.workers + self.config.max_pending:
            raise Busy("too many models are being simplified; retry in a moment",
                       headers={"Retry-After": "2"})  # fmt: skip
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def put_model(
        self, tenant: str, name: str, data: bytes, *, seeded: bool = False
    ) -> Model:
        """Check, simplify and store a model; call it inside `admitted`."""
        check_name(name)
        if len(data) > self.config.max_upload:
            raise TooLarge(f"the model is over {self.config.max_upload} bytes", code="too_large")
        try:
            info = await asyncio.to_thread(
                inspect_glb, data, max_triangles=self.config.max_triangles
            )
        except GlbError as exc:
            raise (TooLarge if exc.code in ("too_large", "too_many_triangles") else Invalid)(
                exc.message, code=exc.code
            ) from None
        known = self.store.get(tenant, name)
        if known is None and len(self.store.of(tenant)) >= self.config.max_models:
            raise TooLarge(f"tenant already has {self.config.max_models} models", code="quota")
        if self.store.usage(tenant) + len(data) * 2 > self.config.quota:
            raise TooLarge(f"the tenant's LOD storage quota ({self.config.quota} B) is reached",
                           code="quota_exceeded")  # fmt: skip
        async with self._lock(tenant, name), self._builds:
            return await self._build(tenant, name, data, info.generator, seeded)

    async def _build(
        self, tenant: str, name: str, data: bytes, generator: str | None, seeded: bool
    ) -> Model:
        staged = await asyncio.to_thread(self.store.staging, tenant)
        started = time.perf_counter()
        try:
            levels = await asyncio.to_thread(build_lods, data, self.config.ladder, staged)
            await asyncio.to_thread((staged / "source.glb").write_bytes, data)
        except BuildError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            raise Invalid(exc.message, code=exc.code) from None
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        seconds = time.perf_counter() - started
        manifest = self._manifest(name, data, levels, generator, seconds, seeded)
        model = await asyncio.to_thread(self.store.commit, tenant, name, staged, manifest)
        self.reporter.point(
            "lod_build",
            {
                "seconds": seconds,
                "source_bytes": len(data),
                "triangles": levels[0].triangles,
                "levels": len(levels),
            },
            {"model": name},
        )
        log.info("model %s/%s: %d levels in %.2f s", tenant, name, len(levels), seconds)
        return model

    def _manifest(
        self, name: str, data: bytes, levels: list[Level], generator: str | None,
        seconds: float, seeded: bool,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "model": name,
            "source": {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "triangles": levels[0].triangles,
                "generator": generator,
                "shipped": seeded,
            },
            "lods": [level.as_dict() for level in levels],
            "simplifier": "fast-simplification (Fast-Quadric-Mesh-Simplification)",
            "build_s": round(seconds, 4),
            "created_at": time.time(),
        }

    def _lock(self, tenant: str, name: str) -> asyncio.Lock:
        lock = self._locks.get((tenant, name))
        if lock is None:
            lock = self._locks[(tenant, name)] = asyncio.Lock()
        return lock

    async def delete(self, tenant: str, name: str) -> None:
        async with self._lock(tenant, name):  # not while a new version is being committed
            if not await asyncio.to_thread(self.store.delete, tenant, name):
                raise NotFound(f"no model {name!r}")

    # -- metrics -------------------------------------------------------------------------------

    def served(self, model: str, lod: str, how: str, size: int) -> None:
        counts = self._served.setdefault((model, lod, how), [0, 0])
        counts[0] += 1
        counts[1] += size

    def flush_counts(self) -> None:
        served, self._served = self._served, {}
        for (model, lod, how), (n, size) in served.items():
            self.reporter.point(
                "lod_requests", {"requests": n, "bytes": size},
                {"model": model, "lod": lod, "selection": how},
            )  # fmt: skip

    async def _report(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.reporter.interval_s)
            self.flush_counts()
            await self.reporter.flush()


def main(argv: list[str] | None = None) -> int:
    import sys  # noqa: PLC0415

    from flame.media.lod.app import create_app  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="python -m flame.media.lod", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default=os.environ.get("FLAME_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=None)
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
        service = LodService(Config.from_env(os.environ))
    except (ConfigError, ValueError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return serve_app(create_app(service), args.host, port)
