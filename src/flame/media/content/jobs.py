"""The analysis worker: jobs persisted in the catalog's database, run off the request path.

A job is a row (``queued`` -> ``running`` -> ``done`` | ``failed``); `submit` writes it and
wakes a worker. `concurrency` workers (1 by default: one ffmpeg decode already keeps a core
busy) take jobs oldest first. A job found ``running`` at start-up was cut by a restart and is
queued again. When a job ends the asset's status becomes ``accepted`` or ``rejected`` (with
the reasons from the tenant's acceptance rule) or ``analysis_failed``, its technical and
quality parameters are stored, and a ``media_quality`` point goes to the CLMC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from flame.media.content.analysis import AnalysisError, Options, full_reference, no_reference, probe
from flame.media.content.catalog import Catalog, new_id
from flame.media.content.errors import NotFound
from flame.media.content.reporter import ClmcReporter
from flame.media.content.rules import evaluate
from flame.media.content.storage import BlobStore
from flame.media.errors import MediaError
from flame.media.tasks import TaskSet

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        reporter: ClmcReporter,
        *,
        options: Options | None = None,
        concurrency: int = 1,
        default_rule: dict[str, Any] | None = None,
        no_reference: bool = True,
    ) -> None:
        self.catalog = catalog
        self.db = catalog.db
        self.store = store
        self.reporter = reporter
        self.options = options or Options()
        self.concurrency = max(1, concurrency)
        self.default_rule = default_rule or {}
        self.nr = no_reference
        self.tasks = TaskSet("the analysis worker")
        self._wake = asyncio.Event()
        self.running: set[str] = set()
        self.done = 0
        self.failed = 0

    async def start(self) -> None:
        await self.db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
        for i in range(self.concurrency):
            self.tasks.spawn(self._loop(), name=f"analysis-worker-{i}")
        self._wake.set()

    async def close(self) -> None:
        await self.tasks.cancel_all("shutting down")

    async def rule(self, tenant: str) -> dict[str, Any]:
        value = await self.catalog.setting(tenant, "rule")
        return value if isinstance(value, dict) else dict(self.default_rule)

    async def submit(
        self, tenant: str, asset_id: str, reference: str | None = None
    ) -> dict[str, Any]:
        asset = await self.catalog.get(tenant, asset_id)
        job_id = new_id("j")
        ref = reference or asset.get("reference")
        await self.db.execute(
            "INSERT INTO jobs (id, tenant, asset, kind, state, reference, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, tenant, asset_id, "analysis", "queued", ref, time.time()),
        )
        await self.catalog.set_status(asset_id, "queued", None, job=job_id)
        self._wake.set()
        return await self.get(tenant, job_id)

    async def get(self, tenant: str, job_id: str) -> dict[str, Any]:
        rows = await self.db.query(
            "SELECT * FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
        )
        if not rows:
            raise NotFound(f"no job {job_id!r}", code="job_not_found")
        return _job(rows[0])

    async def list(
        self, tenant: str, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        sql = "SELECT * FROM jobs WHERE tenant = ?"
        params: list[Any] = [tenant]
        if state:
            sql += " AND state = ?"
            params.append(state)
        sql += " ORDER BY created_at DESC LIMIT ?"
        params.append(max(1, min(limit, 1000)))
        return [_job(r) for r in await self.db.query(sql, params)]

    async def counts(self) -> dict[str, int]:
        rows = await self.db.query("SELECT state, count(*) AS n FROM jobs GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    async def _claim(self) -> dict[str, Any] | None:
        def claim(tx: Any) -> dict[str, Any] | None:
            rows = tx.query("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1")
            if not rows:
                return None
            n = tx.execute(
                "UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'",
                (time.time(), rows[0]["id"]),
            )
            return rows[0] if n == 1 else None

        return await self.db.transaction(claim)

    async def _loop(self) -> None:
        while True:
            try:
                job = await self._claim()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is away: keep the worker, try again
                log.exception("cannot claim an analysis job; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            self.running.add(job["id"])
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: the job fails, the worker goes on
                log.exception("analysis job %s failed", job["id"])
                await self._finish(job, "failed", error=f"internal error: {type(exc).__name__}")
            finally:
                self.running.discard(job["id"])

    async def _run(self, job: dict[str, Any]) -> None:
        tenant, asset_id = job["tenant"], job["asset"]
        try:
            asset = await self.catalog.get(tenant, asset_id)
        except NotFound:
            await self._finish(job, "failed", error="the asset was deleted")
            return
        await self.catalog.set_status(asset_id, "analysing")
        started = time.monotonic()
        try:
            source = await self.store.source(asset["storage_key"])
            technical = await probe(source, self.options)
            quality: dict[str, Any] = {}
            if self.nr:
                quality["no_reference"] = await no_reference(source, technical, self.options)
            ref_id = job.get("reference")
            if ref_id:
                quality.update(await self._compare(tenant, ref_id, source, technical))
        except (MediaError, OSError) as exc:
            message = exc.message if isinstance(exc, MediaError) else str(exc)
            await self.catalog.set_status(asset_id, "analysis_failed", message)
            await self._finish(job, "failed", error=message)
            self.reporter.point(
                "media_quality", {"asset": asset_id, "failed": True, "error": message},
                {"verdict": "failed"},
            )  # fmt: skip
            return
        quality["seconds"] = round(time.monotonic() - started, 3)
        rule = await self.rule(tenant)
        fails, unchecked = evaluate(rule, technical, quality)
        quality["verdict"] = {
            "accepted": not fails,
            "reasons": fails,
            "not_checked": unchecked,
            "rule": rule,
        }
        status = "accepted" if not fails else "rejected"
        reason = "; ".join(fails) if fails else None
        await self.catalog.set_analysis(
            asset_id, technical=technical, quality=quality, status=status, reason=reason
        )
        await self._finish(job, "done", result={"status": status, "reasons": fails})
        self._report(asset, technical, quality, status)

    async def _compare(
        self, tenant: str, ref_id: str, source: str, technical: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            ref = await self.catalog.get(tenant, ref_id)
        except NotFound:
            return {"full_reference_skipped": f"the reference asset {ref_id!r} does not exist"}
        if not technical.get("video"):
            return {"full_reference_skipped": "no video stream to compare"}
        ref_source = await self.store.source(ref["storage_key"])
        ref_technical = ref.get("technical") or await probe(ref_source, self.options)
        try:
            fr = await full_reference(source, ref_source, ref_technical, self.options)
        except AnalysisError as exc:
            return {"full_reference_skipped": exc.message}
        fr["reference"] = ref_id
        return {"full_reference": fr}

    async def _finish(
        self,
        job: dict[str, Any],
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        await self.db.execute(
            "UPDATE jobs SET state = ?, error = ?, result = ?, finished_at = ? WHERE id = ?",
            (
                state,
                error,
                json.dumps(result) if result is not None else None,
                time.time(),
                job["id"],
            ),
        )
        if state == "done":
            self.done += 1
        else:
            self.failed += 1

    def _report(
        self, asset: dict[str, Any], technical: dict[str, Any], quality: dict[str, Any], status: str
    ) -> None:
        video = technical.get("video") or {}
        nr = quality.get("no_reference") or {}
        fr = quality.get("full_reference") or {}
        width, height = video.get("width"), video.get("height")
        duration = technical.get("duration_s")
        fields: dict[str, Any] = {
            "asset": asset["id"],
            "duration_s": _float(duration),
            "width": width,
            "height": height,
            "fps": _float(video.get("fps")),
            "bitrate": technical.get("bitrate"),
            "vmaf": _float(fr.get("vmaf")),
            "vmaf_min": _float(fr.get("vmaf_min")),
            "psnr": _float(fr.get("psnr_y")),
            "ssim": _float(fr.get("ssim")),
            "blockiness": _float((nr.get("blockiness") or {}).get("mean")),
            "blur": _float((nr.get("blur") or {}).get("mean")),
            "freeze_s": _float((nr.get("freeze") or {}).get("seconds")),
            "black_s": _float((nr.get("black") or {}).get("seconds")),
            "analysis_s": _float(quality.get("seconds")),
            "accepted": status == "accepted",
        }
        if duration:
            fields["analysis_per_media_s"] = round(float(quality["seconds"]) / float(duration), 4)
        tags = {
            "verdict": status,
            "video_codec": video.get("codec"),
            "resolution": f"{width}x{height}" if width and height else None,
        }
        self.reporter.point("media_quality", fields, tags)


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _job(row: dict[str, Any]) -> dict[str, Any]:
    result = row.get("result")
    return {
        "id": row["id"],
        "asset": row["asset"],
        "kind": row["kind"],
        "state": row["state"],
        "reference": row["reference"],
        "error": row["error"],
        "result": json.loads(result) if isinstance(result, str) else result,
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "finished_at": row["finished_at"],
    }
