"""The transcoder's job queue: bounded, with a fixed number of workers, each job one ffmpeg
run (every rung encoded once, packaged for HLS and DASH together) then VMAF per rendition.

A job goes ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. Its record is
written to ``<jobs>/<id>/job.json`` at each change, so a restarted SF still serves what it
finished (a job that was queued or running when the SF stopped is marked failed). Progress,
per-job and per-rendition figures go to the CLMC (measurements in docs/media-transcoding.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from flame.common.atomicfile import atomic_write
from flame.media.content.analysis import Options, full_reference, probe
from flame.media.content.errors import Conflict, ContentError, NotFound
from flame.media.content.reporter import ClmcReporter
from flame.media.hls import ffmpeg_exe
from flame.media.tasks import TaskSet
from flame.media.transcode.ladder import JobSpec, Rung, Source, ladder_argv, package_argv

__all__ = ["Job", "JobFailed", "QueueFull", "Settings", "TooManyJobs", "Transcoder"]

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
_ID = re.compile(r"[0-9a-f]{32}")
_NS = "{urn:mpeg:dash:schema:mpd:2011}"


class QueueFull(ContentError):
    code = "queue_full"
    http_status = 503


class TooManyJobs(ContentError):
    code = "too_many_jobs"
    http_status = 429


class JobFailed(Exception):
    """A job's own failure (bad source, ffmpeg refused it): the job fails, the SF goes on."""


@dataclass
class Settings:
    data_dir: Path
    workers: int = 1  # jobs encoding at once
    threads: int = 2  # ffmpeg/encoder threads per job (and libvmaf's)
    max_queue: int = 16  # queued jobs, all tenants: 503 beyond
    max_active_per_tenant: int = 4  # queued + running: 429 beyond
    max_source: int = 20 * 1024**3  # bytes of one source
    fetch_timeout_s: float = 30.0  # no byte of the source for this long fails the job
    job_timeout_s: float = 6 * 3600.0
    source_hosts: frozenset[str] = frozenset()  # when set, the only hosts a source URL may name
    package_only: bool = False  # the packager image: packaging jobs only, no encoding


@dataclass
class Job:
    id: str
    tenant: str
    owner: str
    spec: JobSpec
    state: str = "queued"
    progress: float = 0.0
    phase: str = "queued"
    error: str | None = None
    result: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    spec_doc: dict[str, Any] | None = field(default=None, repr=False)  # a reloaded job's spec

    FIELDS: ClassVar[tuple[str, ...]] = (
        "id", "tenant", "owner", "state", "progress", "phase", "error", "result",
        "created_at", "started_at", "finished_at",
    )  # fmt: skip

    def view(self) -> dict[str, Any]:
        doc = {k: getattr(self, k) for k in self.FIELDS}
        doc["progress"] = round(self.progress, 4)
        doc["spec"] = self.spec_doc if self.spec_doc is not None else self.spec.public()
        base = f"/o/{self.id}"
        doc["links"] = {
            "self": f"/v1/jobs/{self.id}",
            "hls": f"{base}/master.m3u8" if self.state == "done" else None,
            "dash": f"{base}/manifest.mpd" if self.state == "done" else None,
            "player": f"/play/{self.id}" if self.state == "done" else None,
        }
        return doc


