"""The transcoder SF end to end on loopback (MC-7/8, MC-9): real HTTP, real ffmpeg, the real CLMC.
A ladder is encoded once into CMAF fragments that the HLS playlists and the DASH MPD both name;
every rendition gets a VMAF score; outputs are served with the right types, ranges and caching;
hostile requests get JSON 4xx; the queue is bounded; a running job can be cancelled."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from eventually import eventually
from flame.common.ports import free_port
from flame.media.hls import ffmpeg_exe
from media.contentkit import KEY_A, content_server, create, make_clip, patch

from .kit import OTHER_KEY, Running, transcoder, upload, wait_job

LADDER = [{"height": 360, "bitrate": "800k"}, {"height": 180, "bitrate": "200k"},
          {"bitrate": "400k", "name": "transrated"}]  # fmt: skip
NS = "{urn:mpeg:dash:schema:mpd:2011}"


@pytest.fixture(scope="module")
def clmc_m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from flame.clmc.service import ClmcService
    from flame.clmc.tenancy import StaticDelegations
    from flame.common.auth import Role, TokenStore

    d = tmp_path_factory.mktemp("clmc")
    store = TokenStore(d / "tokens.json")
    token = store.issue("acme-transcoder", Role.TENANT, "acme")
    service = ClmcService(d / "clmc", store, fsync=False, delegations=StaticDelegations({}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, every=0.02, what="the server to start")
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def sf(tmp_path_factory: pytest.TempPathFactory, clmc_m: tuple[str, str]) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("transcoder")
    with transcoder(data, CLMC_URL=clmc_m[0], CLMC_TOKEN=clmc_m[1],
                    TRANSCODE_MAX_SOURCE="5MB") as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def ladder(sf: Running, clip: Path) -> dict[str, Any]:
    """The H.264 ladder with a transrating rung, done once for the module's tests."""
    with sf.client() as http:
        upload(http, "src.mp4", clip)
        r = http.post(
            "/v1/jobs", json={"source": {"path": "src.mp4"}, "rungs": LADDER, "vmaf_subsample": 2}
        )
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        return wait_job(http, r.json()["id"])


def out(sf: Running, job: dict[str, Any]) -> Path:
    return sf.service.config.settings.data_dir / "jobs" / job["id"] / "out"


def test_mc7_a_ladder_is_encoded_once_and_every_rendition_scored(ladder: dict[str, Any]) -> None:
    assert ladder["state"] == "done", ladder["error"]
    assert ladder["progress"] == 1.0
    res = ladder["result"]
    assert res["source"]["height"] == 360
    got = {r["name"]: r for r in res["renditions"]}
    assert [(r["width"], r["height"]) for r in res["renditions"]] == [(640, 360), (320, 180),
                                                                      (640, 360)]  # fmt: skip
    for r in res["renditions"]:
        assert r["codecs"].startswith("avc1.")
        assert 0.6 < r["bitrate"] / r["bitrate_target"] < 1.4, r  # rate control held the target
        assert r["segments"] == 2  # 4 s in 2 s segments
        assert r["quality"]["model"] == "vmaf_v0.6.1"
        assert r["quality"]["compared_at"] == "640x360"
        assert r["quality"]["frames"] == 50  # 100 frames, every 2nd scored
        assert r["quality"]["subsample"] == 2
    # quality follows bits: the transrated rung sits between the full and the small one
    assert got["180p-200k"]["vmaf"] < got["transrated"]["vmaf"] < got["360p-800k"]["vmaf"] <= 100
    assert got["180p-200k"]["vmaf"] > 40
    assert res["audio"]["codecs"] == "mp4a.40.2"
    assert res["speed"] > 0
    assert ladder["links"]["hls"] == f"/o/{ladder['id']}/master.m3u8"


