"""Benchmark: a 3-rung H.264 ladder through the transcoder SF against plain ffmpeg, same run.

The source is a 40 s 1080p testsrc2 clip with a tone (``--quick``: 8 s of 720p), made with the
bundled ffmpeg. The ladder is 1080p 5 Mb/s, 720p 2.8 Mb/s, 360p 800 kb/s (``--quick``: 720p,
480p, 240p), x264 ``veryfast``, 2 s closed GOPs, AAC 128 kb/s, CMAF segments of 2 s with HLS
and DASH manifests. Three ways, alternated, each round:

- **SF**: ``python -m flame.media.transcode`` as a process, the source uploaded beforehand;
  timed from ``POST /v1/jobs`` to the job reading ``done`` (probe, encode+package, describe;
  VMAF off, as the peers measure no quality).
- **ffmpeg, same command**: the SF's own ffmpeg command (one decode, a split, three encoders,
  the DASH muxer with HLS playlists) run by hand: what the SF adds on top of ffmpeg.
- **ffmpeg, one run per rung**: how a ladder is usually made by hand: each rung encoded by its
  own ffmpeg (same encoder settings) to an MP4, then one stream-copy packaging run.

Ratios are peer / SF (> 1: the SF is faster), for wall time and for CPU seconds (the SF's
process and its ffmpeg children, from /proc; the by-hand runs' from getrusage): on a shared,
loaded machine the CPU ratio is the steadier one. Rounds alternate A B C / C B A. The last
line is one JSON object.

    .venv/bin/python bench/transcode_ladder.py            # 40 s of 1080p, 2 rounds
    .venv/bin/python bench/transcode_ladder.py --quick    # 8 s of 720p, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from flame.common.ports import free_port  # noqa: E402
from flame.media.hls import ffmpeg_exe  # noqa: E402
from flame.media.transcode.ladder import ladder_argv, package_argv, parse_job  # noqa: E402

KEY = "bench-transcode-key-0123456789abcdef"


def sf_cpu(pid: int) -> float:
    """CPU seconds of a process and its waited-for children (the SF and its ffmpeg runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the by-hand runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_source(out: Path, size: str, seconds: int) -> Path:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", str(out)],
        check=True,
    )  # fmt: skip
    return out


