"""Benchmark: the content SF (`python -m flame.media.content`) against doing the same by hand.

1. **Upload throughput**: one file through the SF (tus, one streamed PATCH; tus in 8 MiB
   PATCHes; multipart for a small file; and tus through a service router in front of the SF, as
   users upload on the platform: the SR's data plane with a table routing the SF's FQDN to it)
   against writing the same bytes straight to the storage (the filesystem the SF stores into: read + write + SHA-256, what the SF must do at
   least). With ``--s3`` also through the SF onto an S3 server (moto's, on loopback) against
   boto3's own `upload_file` to the same server.
2. **Analysis time per minute of video**: a generated 1080p clip (``--quick``: 720p) and a
   rendition of it uploaded to the SF, analysed by its worker (probe, no-reference filters,
   VMAF/PSNR/SSIM against the source), against the bare commands run by hand: PyAV probe,
   ``ffmpeg`` with the same no-reference filters, ``ffmpeg -lavfi libvmaf``.

    .venv/bin/python bench/media_ingest.py            # 512 MiB upload, 20 s of 1080p
    .venv/bin/python bench/media_ingest.py --quick    # 64 MiB, 3 s of 720p: under a minute

Ratios > 1 mean the SF is slower than the bare job. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
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
from flame.media.content.analysis import (  # noqa: E402
    Options,
    no_reference_argv,
    probe_pyav,
    vmaf_argv,
)
from flame.media.hls import ffmpeg_exe  # noqa: E402

KEY = "bench-key-0123456789abcdefghij"
MiB = 1024 * 1024


FQDN = "content.bench.example"


class Sr:
    """A service router (the real data plane, one worker) whose table sends FQDN to the SF."""

    def __init__(self, work: Path, sf_port: int) -> None:
        from flame.sfr.models import Endpoint, ForwardingTable, Route
        from flame.sfr.router import RouterConfig
        from flame.sfr.router.subscriber import save_table_file

        endpoint = Endpoint(sfe="bench.content.c1", fqdn=FQDN, cluster="c1", host="127.0.0.1",
                            port=sf_port)  # fmt: skip
        route = Route(endpoint, egress_sr="sr-bench", cost=0.0, latency_ms=0.0, path=("sr-bench",))
        table_file = work / "sr-table.json"
        save_table_file(table_file, ForwardingTable(sr="sr-bench", version=1,
                                                    routes={FQDN: (route,)}))  # fmt: skip
        self.port = free_port()
        config = RouterConfig(sr_id="sr-bench", port=self.port, workers=1,
                              table_file=str(table_file))  # fmt: skip
        runner = ("import json, sys\nfrom flame.sfr.router import RouterConfig, serve\n"
                  "serve(RouterConfig.from_dict(json.loads(sys.argv[1])), "
                  "on_ready=lambda h, p: print('READY', flush=True))")  # fmt: skip
        self.log = (work / "sr.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", runner, json.dumps(config.to_dict())],
                                     stdout=subprocess.PIPE, stderr=self.log)  # fmt: skip
        assert self.proc.stdout is not None
        if not self.proc.stdout.readline().startswith(b"READY"):
            raise SystemExit(f"the SR did not start; see {self.log.name}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


class Sf:
    def __init__(self, work: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (work / f"sf-{self.port}.log").open("wb")
        full = {
            **os.environ,
            "FLAME_TENANT": "bench",
            "MEDIA_API_KEYS": f"bench={KEY}",
            "MEDIA_DATA_DIR": str(work / f"sf-{self.port}"),
            "FLAME_PORT": str(self.port),
            "MEDIA_ANALYSIS": "off",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flame.media.content"], env=full, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=0.5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the content SF did not start; see {self.log.name}")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"},
                                 timeout=600, trust_env=False)  # fmt: skip

    def via(self, sr: Sr) -> None:
        """Send every request through `sr`, by the SF's FQDN (as a user on the platform)."""
        self.http.close()
        self.http = httpx.Client(base_url=sr.url, timeout=600, trust_env=False,
                                 headers={"Authorization": f"Bearer {KEY}", "Host": FQDN})  # fmt: skip

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def make_payload(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with path.open("wb") as fh:
        for _ in range(size // MiB):
            fh.write(block)


def file_chunks(path: Path, start: int = 0, length: int | None = None, chunk: int = MiB):
    with path.open("rb") as fh:
        fh.seek(start)
        left = length if length is not None else (path.stat().st_size - start)
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                return
            left -= len(data)
            yield data


def tus_upload(sf: Sf, path: Path, patch_size: int | None, **meta: str) -> tuple[float, str]:
    import base64

    size = path.stat().st_size
    pairs = {"filename": path.name, **meta}
    md = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())
    started = time.perf_counter()
    r = sf.http.post("/v1/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size),
                                             "Upload-Metadata": md})  # fmt: skip
    r.raise_for_status()
    loc = r.headers["location"]
    offset = 0
    step = patch_size or size
    while offset < size:
        n = min(step, size - offset)
        r = sf.http.patch(loc, content=file_chunks(path, offset, n), headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream", "Content-Length": str(n)})  # fmt: skip
        if r.status_code != 204:
            raise SystemExit(f"PATCH failed: {r.status_code} {r.text}")
        offset = int(r.headers["upload-offset"])
    return time.perf_counter() - started, r.headers["flame-asset"]


def direct_write(src: Path, dest_dir: Path) -> float:
    """What storing costs at least: read, hash, write a new file, rename into place."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    h = hashlib.sha256()
    tmp = dest_dir / "direct.part"
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while True:
            data = fin.read(MiB)
            if not data:
                break
            h.update(data)
            fout.write(data)
    os.replace(tmp, dest_dir / "direct")
    h.hexdigest()
    return time.perf_counter() - started


def best(fn: Any, rounds: int) -> float:
    return min(fn() for _ in range(rounds))


def bench_upload(work: Path, size: int, rounds: int, s3: bool) -> dict[str, Any]:
    payload = work / "payload.bin"
    make_payload(payload, size)
    out: dict[str, Any] = {"bytes": size}
    sf = Sf(work, MEDIA_MAX_UPLOAD=str(4 * size), MEDIA_QUOTA=str(100 * size))
    try:
        out["sf_tus_one_patch_s"] = best(lambda: tus_upload(sf, payload, None)[0], rounds)
        out["sf_tus_8mib_patches_s"] = best(lambda: tus_upload(sf, payload, 8 * MiB)[0], rounds)
        small = work / "small.bin"
        make_payload(small, 16 * MiB)

        def multipart() -> float:
            started = time.perf_counter()
            with small.open("rb") as fh:
                r = sf.http.post(
                    "/v1/assets", files={"file": ("small.bin", fh, "application/octet-stream")}
                )
            r.raise_for_status()
            return time.perf_counter() - started

        out["sf_multipart_16mib_s"] = best(multipart, rounds)
        out["direct_16mib_s"] = best(lambda: direct_write(small, work / "direct"), rounds)
        sr = Sr(work, sf.port)
        try:
            sf.via(sr)
            out["sr_tus_one_patch_s"] = best(lambda: tus_upload(sf, payload, None)[0], rounds)
        finally:
            sr.stop()
    finally:
        sf.stop()
    out["direct_write_s"] = best(lambda: direct_write(payload, work / "direct"), rounds)
    if s3:
        out.update(bench_s3(work, payload, rounds))
    payload.unlink()
    return out


def bench_s3(work: Path, payload: Path, rounds: int) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(creds)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="bench")
    config = TransferConfig(
        multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=2
    )

    def direct() -> float:
        started = time.perf_counter()
        s3.upload_file(str(payload), "bench", "direct", Config=config)
        return time.perf_counter() - started

    sf = Sf(work, MEDIA_STORAGE="s3://bench/sf", MEDIA_S3_ENDPOINT=endpoint,
            MEDIA_MAX_UPLOAD=str(4 * payload.stat().st_size), **creds)  # fmt: skip
    try:
        through = best(lambda: tus_upload(sf, payload, None)[0], rounds)
    finally:
        sf.stop()
        s3.close()
    direct_s = best(direct, rounds)
    server.stop()
    return {"s3_sf_tus_s": through, "s3_direct_boto3_s": direct_s}


def encode(out: Path, size: str, seconds: int, crf: int, source: Path | None = None) -> None:
    argv = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    if source is None:
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
                 "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]  # fmt: skip
    else:
        argv += ["-i", str(source), "-vf", f"scale={size.replace('x', ':')}"]
    argv += ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "96k", "-threads", "2", str(out)]  # fmt: skip
    subprocess.run(argv, check=True, timeout=1800)


def by_hand(source: Path, rendition: Path, opts: Options) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-hand-"))
    try:
        started = time.perf_counter()
        probe_pyav(str(rendition))
        probe_pyav(str(source))
        probe_s = time.perf_counter() - started
        t0 = time.perf_counter()
        subprocess.run(no_reference_argv(str(rendition), tmp / "m.txt", opts, True),
                       check=True, capture_output=True, timeout=3600)  # fmt: skip
        nr_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        video = probe_pyav(str(source))["video"]
        subprocess.run(vmaf_argv(str(rendition), str(source), tmp / "v.json", width=video["width"],
                                 height=video["height"], fps=video["fps"], options=opts),
                       check=True, capture_output=True, timeout=3600)  # fmt: skip
        fr_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "probe_s": probe_s,
        "no_reference_s": nr_s,
        "vmaf_s": fr_s,
        "total_s": probe_s + nr_s + fr_s,
    }


def bench_analysis(work: Path, size: str, rendition_size: str, seconds: int) -> dict[str, Any]:
    source, rendition = work / "source.mp4", work / "rendition.mp4"
    t0 = time.perf_counter()
    encode(source, size, seconds, 18)
    encode(rendition, rendition_size, seconds, 28, source=source)
    encode_s = time.perf_counter() - t0
    opts = Options()
    before = by_hand(source, rendition, opts)
    sf = Sf(work, MEDIA_ANALYSIS="on")
    try:
        _, src_id = tus_upload(sf, source, None)
        wait_settled(sf, src_id)
        started = time.perf_counter()
        _, rid = tus_upload(sf, rendition, None, reference=src_id)
        asset = wait_settled(sf, rid)
        wall = time.perf_counter() - started
    finally:
        sf.stop()
    # by hand before and after the SF, so that the load of a shared machine weighs on both
    after = by_hand(source, rendition, opts)
    hand = {k: (before[k] + after[k]) / 2 for k in before}
    quality = asset["quality"]
    return {
        "clip": f"{size} {seconds}s, rendition {rendition_size}",
        "encode_s": round(encode_s, 2),
        "vmaf": quality["full_reference"]["vmaf"],
        "sf_analysis_s": quality["seconds"],
        "sf_steps": {
            "no_reference_s": quality["no_reference"]["seconds"],
            "vmaf_s": quality["full_reference"]["seconds"],
        },
        "sf_upload_to_verdict_s": round(wall, 3),
        "by_hand_s": round(hand["total_s"], 3),
        "by_hand": {k: round(v, 3) for k, v in hand.items()},
        "by_hand_before_after_s": [round(before["total_s"], 3), round(after["total_s"], 3)],
        "sf_per_minute_s": round(quality["seconds"] * 60 / seconds, 2),
        "by_hand_per_minute_s": round(hand["total_s"] * 60 / seconds, 2),
    }


def wait_settled(sf: Sf, asset_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 3600
    while True:
        asset = sf.http.get(f"/v1/assets/{asset_id}").json()
        if asset["status"] in ("accepted", "rejected", "analysis_failed"):
            if asset["status"] == "analysis_failed":
                raise SystemExit(f"analysis failed: {asset['reason']}")
            return dict(asset)
        if time.monotonic() > deadline:
            raise SystemExit("analysis did not finish")
        time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="CI smoke run: under a minute")
    p.add_argument("--s3", action="store_true", help="also through the SF onto S3 (moto's server)")
    args = p.parse_args()
    size = (64 if args.quick else 512) * MiB
    rounds = 1 if args.quick else 3
    work = Path(tempfile.mkdtemp(prefix="flame-bench-media-", dir=os.environ.get("BENCH_DIR")))
    started = time.monotonic()
    try:
        up = bench_upload(work, size, rounds, args.s3)
        if args.quick:
            an = bench_analysis(work, "1280x720", "640x360", 3)
        else:
            an = bench_analysis(work, "1920x1080", "1280x720", 20)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mb = up["bytes"] / MiB

    def rate(seconds: float, n: float = mb) -> str:
        return f"{n / seconds:8.1f} MiB/s"

    print(f"upload of {mb:.0f} MiB (best of {rounds}):")
    print(f"  direct write + SHA-256           {rate(up['direct_write_s'])}")
    print(f"  SF, tus, one streamed PATCH      {rate(up['sf_tus_one_patch_s'])}  "
          f"ratio {up['sf_tus_one_patch_s'] / up['direct_write_s']:.2f}x")  # fmt: skip
    print(f"  SF, tus, 8 MiB PATCHes           {rate(up['sf_tus_8mib_patches_s'])}  "
          f"ratio {up['sf_tus_8mib_patches_s'] / up['direct_write_s']:.2f}x")  # fmt: skip
    print(f"  SR -> SF, tus, one PATCH         {rate(up['sr_tus_one_patch_s'])}  "
          f"ratio {up['sr_tus_one_patch_s'] / up['direct_write_s']:.2f}x "
          f"({up['sr_tus_one_patch_s'] / up['sf_tus_one_patch_s']:.2f}x the SF alone)")  # fmt: skip
    print(f"  SF, multipart, 16 MiB            {rate(up['sf_multipart_16mib_s'], 16)}  "
          f"ratio {up['sf_multipart_16mib_s'] / up['direct_16mib_s']:.2f}x (direct 16 MiB {rate(up['direct_16mib_s'], 16)})")  # fmt: skip
    if "s3_sf_tus_s" in up:
        print(f"  S3: SF, tus                      {rate(up['s3_sf_tus_s'])}  "
              f"ratio {up['s3_sf_tus_s'] / up['s3_direct_boto3_s']:.2f}x (boto3 direct {rate(up['s3_direct_boto3_s'])})")  # fmt: skip
    print(f"analysis of {an['clip']} (VMAF {an['vmaf']:.1f}):")
    print(f"  by hand (PyAV probe, ffmpeg no-ref, ffmpeg libvmaf)  {an['by_hand_s']:.2f} s (mean of "
          f"{an['by_hand_before_after_s'][0]:.2f} before, {an['by_hand_before_after_s'][1]:.2f} after the SF) "
          f"= {an['by_hand_per_minute_s']:.1f} s per minute of video")  # fmt: skip
    print(f"  SF worker                                            {an['sf_analysis_s']:.2f} s "
          f"= {an['sf_per_minute_s']:.1f} s per minute of video, "
          f"ratio {an['sf_analysis_s'] / an['by_hand_s']:.2f}x")  # fmt: skip
    print(
        f"  SF, upload start to verdict                          {an['sf_upload_to_verdict_s']:.2f} s"
    )
    result = {
        "upload": {k: round(v, 4) if isinstance(v, float) else v for k, v in up.items()},
        "upload_ratio_one_patch": round(up["sf_tus_one_patch_s"] / up["direct_write_s"], 3),
        "upload_ratio_8mib": round(up["sf_tus_8mib_patches_s"] / up["direct_write_s"], 3),
        "upload_ratio_through_sr": round(up["sr_tus_one_patch_s"] / up["direct_write_s"], 3),
        "analysis": an,
        "analysis_ratio": round(an["sf_analysis_s"] / an["by_hand_s"], 3),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