def _hls_segments(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_mc9_hls_and_dash_name_the_same_cmaf_segments(sf: Running, ladder: dict[str, Any]) -> None:
    with httpx.Client(base_url=sf.url, trust_env=False) as anon:  # outputs need no token
        master = anon.get(ladder["links"]["hls"]).text
        mpd = ET.fromstring(anon.get(ladder["links"]["dash"]).content)
        variants = re.findall(r"#EXT-X-STREAM-INF:([^\n]+)\n([^\n]+)", master)
        assert [re.search(r"RESOLUTION=(\d+x\d+)", a)[1] for a, _ in variants] == [  # type: ignore[index]
            "640x360", "320x180", "640x360"]  # fmt: skip
        assert 'GROUP-ID="group_A1"' in master
        reps = {r.get("id"): r for r in mpd.iter(f"{NS}Representation")}
        assert mpd.get("type") == "static"
        assert set(reps) == {"0", "1", "2", "3"}  # three video rungs and the audio
        for i, (attrs, uri) in enumerate(variants):
            media = anon.get(f"/o/{ladder['id']}/{uri}").text
            assert "#EXT-X-ENDLIST" in media
            init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', media)[1]  # type: ignore[index]
            hls_files = [init, *_hls_segments(media)]
            rep = reps[str(i)]
            template = next(rep.iter(f"{NS}SegmentTemplate"))
            dash_files = [template.get("initialization", "").replace("$RepresentationID$", str(i))]
            for n in range(1, len(hls_files)):
                dash_files.append(template.get("media", "").replace("$RepresentationID$", str(i))
                                  .replace("$Number%05d$", f"{n:05d}"))  # fmt: skip
            assert hls_files == dash_files  # one set of fragments, two manifests
            hls_bw = int(re.search(r"BANDWIDTH=(\d+)", attrs)[1])  # type: ignore[index]
            assert hls_bw > int(rep.get("bandwidth", "0"))  # the video's and the audio's
            for name in hls_files:
                assert anon.head(f"/o/{ladder['id']}/{name}").status_code == 200


def test_mc7_each_rendition_decodes_whole_from_its_playlist(
    sf: Running, ladder: dict[str, Any]
) -> None:
    d = out(sf, ladder)
    for i in range(3):
        done = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-allowed_extensions", "ALL",
             "-i", str(d / f"media_{i}.m3u8"), "-map", "0:v:0", "-f", "null", "-"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-500:]
        frames = re.findall(r"frame=\s*(\d+)", done.stderr)
        assert frames
        assert int(frames[-1]) == 100


