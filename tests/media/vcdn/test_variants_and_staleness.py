"""MC-5/MC-10 cache behaviour over real HTTP: Vary variants (bounded), RFC 5861's
stale-while-revalidate (one coalesced background revalidation) and stale-if-error, purges
racing an origin fetch, and the size bound from CACHE_SIZE with a real cache process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx

from eventually import eventually
from flame.common.ports import free_port
from flame.media.cache import EdgeCache
from flame.media.messages import Request, Response, json_response
from flame.media.store import ObjectStore
from media.conftest import Stream
from media.helpers import Proc, age_out, running

from .kit import auth, managed_cache, scripted


def test_mc10_vary_keeps_one_variant_per_header_value_within_a_bound(http: httpx.Client) -> None:
    async def respond(req: Request) -> Response:
        if req.path == "/star":
            return Response(200, [("Vary", "*"), ("Cache-Control", "max-age=60")], b"any")
        lang = req.headers.get("accept-language", "none")
        headers = [("Vary", "Accept-Language, Accept-Encoding"), ("Cache-Control", "max-age=60")]
        return Response(200, headers, lang.encode())

    def make() -> EdgeCache:
        return EdgeCache(origin.url, ObjectStore(1 << 20, max_variants=3))

    with running(scripted(respond)) as origin, running(make) as cache:

        def get(lang: str, path: str = "/title") -> tuple[str, bytes]:
            r = http.get(cache.url + path, headers={"Accept-Language": lang})
            assert r.headers["vary"] == "Accept-Language, Accept-Encoding"
            return r.headers["x-cache"], r.content

        assert get("en") == ("MISS", b"en")
        assert get("fr") == ("MISS", b"fr")
        assert get("en") == ("HIT", b"en")
        assert get("fr") == ("HIT", b"fr")
        assert get("fr,  de") == ("MISS", b"fr,  de")
        assert get("fr, de") == ("HIT", b"fr,  de")  # whitespace does not make a new variant
        # Accept-Encoding is not a key: the cache always fetches (and serves) identity
        r = http.get(cache.url + "/title", headers={"Accept-Language": "en",
                                                    "Accept-Encoding": "br"})  # fmt: skip
        assert (r.headers["x-cache"], r.content) == ("HIT", b"en")
        assert get("de") == ("MISS", b"de")
        assert get("es") == ("MISS", b"es")  # variants 4 and 5: the oldest stored (en, fr) go
        assert len(cache.call(lambda: list(cache.app.store.bases["/title"]))) == 3
        assert get("en") == ("MISS", b"en")
        seen = origin.call(lambda: [q.headers.get("accept-language") for q in origin.app.requests])
        assert seen == ["en", "fr", "fr,  de", "de", "es", "en"]
        for _ in range(2):  # Vary: * is never stored
            assert http.get(cache.url + "/star").headers["x-cache"] == "MISS"


def test_mc10_concurrent_first_requests_for_two_variants_each_get_their_own(
    http: httpx.Client,
) -> None:
    async def respond(req: Request) -> Response:
        await asyncio.sleep(0.2)
        lang = req.headers.get("accept-language", "none")
        return Response(200, [("Vary", "Accept-Language")], lang.encode())

    async def burst(url: str) -> list[bytes]:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            rs = await asyncio.gather(
                *(c.get(url, headers={"Accept-Language": lang}) for lang in ["en", "fr"] * 4)
            )
        return [r.content for r in rs]

    with running(scripted(respond)) as origin, running(managed_cache(origin.url)) as cache:
        assert asyncio.run(burst(cache.url + "/title")) == [b"en", b"fr"] * 4
        assert origin.call(lambda: len(origin.app.requests)) == 2
        r = http.post(cache.url + "/_cache/v1/purge", json={"paths": ["/title"]}, headers=auth())
        assert r.json() == {"purged": 2}  # a purge takes every variant


def test_rfc5861_stale_while_revalidate_serves_stale_and_revalidates_once(
    http: httpx.Client,
) -> None:
    state = {"version": 1, "up": True}
    # A far origin: revalidations wait until the test opens the gate, so a client that waited
    # for one would hang (and time out) instead of the test timing the answers.
    gate = threading.Event()

    async def respond(req: Request) -> Response:
        v = state["version"]
        if req.headers.get("if-none-match"):
            await asyncio.to_thread(gate.wait, 60)
            if not state["up"]:
                return json_response(503, {"error": "down"})
            if req.headers["if-none-match"] == f'"v{v}"':
                return Response(304, [("ETag", f'"v{v}"')])
        cc = "max-age=60, stale-while-revalidate=30"
        return Response(200, [("Cache-Control", cc), ("ETag", f'"v{v}"')], f"v{v}".encode())

    async def burst(url: str, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            return list(await asyncio.gather(*(c.get(url) for _ in range(n))))

    def settled() -> None:
        gate.set()  # the revalidation under way may finish now
        eventually(lambda: not cache.call(lambda: len(cache.app.inflight)),
                   what="the background revalidation to finish")  # fmt: skip

    with running(scripted(respond)) as origin, running(managed_cache(origin.url)) as cache:
        assert http.get(cache.url + "/live.m3u8").headers["x-cache"] == "MISS"
        # a failed background revalidation is counted, and the copy goes on being served
        state["up"] = False
        age_out(cache, "/live.m3u8")
        assert http.get(cache.url + "/live.m3u8").headers["x-cache"] == "STALE"
        settled()
        assert cache.call(cache.app.metrics)["origin_errors"] == 1
        state.update(up=True, version=2)
        gate.clear()  # the origin holds the next revalidation: all ten are answered meanwhile
        try:
            answers = asyncio.run(burst(cache.url + "/live.m3u8", 10))
        finally:
            gate.set()
        assert {(r.headers["x-cache"], r.content) for r in answers} == {("STALE", b"v1")}
        settled()
        r = http.get(cache.url + "/live.m3u8")
        assert (r.headers["x-cache"], r.content, r.headers["etag"]) == ("HIT", b"v2", '"v2"')
        assert origin.call(lambda: len(origin.app.requests)) == 3  # one revalidation for ten
        m = cache.call(cache.app.metrics)
        assert (m["stale_revalidate"], m["background_revalidations"]) == (11, 2)
        # past the window: the request waits for the origin (a 304 refreshes the copy)
        age_out(cache, "/live.m3u8", by=31)
        r = http.get(cache.url + "/live.m3u8")
        assert (r.headers["x-cache"], r.content) == ("MISS", b"v2")
        assert cache.call(cache.app.metrics)["revalidated"] == 1


def test_an_unexpected_failure_in_a_fetch_is_a_502_json_not_a_crash(http: httpx.Client) -> None:
    """The fetch task is supervised: a bug (here a store that throws) reaches no client as a
    500 or traceback, is counted, and the cache goes on serving."""

    async def respond(req: Request) -> Response:
        return Response(200, [("Cache-Control", "max-age=60")], b"ok")

    def broken_put(*args: object, **kw: object) -> bool:
        raise RuntimeError("disk on fire")

    with running(scripted(respond)) as origin, running(managed_cache(origin.url)) as cache:
        real_put = cache.call(lambda: cache.app.store.put)
        cache.call(lambda: setattr(cache.app.store, "put", broken_put))
        r = http.get(cache.url + "/x")
        assert (r.status_code, r.json()["error"]) == (502, "fetch_failed")
        assert "disk on fire" not in r.text
        assert cache.call(cache.app.metrics)["fetch_failures"] == 1
        cache.call(lambda: setattr(cache.app.store, "put", real_put))
        assert http.get(cache.url + "/x").status_code == 200
        assert http.get(cache.url + "/x").headers["x-cache"] == "HIT"


def test_rfc5861_stale_if_error_covers_an_outage_for_its_window_only(http: httpx.Client) -> None:
    state = {"up": True}

    async def respond(req: Request) -> Response:
        if not state["up"]:
            return json_response(503, {"error": "down"})
        cc = (
            "max-age=60, must-revalidate"
            if req.path == "/strict"
            else "max-age=60, stale-if-error=5"
        )
        return Response(200, [("Cache-Control", cc)], req.path.encode())

    with running(scripted(respond)) as origin, running(managed_cache(origin.url)) as cache:
        for p in ("/a", "/strict"):
            assert http.get(cache.url + p).headers["x-cache"] == "MISS"
        state["up"] = False
        age_out(cache, "/a")
        age_out(cache, "/strict")
        r = http.get(cache.url + "/a")
        assert (r.status_code, r.headers["x-cache"], r.content) == (200, "STALE", b"/a")
        r = http.get(cache.url + "/strict")  # must-revalidate: never stale
        assert (r.status_code, r.json()) == (503, {"error": "down"})
        age_out(cache, "/a", by=6)  # past stale-if-error=5
        assert http.get(cache.url + "/a").status_code == 503
        assert cache.call(cache.app.metrics)["stale_error"] == 1
        state["up"] = True
        assert http.get(cache.url + "/a").content == b"/a"


def test_mc10_a_purge_during_an_origin_fetch_keeps_nothing_of_it(http: httpx.Client) -> None:
    state = {"version": 1}
    # The origin tells when it has the request and answers when told: the purge lands while the
    # fetch is in flight however the machine schedules the two.
    arrived, release = threading.Event(), threading.Event()

    async def respond(req: Request) -> Response:
        v = state["version"]
        arrived.set()
        await asyncio.to_thread(release.wait, 60)
        return Response(200, [("Cache-Control", "max-age=60")], f"v{v}".encode())

    async def race(url: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as c:
            fetch = asyncio.ensure_future(c.get(url + "/obj"))
            try:
                assert await asyncio.to_thread(arrived.wait, 60), "the fetch never reached it"
                state["version"] = 2  # the fetch in flight carries the old version
                purge = await c.post(url + "/_cache/v1/purge", json={"paths": ["/obj"]},
                                     headers=auth())  # fmt: skip
                assert purge.json() == {"purged": 0}
            finally:
                release.set()
            return await fetch

    with running(scripted(respond)) as origin, running(managed_cache(origin.url)) as cache:
        assert asyncio.run(race(cache.url)).content == b"v1"  # its waiter still gets an answer
        r = http.get(cache.url + "/obj")
        assert (r.headers["x-cache"], r.content) == ("MISS", b"v2")
        assert http.get(cache.url + "/obj").headers["x-cache"] == "HIT"


def test_mc5_cache_size_bounds_a_real_cache_process(stream: Stream, tmp_path: Path) -> None:
    """CACHE_SIZE (a TOSCA size) bounds RAM: the LRU evicts, the bound holds."""
    segs = sorted(stream.path.glob("*/seg_*.ts"))
    # a quarter of the bound must take the largest segment (the per-object limit)
    bound = 4 * max(s.stat().st_size for s in segs) + 4096
    assert sum(s.stat().st_size for s in segs) > bound
    oport, cport = free_port(), free_port()
    origin = Proc("flame.media.origin", ["--media-dir", str(stream.root)],
                  {"FLAME_PORT": str(oport)}, tmp_path / "o.log")  # fmt: skip
    cache = Proc("flame.media.cache", ["--max-variants", "2"],
                 {"FLAME_PORT": str(cport), "ORIGIN": f"http://127.0.0.1:{oport}",
                  "CACHE_SIZE": f"{bound / 1000:.3f} kB", "FLAME_ORIGIN": ""},
                 tmp_path / "c.log")  # fmt: skip
    try:
        origin.wait_healthy(f"http://127.0.0.1:{oport}")
        cache.wait_healthy(f"http://127.0.0.1:{cport}")
        with httpx.Client(base_url=f"http://127.0.0.1:{cport}", trust_env=False) as c:
            urls = [f"/hls/{s.parent.name}/{s.name}" for s in segs]
            for u in urls:
                assert c.get(u).headers["x-cache"] == "MISS"
            store = c.get("/metrics").json()["store"]
            assert store["max_bytes"] == int(bound / 1000 * 1000)
            assert 0 < store["bytes"] <= store["max_bytes"]
            assert store["evictions"] >= 1
            assert c.get(urls[-1]).headers["x-cache"] == "HIT"
            assert c.get(urls[0]).headers["x-cache"] == "MISS"  # the least recently used went
    finally:
        assert (cache.stop(), origin.stop()) == (0, 0)
