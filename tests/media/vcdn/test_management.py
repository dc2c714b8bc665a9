"""MC-10 cache management over real HTTP: purge by path and prefix, ban by tag, and the
management API's authentication, tenant isolation and hostile input."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from flame.media.cache import EdgeCache
from flame.media.messages import Request, Response
from flame.media.store import ObjectStore
from flame.media.vcdn.service import configure
from media.helpers import ServerThread, running

from .kit import KEY, OTHER_KEY, auth, managed_cache, scripted

TAGS = {
    "/show/ep1/seg1.ts": ("show-1 ep-1", None),
    "/show/ep1/seg2.ts": ("show-1 ep-1", None),
    "/show/ep2/seg1.ts": (None, "show-1,ep-2"),  # Cloudflare's comma-separated Cache-Tag
    "/other/a.ts": ("other", None),
}


async def tagged(req: Request) -> Response:
    if req.path == "/private.ts":
        return Response(200, [("Cache-Control", "private")], b"mine")
    if req.path == "/gone.ts":
        return Response(404, [], b"")
    skey, ctag = TAGS.get(req.path, (None, None))
    headers = [("Cache-Control", "max-age=600"), ("Content-Type", "video/mp2t")]
    if skey:
        headers.append(("Surrogate-Key", skey))
    if ctag:
        headers.append(("Cache-Tag", ctag))
    return Response(200, headers, f"{req.path}?{req.query}".encode())


def labels(http: httpx.Client, base: str, paths: list[str]) -> list[str]:
    return [http.get(base + p).headers["x-cache"] for p in paths]


def test_mc10_purge_by_exact_path_and_prefix(http: httpx.Client) -> None:
    paths = [*TAGS, "/show/ep1/seg1.ts?v=2"]
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        assert labels(http, cache.url, paths) == ["MISS"] * 5
        assert labels(http, cache.url, paths) == ["HIT"] * 5
        r = http.post(cache.url + "/_cache/v1/purge", json={"paths": ["/other/a.ts"]},
                      headers=auth())  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json() == {"purged": 1}
        assert labels(http, cache.url, ["/other/a.ts", "/show/ep2/seg1.ts"]) == ["MISS", "HIT"]
        # a prefix takes every object under it, queries included; percent-encoding is decoded
        r = http.post(cache.url + "/_cache/v1/purge", json={"prefixes": ["/show/ep%31/"]},
                      headers=auth())  # fmt: skip
        assert r.json() == {"purged": 3}
        assert labels(http, cache.url, paths) == ["MISS", "MISS", "HIT", "HIT", "MISS"]
        assert origin.call(lambda: len(origin.app.requests)) == 5 + 1 + 3
        stats = http.get(cache.url + "/_cache/v1/stats", headers=auth()).json()
        assert (stats["purges"], stats["purged_objects"]) == (2, 4)


def test_mc10_ban_by_surrogate_key_and_cache_tag(http: httpx.Client) -> None:
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        labels(http, cache.url, list(TAGS))
        r = http.post(cache.url + "/_cache/v1/ban", json={"tags": ["show-1"]}, headers=auth())
        assert r.json() == {"banned": 3}
        assert labels(http, cache.url, list(TAGS)) == ["MISS", "MISS", "MISS", "HIT"]
        r = http.post(cache.url + "/_cache/v1/ban", json={"tags": ["ep-2", "nope"]},
                      headers=auth())  # fmt: skip
        assert r.json() == {"banned": 1}
        assert labels(http, cache.url, ["/show/ep1/seg1.ts", "/show/ep2/seg1.ts"]) == [
            "HIT",
            "MISS",
        ]
        # the tags are the origin's business with us: clients never see them
        r = http.get(cache.url + "/show/ep1/seg1.ts")
        assert "surrogate-key" not in r.headers
        assert "cache-tag" not in r.headers


def test_mc10_the_management_api_is_the_owner_tenants_only(http: httpx.Client) -> None:
    """Another tenant's key gets 403, no key 401, a wrong key 401; nothing is purged."""
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        labels(http, cache.url, ["/other/a.ts"])
        url = cache.url + "/_cache/v1/purge"
        body = {"prefixes": ["/"]}
        r = http.post(url, json=body, headers=auth(OTHER_KEY))
        assert r.status_code == 403
        assert r.json()["error"] == "forbidden"
        assert http.get(cache.url + "/_cache/v1/stats", headers=auth(OTHER_KEY)).status_code == 403
        r = http.post(url, json=body)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert http.post(url, json=body, headers=auth("x" * 30)).status_code == 401
        assert http.post(url, json=body, headers={"Authorization": KEY}).status_code == 401
        assert labels(http, cache.url, ["/other/a.ts"]) == ["HIT"]  # still there
        assert http.post(url, json=body, headers=auth()).json() == {"purged": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"paths": "/a"}', "list of non-empty strings"),
        (b'{"paths": [""]}', "list of non-empty strings"),
        (b'{"paths": ["a.ts"]}', "must start with /"),
        (b'{"paths": ["/a/../../etc"]}', "leaves the served tree"),
        (b'{"paths": ["/%ff"]}', "not UTF-8"),
        (b"{}", "give 'paths'"),
        (b'{"paths": [' + b",".join([b'"/a"'] * 257) + b"]}", "at most 256"),
        (b'{"paths": ["/' + b"a" * 3000 + b'"]}', "longer than"),
    ],
)
def test_bad_management_input_is_a_400_json(http: httpx.Client, body: bytes, message: str) -> None:
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        r = http.post(cache.url + "/_cache/v1/purge", content=body,
                      headers={**auth(), "Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400
        assert r.json()["error"] == "bad_request"
        assert message in r.json()["message"]


def test_mc10_prefetch_warms_reports_and_is_bounded(http: httpx.Client) -> None:
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        http.get(cache.url + "/other/a.ts")
        paths = ["/other/a.ts", "/show/ep1/seg1.ts", "/show/ep1/seg1.ts", "/private.ts", "/gone.ts"]
        r = http.post(cache.url + "/_cache/v1/prefetch", json={"paths": paths}, headers=auth())
        assert r.status_code == 200, r.text
        assert r.json() == {
            "results": {"/other/a.ts": "fresh", "/show/ep1/seg1.ts": "fetched",
                        "/private.ts": "not stored", "/gone.ts": "error 404"},
            "fetched": 1, "fresh": 1, "errors": 1,
        }  # fmt: skip
        assert http.get(cache.url + "/show/ep1/seg1.ts").headers["x-cache"] == "HIT"
        assert origin.call(lambda: len(origin.app.requests)) == 4  # duplicates fetched once
        assert cache.call(cache.app.metrics)["prefetched"] == 1


def test_unknown_routes_methods_and_a_cache_without_keys(http: httpx.Client) -> None:
    with running(scripted(tagged)) as origin, running(managed_cache(origin.url)) as cache:
        assert http.get(cache.url + "/_cache/v1/nope", headers=auth()).status_code == 404
        r = http.get(cache.url + "/_cache/v1/purge", headers=auth())
        assert (r.status_code, r.headers["allow"]) == (405, "POST")
        r = http.post(cache.url + "/_cache/v1/ban", content=b'{"tags": ["a"]}', headers=auth())
        assert r.status_code == 400  # no JSON content type
        assert origin.call(lambda: len(origin.app.requests)) == 0  # never forwarded
    with (
        running(scripted(tagged)) as origin,
        running(lambda: EdgeCache(origin.url, ObjectStore(1 << 20))) as bare,
    ):
        r = http.post(bare.url + "/_cache/v1/purge", json={"paths": ["/a"]}, headers=auth())
        assert (r.status_code, r.json()["error"]) == (404, "management_disabled")


@pytest.mark.asyncio
async def test_mc10_platform_tokens_are_checked_with_the_orchestrators_whoami(
    tmp_path: Path,
) -> None:
    """A real orchestrator answers /v1/whoami: the owner's token may purge; another tenant's
    and the operator's tokens get 403 (an SF never takes operator tokens); unknown ones 401."""
    from flame.sfemc.registrar import InProcessRegistrar
    from orchestrator.harness import running_platform
    from sfemc.fakes import FakeVim

    clusters = dict.fromkeys(("edge-bristol", "edge-bath", "metro-london"), FakeVim())
    async with running_platform(tmp_path / "orch", clusters, InProcessRegistrar({})) as platform:

        def make() -> EdgeCache:
            cache = EdgeCache("http://127.0.0.1:9", ObjectStore(1 << 20))
            configure(cache, {"FLAME_TENANT": "acme", "MEDIA_AUTH_URL": platform.url})
            return cache

        server = ServerThread(make).start()
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:

                async def purge(token: str) -> httpx.Response:
                    return await http.post("/_cache/v1/purge", json={"prefixes": ["/"]},
                                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip

                assert (await purge(platform.acme)).json() == {"purged": 0}
                r = await purge(platform.globex)
                assert r.status_code == 403
                assert "tenant 'globex'" in r.json()["message"]
                r = await purge(platform.operator)
                assert r.status_code == 403
                assert "never send operator" in r.json()["message"]
                assert (await purge("flm_" + "x" * 43)).status_code == 401
        finally:
            server.stop()