class Transcoder:
    def __init__(self, settings: Settings, reporter: ClmcReporter) -> None:
        self.settings = settings
        self.reporter = reporter
        self.jobs_dir = settings.data_dir / "jobs"
        self.sources_dir = settings.data_dir / "sources"
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.tasks = TaskSet("the transcoder")
        self.counts = {"done": 0, "failed": 0, "cancelled": 0}
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.sources_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._reload)
        for i in range(self.settings.workers):
            self.tasks.spawn(self._worker(), name=f"transcode-worker-{i}")

    def _reload(self) -> None:
        for path in sorted(self.jobs_dir.glob("*/job.json")):
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not _ID.fullmatch(str(doc.get("id", ""))):
                continue
            job = Job(id=doc["id"], tenant=doc["tenant"], owner=doc.get("owner", ""),
                      spec=JobSpec(source=Source(path="reloaded"), rungs=()),
                      spec_doc=doc.get("spec"))  # fmt: skip
            for key in ("state", "progress", "phase", "error", "result", "created_at",
                        "started_at", "finished_at"):  # fmt: skip
                setattr(job, key, doc.get(key))
            if job.state in ACTIVE:
                job.state, job.phase = "failed", "failed"
                job.error = "the SF stopped while this job was queued or running"
                self._save(job)
            self.jobs[job.id] = job

    async def close(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel("the SF is closing")
        await self.tasks.cancel_all("closing")
        if self._client is not None:
            await self._client.aclose()

    # -- the API's operations ----------------------------------------------------------------

    def submit(self, tenant: str, owner: str, spec: JobSpec) -> Job:
        if self.settings.package_only and spec.kind != "package":
            raise Conflict(
                "this SF only packages existing renditions (TRANSCODE_MODE=package); send "
                '{"renditions": [...]}',
                code="transcoding_off",
            )
        queued = sum(1 for j in self.jobs.values() if j.state == "queued")
        if queued >= self.settings.max_queue:
            raise QueueFull(
                f"{queued} jobs are waiting, the most this SF queues; retry later",
                headers={"Retry-After": "30"},
            )
        mine = sum(1 for j in self.jobs.values() if j.tenant == tenant and j.state in ACTIVE)
        if mine >= self.settings.max_active_per_tenant:
            raise TooManyJobs(
                f"you have {mine} jobs queued or running, the most allowed per tenant",
                headers={"Retry-After": "30"},
                limit=self.settings.max_active_per_tenant,
            )
        job = Job(id=os.urandom(16).hex(), tenant=tenant, owner=owner, spec=spec)
        (self.jobs_dir / job.id).mkdir(parents=True)
        self.jobs[job.id] = job
        self._save(job)
        self.queue.put_nowait(job.id)
        return job

    def get(self, tenant: str, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.tenant != tenant:  # another tenant's job is a missing one
            raise NotFound(f"no job {job_id[:80]!r}")
        return job

    def list_jobs(self, tenant: str, state: str | None = None, limit: int = 100) -> list[Job]:
        found = [j for j in self.jobs.values() if j.tenant == tenant]
        if state:
            found = [j for j in found if j.state == state]
        return sorted(found, key=lambda j: j.created_at, reverse=True)[: max(1, min(limit, 1000))]

    def cancel(self, tenant: str, job_id: str) -> Job:
        job = self.get(tenant, job_id)
        if job.state == "queued":
            self._finish(job, "cancelled", None)  # the worker skips it when it comes up
        elif job.state == "running" and job.task is not None:
            job.task.cancel("cancelled by the tenant")
        return job

    async def delete(self, tenant: str, job_id: str) -> None:
        job = self.get(tenant, job_id)
        if job.state == "running":
            raise Conflict("the job is running: cancel it first", code="job_running")
        if job.state == "queued":
            self._finish(job, "cancelled", None)
        del self.jobs[job_id]
        await asyncio.to_thread(shutil.rmtree, self.jobs_dir / job_id, True)

    def output_dir(self, job_id: str) -> Path | None:
        """The directory of a finished job's outputs (None while it is not done)."""
        job = self.jobs.get(job_id)
        return self.jobs_dir / job_id / "out" if job is not None and job.state == "done" else None

    def stats(self) -> dict[str, int]:
        states = [j.state for j in self.jobs.values()]
        return {s: states.count(s) for s in ("queued", "running", "done", "failed", "cancelled")}

    # -- running -----------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            job_id = await self.queue.get()
            job = self.jobs.get(job_id)
            if job is None or job.state != "queued":
                continue
            job.task = self.tasks.spawn(self._run(job), name=f"transcode-{job.id}")
            try:
                await asyncio.wait({job.task})  # a cancelled job does not stop the worker
            finally:
                job.task = None

    async def _run(self, job: Job) -> None:
        job.state, job.phase, job.started_at = "running", "fetching", time.time()
        self._save(job)
        work = self.jobs_dir / job.id
        try:
            result = await asyncio.wait_for(self._transcode(job, work), self.settings.job_timeout_s)
        except asyncio.CancelledError:
            await asyncio.to_thread(shutil.rmtree, work / "out", True)
            self._finish(job, "cancelled", None)
            raise
        except TimeoutError:
            self._finish(job, "failed", f"the job ran past {self.settings.job_timeout_s:g} s")
        except JobFailed as exc:
            self._finish(job, "failed", str(exc))
        except Exception as exc:  # a job's failure is the job's, never the worker's
            log.exception("job %s failed", job.id)
            self._finish(job, "failed", f"internal error: {type(exc).__name__}")
        else:
            job.result = result
            self._finish(job, "done", None)
        finally:
            for path in work.glob("source*"):
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _transcode(self, job: Job, work: Path) -> dict[str, Any]:
        if job.spec.kind == "package":
            return await self._package(job, work)
        started = time.monotonic()
        source = await self._source(job.tenant, job.spec.source, work / "source")
        job.phase = "probing"
        technical = await probe(str(source))
        video = technical.get("video") or {}
        if not video.get("height"):
            raise JobFailed("the source has no video stream ffmpeg can read")
        duration = float(technical.get("duration_s") or 0.0)
        src_h, fps = int(video["height"]), float(video.get("fps") or 25.0)
        heights = []
        for rung in job.spec.rungs:
            if rung.height is not None and rung.height > src_h:
                raise JobFailed(f"rung {rung.name}: {rung.height}p is above the source's {src_h}p")
            heights.append(rung.height or src_h - src_h % 2)
        out = work / "out"
        await asyncio.to_thread(shutil.rmtree, out, True)
        out.mkdir()
        job.phase = "encoding"
        argv = ladder_argv(ffmpeg_exe(), source, out, job.spec, heights=heights, fps=fps,
                           has_audio=bool(technical.get("audio")),
                           threads=self.settings.threads)  # fmt: skip
        encode_started = time.monotonic()
        await self._ffmpeg(job, argv, duration)
        encode_s = time.monotonic() - encode_started
        renditions, audio = await asyncio.to_thread(_describe, out, job.spec, duration)
        vmaf_started = time.monotonic()
        if job.spec.vmaf:
            job.phase = "measuring"
            await self._vmaf(job, work, out, source, technical, renditions)
        result = {
            "source": {
                "width": video.get("width"),
                "height": src_h,
                "fps": fps,
                "duration_s": duration,
                "video_codec": video.get("codec"),
            },
            "renditions": renditions,
            "audio": audio,
            "manifests": {"hls": "master.m3u8", "dash": "manifest.mpd"},
            "encode_s": round(encode_s, 3),
            "speed": round(duration / encode_s, 3) if encode_s > 0 else None,
            "vmaf_s": round(time.monotonic() - vmaf_started, 3) if job.spec.vmaf else None,
            "total_s": round(time.monotonic() - started, 3),
            "bytes": sum(r["bytes"] for r in renditions) + (audio or {}).get("bytes", 0),
        }
        self._report_result(job, result)
        return result

    async def _package(self, job: Job, work: Path) -> dict[str, Any]:
        """Existing renditions packaged as they are (stream copy) into the same layout."""
        started = time.monotonic()
        paths = [await self._source(job.tenant, src, work / f"source-{i}")
                 for i, src in enumerate(job.spec.renditions)]  # fmt: skip
        job.phase = "probing"
        probes = await asyncio.gather(*(probe(str(p)) for p in paths))
        rungs, audio_from, duration = [], None, 0.0
        for i, (path, technical) in enumerate(zip(paths, probes, strict=True)):
            video = technical.get("video") or {}
            if not video.get("height"):
                raise JobFailed(f"rendition {i} has no video stream ffmpeg can read")
            if audio_from is None and technical.get("audio"):
                audio_from = path
            duration = max(duration, float(technical.get("duration_s") or 0.0))
            bitrate = int(video.get("bitrate") or technical.get("bitrate") or 0)
            rungs.append(Rung(name=f"r{i}-{video['height']}p", bitrate=bitrate,
                              height=int(video["height"])))  # fmt: skip
        out = work / "out"
        await asyncio.to_thread(shutil.rmtree, out, True)
        out.mkdir()
        job.phase = "packaging"
        argv = package_argv(ffmpeg_exe(), paths, out, segment_s=job.spec.segment_s,
                            audio_from=audio_from)  # fmt: skip
        package_started = time.monotonic()
        await self._ffmpeg(job, argv, duration)
        package_s = time.monotonic() - package_started
        spec = dataclasses.replace(job.spec, rungs=tuple(rungs), codec="copy")
        renditions, audio = await asyncio.to_thread(_describe, out, spec, duration)
        return {
            "renditions": renditions,
            "audio": audio,
            "manifests": {"hls": "master.m3u8", "dash": "manifest.mpd"},
            "package_s": round(package_s, 3),
            "total_s": round(time.monotonic() - started, 3),
            "bytes": sum(r["bytes"] for r in renditions) + (audio or {}).get("bytes", 0),
        }

    async def _source(self, tenant: str, src: Source, dest: Path) -> Path:
        if src.path is not None:
            path = self.sources_dir / tenant / src.path
            if not path.is_file():
                raise JobFailed(f"no uploaded source {src.path!r}")
            return path
        assert src.url is not None
        host = urlsplit(src.url).hostname or ""
        if self.settings.source_hosts and host not in self.settings.source_hosts:
            raise JobFailed(f"source host {host!r} is not in TRANSCODE_SOURCE_HOSTS")
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.fetch_timeout_s, trust_env=False, follow_redirects=False
            )
        headers = {"Authorization": f"Bearer {src.token}"} if src.token else {}
        got = 0
        try:
            async with self._client.stream("GET", src.url, headers=headers) as resp:
                if resp.status_code != 200:
                    raise JobFailed(f"the source URL answered {resp.status_code}")
                with dest.open("wb") as fh:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        got += len(chunk)
                        if got > self.settings.max_source:
                            raise JobFailed(f"the source is over {self.settings.max_source} bytes")
                        await asyncio.to_thread(fh.write, chunk)
        except httpx.HTTPError as exc:
            raise JobFailed(f"cannot fetch the source: {type(exc).__name__}") from None
        return dest

    async def _ffmpeg(self, job: Job, argv: list[str], duration: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stderr is not None
        tail: deque[str] = deque(maxlen=6)

        async def errors() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                tail.append(raw.decode("utf-8", "replace").rstrip()[:300])

        reader = asyncio.ensure_future(errors())
        last_report = 0.0
        values: dict[str, str] = {}
        try:
            async for raw in proc.stdout:
                key, _, value = raw.decode("ascii", "replace").strip().partition("=")
                values[key] = value
                if key != "progress":
                    continue
                done_s = _int_or(values.get("out_time_us"), 0) / 1e6
                if duration > 0:
                    job.progress = max(job.progress, min(0.999, done_s / duration))
                now = time.monotonic()
                if now - last_report >= 1.0:
                    last_report = now
                    self.reporter.point(
                        "media_transcode_progress",
                        {"job": job.id, "progress": round(job.progress, 4),
                         "fps": _float_or(values.get("fps")),
                         "speed": _float_or(values.get("speed", "").rstrip("x"))},
                        {"codec": job.spec.codec},
                    )  # fmt: skip
            await proc.wait()
            await reader
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            reader.cancel()
            raise
        if proc.returncode != 0:
            raise JobFailed(f"ffmpeg exited with {proc.returncode}: {' | '.join(tail)}")
        job.progress = 1.0

    async def _vmaf(
        self,
        job: Job,
        work: Path,
        out: Path,
        source: Path,
        technical: dict[str, Any],
        renditions: list[dict[str, Any]],
    ) -> None:
        options = Options(threads=self.settings.threads, vmaf_subsample=job.spec.vmaf_subsample)
        for rendition in renditions:
            joined = work / f"vmaf-{rendition['representation']}.mp4"
            await asyncio.to_thread(_join_fragments, out, rendition["representation"], joined)
            try:
                report = await full_reference(str(joined), str(source), technical, options)
            except Exception as exc:
                msg = getattr(exc, "message", exc)
                raise JobFailed(f"VMAF of {rendition['name']}: {msg}") from None
            finally:
                with contextlib.suppress(OSError):
                    joined.unlink()
            rendition["quality"] = report
            rendition["vmaf"] = report.get("vmaf")

    # -- records and measurements ------------------------------------------------------------

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        job.state, job.phase, job.error = state, state, error
        job.finished_at = time.time()
        self.counts[state] = self.counts.get(state, 0) + 1
        self._save(job)
        self.reporter.point(
            "media_transcode_job",
            {"job": job.id, "rungs": len(job.spec.rungs) or len(job.spec.renditions), "error": error,
             "total_s": round(job.finished_at - (job.started_at or job.created_at), 3),
             "wait_s": round((job.started_at or job.finished_at) - job.created_at, 3)},
            {"codec": job.spec.codec, "state": state},
        )  # fmt: skip

    def _report_result(self, job: Job, result: dict[str, Any]) -> None:
        for r in result["renditions"]:
            self.reporter.point(
                "media_transcode_rendition",
                {"job": job.id, "height": r["height"], "width": r["width"],
                 "bitrate_target": r["bitrate_target"], "bitrate": r["bitrate"],
                 "bytes": r["bytes"], "vmaf": r.get("vmaf"),
                 "vmaf_min": (r.get("quality") or {}).get("vmaf_min"),
                 "psnr_y": (r.get("quality") or {}).get("psnr_y")},
                {"codec": job.spec.codec, "rung": r["name"]},
            )  # fmt: skip
        scores = [r["vmaf"] for r in result["renditions"] if r.get("vmaf") is not None]
        self.reporter.point(
            "media_transcode_encode",
            {"job": job.id, "source_s": result["source"]["duration_s"],
             "encode_s": result["encode_s"], "speed": result["speed"],
             "vmaf_s": result["vmaf_s"], "bytes": result["bytes"],
             "vmaf_min": min(scores) if scores else None,
             "vmaf_mean": round(sum(scores) / len(scores), 4) if scores else None},
            {"codec": job.spec.codec},
        )  # fmt: skip

    def _save(self, job: Job) -> None:
        path = self.jobs_dir / job.id / "job.json"
        if not path.parent.is_dir():
            return
        atomic_write(path, json.dumps(job.view()))


def _int_or(value: str | None, default: int) -> int:
    try:
        return int(value or "")
    except ValueError:
        return default


def _float_or(value: str | None) -> float | None:
    try:
        return float(value or "")
    except ValueError:
        return None


def _segments(out: Path, rep: int) -> list[Path]:
    return sorted(out.glob(f"seg-{rep}-*.m4s"))


def _join_fragments(out: Path, rep: int, dest: Path) -> None:
    """A rendition as one fragmented MP4: its init segment then its media segments."""
    with dest.open("wb") as fh:
        for part in [out / f"init-{rep}.m4s", *_segments(out, rep)]:
            with part.open("rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)


def _describe(
    out: Path, spec: JobSpec, duration: float
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each rendition's figures, read from the MPD ffmpeg wrote and the segment files."""
    reps = {
        int(r.get("id", "-1")): r
        for r in ET.parse(out / "manifest.mpd").getroot().iter(f"{_NS}Representation")
    }
    renditions = []
    for i, rung in enumerate(spec.rungs):
        rep = reps.get(i)
        if rep is None:
            raise JobFailed(f"ffmpeg wrote no representation for rung {rung.name}")
        size = sum(p.stat().st_size for p in _segments(out, i))
        renditions.append({
            "name": rung.name, "representation": i, "codec": spec.codec,
            "codecs": rep.get("codecs"), "width": int(rep.get("width", "0")),
            "height": int(rep.get("height", "0")), "bitrate_target": rung.bitrate,
            "bitrate": round(size * 8 / duration) if duration > 0 else None,
            "bytes": size, "segments": len(_segments(out, i)), "hls": f"media_{i}.m3u8",
            "vmaf": None,
        })  # fmt: skip
    audio = None
    if len(spec.rungs) in reps:
        n = len(spec.rungs)
        size = sum(p.stat().st_size for p in _segments(out, n))
        audio = {"representation": n, "codecs": reps[n].get("codecs"), "bytes": size,
                 "hls": f"media_{n}.m3u8", "bitrate_target": spec.audio_bitrate}  # fmt: skip
    return renditions, audio