class Sf:
    """The transcoder SF as a process on a free loopback port."""

    def __init__(self, work: Path, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HOME": str(work), "TRANSCODE_DATA_DIR": str(work / "sf"),
               "FLAME_TENANT": "bench", "MEDIA_API_KEYS": f"bench={KEY}",
               "TRANSCODE_THREADS": str(threads), "FLAME_PORT": str(self.port)}  # fmt: skip
        self.log = (work / "sf.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "flame.media.transcode"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=600,
                                 headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the transcoder SF did not start; see its log")
            time.sleep(0.1)

    def run(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        job_id = self.http.post("/v1/jobs", json=body).json()["id"]
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)  # a client polling a long job; each poll costs the SF some CPU
        took = time.monotonic() - started
        if job["state"] != "done":
            raise SystemExit(f"the job failed: {job['error']}")
        self.http.delete(f"/v1/jobs/{job_id}")
        return took, job

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def timed(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def per_rung(source: Path, work: Path, body: dict[str, Any], threads: int) -> float:
    """Each rung by its own ffmpeg (the SF's encoder settings), then one packaging run."""
    spec = parse_job(body)
    started = time.monotonic()
    outs = []
    for i, rung in enumerate(spec.rungs):
        out = work / f"rung-{i}.mp4"
        assert rung.height is not None
        argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                "-i", str(source), "-vf", f"scale=-2:{rung.height}:flags=bicubic,format=yuv420p",
                "-c:v", "libx264", "-preset", spec.preset, "-g", "50", "-keyint_min", "50",
                "-sc_threshold", "0", "-threads", str(threads), "-b:v", str(rung.bitrate),
                "-maxrate", str(int(rung.bitrate * 1.1)), "-bufsize", str(rung.bitrate * 2)]  # fmt: skip
        argv += ["-c:a", "aac", "-b:a", "128k", "-ac", "2"] if i == 0 else ["-an"]
        subprocess.run([*argv, str(out)], check=True)
        outs.append(out)
    pkg = work / "per-rung"
    shutil.rmtree(pkg, ignore_errors=True)
    pkg.mkdir()
    subprocess.run(package_argv(ffmpeg_exe(), outs, pkg, segment_s=2, audio_from=outs[0]),
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="CI smoke run: 8 s of 720p, one round")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args()
    size, seconds = ("1280x720", 8) if args.quick else ("1920x1080", 40)
    heights = (720, 480, 240) if args.quick else (1080, 720, 360)
    rounds = args.rounds or (1 if args.quick else 2)
    threads = os.cpu_count() or 2
    body = {"source": {"path": "source.mp4"}, "codec": "h264", "preset": "veryfast",
            "segment_s": 2, "vmaf": False,
            "rungs": [{"height": heights[0], "bitrate": "5M"}, {"height": heights[1], "bitrate": "2.8M"},
                      {"height": heights[2], "bitrate": "800k"}]}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="flame-bench-ladder-"))
    sf: Sf | None = None
    try:
        source = make_source(work / "source.mp4", size, seconds)
        sf = Sf(work, threads)
        r = sf.http.put("/v1/sources/source.mp4", content=source.read_bytes())
        assert r.status_code == 201, r.text
        by_hand = work / "by-hand"
        same_argv = ladder_argv(ffmpeg_exe(), source, by_hand, parse_job(body),
                                heights=list(heights), fps=25.0, has_audio=True,
                                threads=threads)  # fmt: skip
        ours, same, rung = [], [], []
        cpu: dict[str, list[float]] = {"ours": [], "same": [], "rung": []}
        job: dict[str, Any] = {}

        def run_ours() -> None:
            nonlocal job
            assert sf is not None
            before = sf_cpu(sf.proc.pid)
            took, job = sf.run(body)
            ours.append(took)
            cpu["ours"].append(sf_cpu(sf.proc.pid) - before)

        def run_same() -> None:
            shutil.rmtree(by_hand, ignore_errors=True)
            by_hand.mkdir()
            before = children_cpu()
            same.append(timed(same_argv))
            cpu["same"].append(children_cpu() - before)

        def run_rung() -> None:
            before = children_cpu()
            rung.append(per_rung(source, work, body, threads))
            cpu["rung"].append(children_cpu() - before)

        order = [run_ours, run_same, run_rung]
        for i in range(rounds):  # A B C, then C B A: drift in the machine's load hits all
            for step in order if i % 2 == 0 else reversed(order):
                step()
    finally:
        if sf is not None:
            sf.close()
        shutil.rmtree(work, ignore_errors=True)
    t_ours, t_same, t_rung = (statistics.median(x) for x in (ours, same, rung))
    c_ours, c_same, c_rung = (statistics.median(cpu[k]) for k in ("ours", "same", "rung"))
    print(f"ladder of {seconds} s of {size} into {'/'.join(f'{h}p' for h in heights)}, x264 "
          f"veryfast, {threads} threads, median of {rounds} (wall s, CPU s):")  # fmt: skip
    print(
        f"  transcoder SF (POST -> done)        {t_ours:7.2f} s {c_ours:7.2f} cpu  "
        f"(encode {job['result']['encode_s']:.2f} s)"
    )
    print(
        f"  ffmpeg, the same command by hand    {t_same:7.2f} s {c_same:7.2f} cpu  "
        f"ratio {t_same / t_ours:.2f} wall, {c_same / c_ours:.2f} cpu"
    )
    print(
        f"  ffmpeg, one run per rung + package  {t_rung:7.2f} s {c_rung:7.2f} cpu  "
        f"ratio {t_rung / t_ours:.2f} wall, {c_rung / c_ours:.2f} cpu"
    )
    print(json.dumps({
        "bench": "transcode_ladder", "quick": args.quick, "source": f"{size}x{seconds}s",
        "rounds": rounds, "threads": threads, "ours_s": round(t_ours, 3),
        "ffmpeg_same_command_s": round(t_same, 3), "ffmpeg_per_rung_s": round(t_rung, 3),
        "ratio_same_command": round(t_same / t_ours, 3),
        "ratio_per_rung": round(t_rung / t_ours, 3),
        "ours_cpu_s": round(c_ours, 2), "ffmpeg_same_command_cpu_s": round(c_same, 2),
        "ffmpeg_per_rung_cpu_s": round(c_rung, 2),
        "cpu_ratio_same_command": round(c_same / c_ours, 3),
        "cpu_ratio_per_rung": round(c_rung / c_ours, 3),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