def test_mc9_media_types_ranges_validators_and_caching(sf: Running, ladder: dict[str, Any]) -> None:
    base = f"/o/{ladder['id']}"
    with httpx.Client(base_url=sf.url, trust_env=False) as anon:
        cases = {"master.m3u8": "application/vnd.apple.mpegurl",
                 "manifest.mpd": "application/dash+xml", "init-0.m4s": "video/mp4",
                 "seg-0-00001.m4s": "video/iso.segment"}  # fmt: skip
        for name, ctype in cases.items():
            r = anon.get(f"{base}/{name}")
            assert r.status_code == 200
            assert r.headers["content-type"] == ctype
            assert r.headers["access-control-allow-origin"] == "*"
            if name.endswith(".m4s"):
                assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            else:
                assert r.headers["cache-control"] == "public, max-age=10"
        seg = anon.get(f"{base}/seg-0-00001.m4s")
        body = seg.content
        assert body[4:8] in (b"styp", b"moof")
        r = anon.get(f"{base}/seg-0-00001.m4s", headers={"Range": "bytes=100-199"})
        assert (r.status_code, r.content) == (206, body[100:200])
        assert r.headers["content-range"] == f"bytes 100-199/{len(body)}"
        r = anon.get(f"{base}/seg-0-00001.m4s", headers={"Range": "bytes=-10"})
        assert r.content == body[-10:]
        r = anon.get(f"{base}/seg-0-00001.m4s", headers={"Range": f"bytes={len(body)}-"})
        assert r.status_code == 416
        assert r.json()["error"] == "range_not_satisfiable"
        r = anon.get(f"{base}/seg-0-00001.m4s", headers={"If-None-Match": seg.headers["etag"]})
        assert r.status_code == 304
        r = anon.get(f"{base}/seg-0-00001.m4s", headers={"Range": "bytes=0-9", "If-Range": '"x"'})
        assert r.status_code == 200  # a stale If-Range gets the whole file
        head = anon.head(f"{base}/seg-0-00001.m4s")
        assert (head.status_code, head.headers["content-length"]) == (200, str(len(body)))
        for bad in ("..%2Fjob.json", "job.json", ".hidden", "nope.m4s", "a%00b"):
            r = anon.get(f"{base}/{bad}")
            assert r.status_code == 404, bad
            assert r.json()["error"] == "not_found"
        assert anon.get("/o/" + "0" * 32 + "/master.m3u8").status_code == 404
        assert anon.get("/o/../etc/passwd").status_code == 404
        page = anon.get(f"/play/{ladder['id']}", params={"player": "dash"})
        assert "dash.all.min.js" in page.text
        js = anon.get("/players/hls.min.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert js.text.startswith("/*! hls.js")


def test_mc7_per_job_and_per_rendition_figures_reach_the_clmc(
    sf: Running, ladder: dict[str, Any], clmc_m: tuple[str, str]
) -> None:
    eventually(lambda: sf.service.reporter.stats()["sent"] >= 5, what="5 reports sent")
    url, token = clmc_m
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      trust_env=False) as q:  # fmt: skip

        def rows(query: str) -> list[Any]:
            doc = q.get("/query", params={"db": "acme", "q": query}).json()
            series = doc["results"][0].get("series") or [{"values": []}]
            return list(series[0]["values"])

        got = rows(
            f'SELECT "vmaf", "height" FROM "media_transcode_rendition" WHERE "job" = \'{ladder["id"]}\''
        )
        assert sorted(v[2] for v in got) == [180, 360, 360]
        scores = {r["vmaf"] for r in ladder["result"]["renditions"]}
        assert {v[1] for v in got} == scores
        done = rows(
            f'SELECT "total_s" FROM "media_transcode_job" WHERE "state" = \'done\' AND "job" = \'{ladder["id"]}\''
        )
        assert len(done) == 1
        enc = rows(
            f'SELECT "speed", "vmaf_min" FROM "media_transcode_encode" WHERE "job" = \'{ladder["id"]}\''
        )
        assert enc[0][2] == min(scores)


def test_mc7_hevc_ladder_decodes_with_ffmpeg(sf: Running, ladder: dict[str, Any]) -> None:
    """Chromium here has no HEVC decoder (see test_playback): HEVC is validated by decoding."""
    with sf.client() as http:
        r = http.post("/v1/jobs", json={"source": {"path": "src.mp4"}, "codec": "hevc", "vmaf": False,
                                        "rungs": [{"height": 360, "bitrate": "500k"},
                                                  {"height": 180, "bitrate": "150k"}]})  # fmt: skip
        job = wait_job(http, r.json()["id"])
    assert job["state"] == "done", job["error"]
    d = out(sf, job)
    assert "hvc1.1.6" in (d / "master.m3u8").read_text()
    for i, rendition in enumerate(job["result"]["renditions"]):
        assert rendition["codecs"].startswith("hvc1.")
        assert rendition["vmaf"] is None
        assert b"hvcC" in (d / f"init-{i}.m4s").read_bytes()
        done = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(d / "manifest.mpd"),
             "-map", f"0:v:{i}", "-f", "null", "-"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-500:]
        assert "Video: hevc" in done.stderr
        assert int(re.findall(r"frame=\s*(\d+)", done.stderr)[-1]) == 100


def test_mc7_av1_with_the_bundled_svt_av1(sf: Running, ladder: dict[str, Any]) -> None:
    with sf.client() as http:
        r = http.post("/v1/jobs", json={"source": {"path": "src.mp4"}, "codec": "av1", "vmaf_subsample": 5,
                                        "rungs": [{"height": 180, "bitrate": "150k"}]})  # fmt: skip
        job = wait_job(http, r.json()["id"])
    assert job["state"] == "done", job["error"]
    (rendition,) = job["result"]["renditions"]
    assert rendition["codecs"].startswith("av01.")
    assert 30 < rendition["vmaf"] < 100


def test_hostile_requests_get_json_4xx(sf: Running, ladder: dict[str, Any]) -> None:
    with httpx.Client(base_url=sf.url, trust_env=False) as anon:
        r = anon.post("/v1/jobs", json={})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
    with sf.client() as http:
        r = http.post("/v1/jobs", content=b"{nope")
        assert (r.status_code, r.json()["error"]) == (400, "invalid_json")
        r = http.post(
            "/v1/jobs",
            json={"source": {"path": "src.mp4"}, "rungs": [{"height": 7, "bitrate": "1M"}]},
        )
        assert (r.status_code, r.json()["error"]) == (422, "invalid_job")
        assert r.json()["path"] == "rungs[0].height"
        r = http.post("/v1/jobs", content=b"[" * 70_000)
        assert r.status_code == 413
        r = http.put("/v1/sources/big.mp4", content=b"\0" * (5 * 10**6 + 1))
        assert (r.status_code, r.json()["error"]) == (413, "source_too_large")
        assert http.put("/v1/sources/..", content=b"x").status_code in (400, 404, 405)
        assert "big.mp4" not in json.dumps(http.get("/v1/sources").json())
        # a job's own failures fail the job with a reason, never the SF
        upload(http, "notes.txt", Path(__file__))
        failures = {
            "notes.txt": {"source": {"path": "notes.txt"}, "rungs": [{"bitrate": "1M"}]},
            "missing": {"source": {"path": "missing.mp4"}, "rungs": [{"bitrate": "1M"}]},
            "up": {"source": {"path": "src.mp4"}, "rungs": [{"height": 720, "bitrate": "1M"}]},
            "url": {
                "source": {"url": f"{sf.url}/o/{'0' * 32}/x.mp4"},
                "rungs": [{"bitrate": "1M"}],
            },
        }
        reasons = {}
        for key, body in failures.items():
            job = wait_job(http, http.post("/v1/jobs", json=body).json()["id"])
            assert job["state"] == "failed"
            reasons[key] = job["error"]
        assert reasons["missing"] == "no uploaded source 'missing.mp4'"
        assert reasons["up"] == "rung 720p-1000k: 720p is above the source's 360p"
        assert reasons["url"] == "the source URL answered 404"
        assert reasons["notes.txt"]
    with sf.client(OTHER_KEY) as other:  # another tenant sees none of acme's jobs or sources
        assert other.get(f"/v1/jobs/{ladder['id']}").status_code == 404
        assert other.post(f"/v1/jobs/{ladder['id']}/cancel").status_code == 404
        assert other.get("/v1/jobs").json() == {"jobs": []}
        assert other.get("/v1/sources").json() == {"sources": []}
        r = other.post(
            "/v1/jobs", json={"source": {"path": "src.mp4"}, "rungs": [{"bitrate": "1M"}]}
        )
        assert wait_job(other, r.json()["id"])["error"] == "no uploaded source 'src.mp4'"


def test_the_queue_is_bounded(tmp_path: Path, clip: Path) -> None:
    body = {"source": {"path": "src.mp4"}, "rungs": [{"bitrate": "300k"}], "vmaf": False}
    with transcoder(tmp_path / "a", TRANSCODE_MAX_QUEUE="0") as full, full.client() as http:
        r = http.post("/v1/jobs", json=body)
        assert (r.status_code, r.json()["error"]) == (503, "queue_full")
        assert r.headers["retry-after"] == "30"
    with transcoder(tmp_path / "b", TRANSCODE_MAX_ACTIVE="1") as one, one.client() as http:
        upload(http, "src.mp4", clip)
        first = http.post("/v1/jobs", json=body)
        assert first.status_code == 202
        r = http.post("/v1/jobs", json=body)
        assert (r.status_code, r.json()["error"], r.json()["limit"]) == (429, "too_many_jobs", 1)
        assert wait_job(http, first.json()["id"])["state"] == "done"
        assert http.post("/v1/jobs", json=body).status_code == 202  # room again


def _ffmpeg_children() -> list[str]:
    done = subprocess.run(["pgrep", "-f", "-P", str(__import__("os").getpid()), "ffmpeg"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    return done.stdout.split()


def test_a_running_job_is_cancelled_and_the_worker_goes_on(
    tmp_path: Path, clip: Path, clmc: tuple[str, str]
) -> None:
    """MC-7: progress while encoding (in the job and as CLMC points), then a cancel kills the
    job's ffmpeg, removes its outputs, and the worker takes the next job."""
    long = make_clip(tmp_path / "long.mp4", size="640x360", seconds=10, audio=False)
    env = {"CLMC_URL": clmc[0], "CLMC_TOKEN": clmc[1]}
    with transcoder(tmp_path / "sf", **env) as sf, sf.client() as http:
        upload(http, "long.mp4", long)
        upload(http, "src.mp4", clip)
        body = {"source": {"path": "long.mp4"}, "preset": "slow", "codec": "hevc",
                "rungs": [{"height": 360, "bitrate": "1M"}, {"height": 180, "bitrate": "300k"}]}  # fmt: skip
        job_id = http.post("/v1/jobs", json=body).json()["id"]
        quick = {"source": {"path": "src.mp4"}, "rungs": [{"bitrate": "300k"}], "vmaf": False}
        queued = http.post("/v1/jobs", json=quick).json()["id"]
        eventually(lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"] > 0.05,
                   what="the job to make progress")  # fmt: skip
        assert _ffmpeg_children()
        assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        job = wait_job(http, job_id)
        assert job["state"] == "cancelled"
        assert not (sf.service.config.settings.data_dir / "jobs" / job_id / "out").exists()
        assert http.get(f"/o/{job_id}/master.m3u8").status_code == 404
        assert wait_job(http, queued)["state"] == "done"  # the worker took the next job
        assert http.delete(f"/v1/jobs/{job_id}").json() == {"deleted": job_id}
        assert http.get(f"/v1/jobs/{job_id}").status_code == 404
    assert not _ffmpeg_children()
    with httpx.Client(base_url=clmc[0], headers={"Authorization": f"Bearer {clmc[1]}"},
                      trust_env=False) as q:  # fmt: skip

        def rows(query: str) -> list[Any]:
            doc = q.get("/query", params={"db": "acme", "q": query}).json()
            series = doc["results"][0].get("series") or [{"values": []}]
            return list(series[0]["values"])

        progress = rows(
            f'SELECT "progress" FROM "media_transcode_progress" WHERE "job" = \'{job_id}\''
        )
        assert progress
        assert all(0 <= v[1] < 1 for v in progress)
        ended = rows('SELECT "job" FROM "media_transcode_job" WHERE "state" = \'cancelled\'')
        assert [v[1] for v in ended] == [job_id]


def test_a_source_from_the_content_sf_and_outputs_that_outlive_a_restart(
    tmp_path: Path, clip: Path
) -> None:
    """The content SF's ``/v1/assets/{id}/content`` as the source, with the tenant's key (sent
    to the source, never shown or stored); a restarted transcoder still serves the outputs."""
    with content_server(tmp_path / "content") as content, content.client() as chttp:
        data = clip.read_bytes()
        asset = patch(chttp, create(chttp, len(data), filename="src.mp4"), 0, data).headers[
            "flame-asset"
        ]
        with transcoder(tmp_path / "sf") as sf, sf.client() as http:
            body: dict[str, Any] = {
                "source": {"url": f"{content.url}/v1/assets/{asset}/content", "token": KEY_A},
                "rungs": [{"height": 180, "bitrate": "200k"}],
                "vmaf": False,
            }
            job = wait_job(http, http.post("/v1/jobs", json=body).json()["id"])
            assert job["state"] == "done", job["error"]
            assert job["spec"]["source"] == {"url": body["source"]["url"], "path": None}
            record = sf.service.config.settings.data_dir / "jobs" / job["id"] / "job.json"
            assert KEY_A not in record.read_text()
            assert KEY_A not in json.dumps(http.get("/v1/jobs").json())
            bad = {**body, "source": {"url": body["source"]["url"], "token": "wrong-key"}}
            assert wait_job(http, http.post("/v1/jobs", json=bad).json()["id"])["error"] == (
                "the source URL answered 401"
            )
    with transcoder(tmp_path / "sf") as again, again.client() as http:
        assert http.get(f"/v1/jobs/{job['id']}").json()["state"] == "done"
        with httpx.Client(base_url=again.url, trust_env=False) as anon:
            r = anon.get(f"/o/{job['id']}/manifest.mpd")
            assert r.status_code == 200
            assert b"avc1" in r.content
