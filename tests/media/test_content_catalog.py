"""The metadata database on SQLite and on a real PostgreSQL (a throwaway server, as the SFEMC
store tests use): descriptions against the default and a provider's JSON Schema, search and
filters; then the same through the SF's HTTP API with multipart uploads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flame.media.content.catalog import Catalog, Search
from flame.media.content.db import Database
from flame.media.content.errors import BadRequest, Invalid, NotFound

from .contentkit import KEY_A, KEY_B, content_server, create, patch, sha256

PROVIDER_SCHEMA = {
    "type": "object",
    "required": ["name", "episode"],
    "properties": {
        "episode": {
            "type": "object",
            "required": ["season", "number"],
            "properties": {
                "season": {"type": "integer", "minimum": 1},
                "number": {"type": "integer", "minimum": 1},
            },
        },
        "rights": {"properties": {"territories": {"maxItems": 3}}},
    },
}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def catalog(db_url: str) -> Iterator[Catalog]:
    db = Database(db_url)
    yield Catalog(db)
    db.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def add(c: Catalog, asset_id: str, tenant: str = "acme", **desc: Any) -> dict[str, Any]:
    description = await c.validate(tenant, {"name": f"{asset_id}.mp4", **desc})
    return await c.create_asset(
        asset_id=asset_id, tenant=tenant, owner="t", description=description,
        content_type="video/mp4", size=100, sha256="0" * 64, storage_key=f"{tenant}/{asset_id}",
        status="stored",
    )  # fmt: skip


def tech(width: int, height: int, codec: str, duration: float) -> dict[str, Any]:
    return {
        "container": "mov,mp4",
        "duration_s": duration,
        "bitrate": 1_000_000,
        "video": {"codec": codec, "width": width, "height": height, "fps": 25.0},
        "audio": {"codec": "aac", "channels": 2, "layout": "stereo"},
    }


def test_the_default_schema_names_each_bad_field(catalog: Catalog) -> None:
    bad = {
        "name": "",
        "duration_s": -1,
        "tags": ["ok", "ok"],
        "rights": {"territories": ["GB", "england"], "valid_until": "next week", "owner": "x"},
    }
    with pytest.raises(Invalid) as info:
        run(catalog.validate("acme", bad))
    errors = info.value.context["errors"]
    assert isinstance(errors, list)
    paths = {e["path"] for e in errors}
    assert paths == {
        "name", "duration_s", "tags", "rights", "rights.territories[1]", "rights.valid_until",
    }  # fmt: skip
    assert info.value.as_dict()["error"] == "invalid_description"
    assert info.value.http_status == 422
    with pytest.raises(Invalid, match="at name: 'name' is a required property"):
        run(catalog.validate("acme", {"synopsis": "no name"}))


def test_a_provider_schema_applies_to_its_tenant_only(catalog: Catalog) -> None:
    run(catalog.set_provider_schema("acme", PROVIDER_SCHEMA))
    with pytest.raises(Invalid) as info:
        run(catalog.validate("acme", {"name": "e.mp4", "episode": {"season": 0}}))
    errors = info.value.context["errors"]
    assert isinstance(errors, list)
    assert {(e["path"], e["schema"]) for e in errors} == {
        ("episode.number", "provider"), ("episode.season", "provider"),
    }  # fmt: skip
    with pytest.raises(Invalid, match=r"rights\.territories"):
        run(catalog.validate("acme", {"name": "e", "episode": {"season": 1, "number": 2},
                                      "rights": {"territories": ["GB", "FR", "DE", "IT"]}}))  # fmt: skip
    ok = {"name": "e.mp4", "episode": {"season": 1, "number": 2}, "rights": {"territories": ["GB"]}}
    assert run(catalog.validate("acme", ok)) == ok
    assert run(catalog.validate("globex", {"name": "free.mp4"})) == {"name": "free.mp4"}
    run(catalog.delete_provider_schema("acme"))
    assert run(catalog.validate("acme", {"name": "x"})) == {"name": "x"}


def test_a_provider_schema_must_itself_be_valid_and_never_fetches(catalog: Catalog) -> None:
    with pytest.raises(BadRequest, match=r"not a valid JSON Schema at properties\.n"):
        run(catalog.set_provider_schema("acme", {"properties": {"n": {"type": "strin"}}}))
    with pytest.raises(BadRequest):
        run(catalog.set_provider_schema("acme", ["not", "an", "object"]))
    with pytest.raises(BadRequest, match="resolved inside the document only"):
        run(catalog.set_provider_schema("acme", {"$ref": "http://127.0.0.1:9/evil.json"}))
    # one hidden behind a branch is refused when it is reached, never fetched
    hidden = {"if": {"required": ["x"]}, "then": {"$ref": "http://127.0.0.1:9/evil.json"}}
    run(catalog.set_provider_schema("acme", hidden))
    with pytest.raises(Invalid, match="cannot be applied"):
        run(catalog.validate("acme", {"name": "n", "x": 1}))


def test_search_and_filters(catalog: Catalog) -> None:
    async def setup() -> None:
        a = await add(catalog, "a1", synopsis="A dog in the park", tags=["Nature", "dogs"])
        b = await add(catalog, "b2", synopsis="City traffic at night", tags=["city"])
        c = await add(catalog, "c3", synopsis="Dogs again, 100% dogs", tags=["dogs", "4k"])
        await add(catalog, "z9", tenant="globex", synopsis="a dog of another tenant", tags=["dogs"])
        await catalog.set_analysis(a["id"], technical=tech(1920, 1080, "h264", 20.0),
                                   quality={"full_reference": {"vmaf": 93.1}}, status="accepted", reason=None)  # fmt: skip
        await catalog.set_analysis(b["id"], technical=tech(1280, 720, "hevc", 65.0),
                                   quality={}, status="accepted", reason=None)  # fmt: skip
        await catalog.set_analysis(c["id"], technical=tech(3840, 2160, "h264", 5.0),
                                   quality={"full_reference": {"vmaf": 71.0}}, status="rejected", reason="low")  # fmt: skip

    run(setup())

    def ids(**kw: Any) -> list[str]:
        return [a["id"] for a in run(catalog.search("acme", Search(**kw)))["assets"]]

    assert ids(sort="name") == ["a1", "b2", "c3"]
    assert ids(q="dog", sort="name") == ["a1", "c3"]  # name, synopsis or tag, any case
    assert ids(q="100%") == ["c3"]  # LIKE wildcards in the text are literal
    assert ids(q="_") == []
    assert ids(tags=["DOGS"], sort="name") == ["a1", "c3"]
    assert ids(tags=["dogs", "4k"]) == ["c3"]
    assert ids(min_duration=10, max_duration=30) == ["a1"]
    assert ids(codec="hevc") == ["b2"]
    assert ids(codec="AAC", sort="name") == ["a1", "b2", "c3"]
    assert ids(resolution="1920x1080") == ["a1"]
    assert ids(min_height=1080, sort="-height") == ["c3", "a1"]
    assert ids(max_height=720) == ["b2"]
    assert ids(min_vmaf=80) == ["a1"]
    assert ids(status="rejected") == ["c3"]
    assert ids(sort="duration") == ["c3", "a1", "b2"]
    page = run(catalog.search("acme", Search(sort="name", limit=2, offset=1)))
    assert (page["total"], [a["id"] for a in page["assets"]]) == (3, ["b2", "c3"])
    with pytest.raises(BadRequest, match="WIDTHxHEIGHT"):
        ids(resolution="full-hd")
    with pytest.raises(BadRequest, match="sort"):
        ids(sort="owner; DROP TABLE assets")
    asset = run(catalog.get("acme", "a1"))
    assert (asset["width"], asset["height"], asset["video_codec"], asset["vmaf"]) == (
        1920,
        1080,
        "h264",
        93.1,
    )
    assert asset["technical"]["audio"]["layout"] == "stereo"
    with pytest.raises(NotFound):
        run(catalog.get("acme", "z9"))  # another tenant's


def test_usage_counts_stored_and_reserved_bytes(catalog: Catalog) -> None:
    run(add(catalog, "u1"))
    assert run(catalog.usage("acme")) == {
        "assets": 1,
        "stored_bytes": 100,
        "uploads": 0,
        "reserved_bytes": 0,
    }
    assert run(catalog.usage("globex"))["assets"] == 0


# -- through the API ---------------------------------------------------------------------------


def form(http: Any, data: bytes, name: str = "clip.mp4", **fields: str) -> Any:
    return http.post("/v1/assets", files={"file": (name, data, "video/mp4")}, data=fields)


@pytest.fixture
def sf(tmp_path: Path):
    with content_server(tmp_path, MEDIA_MAX_MULTIPART="200000") as running:
        yield running


def test_multipart_upload_describes_and_stores(sf) -> None:
    data = b"\x00\x01" * 5000
    with sf.client() as http:
        desc = {
            "synopsis": "A test",
            "tags": ["a", "b"],
            "rights": {"holder": "ACME", "territories": ["GB"]},
        }
        r = form(http, data, description=json.dumps(desc), reference="abc")
        assert r.status_code == 201, r.text
        asset = r.json()
        assert r.headers["location"] == f"/v1/assets/{asset['id']}"
        assert asset["name"] == "clip.mp4"
        assert asset["sha256"] == sha256(data)
        assert asset["tags"] == ["a", "b"]
        assert asset["description"]["rights"]["holder"] == "ACME"
        assert asset["reference"] == "abc"
        assert http.get(asset["links"]["content"]).content == data
        r = form(http, data, description=json.dumps({"rights": {"territories": ["Britain"]}}))
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "rights.territories[0]"
        assert form(http, data, name="../x.mp4").json()["error"] == "invalid_name"
        r = http.post("/v1/assets", data={"name": "x"}, files={"other": ("a", b"x")})
        assert r.status_code == 400
        assert form(http, data, sha256="f" * 64).status_code == 460
        r = form(http, b"x" * 300_000)
        assert r.status_code == 413
        assert r.json()["error"] == "multipart_too_large"

        def chunked():
            yield b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
            for _ in range(30):
                yield b"y" * 10_000
            yield b"\r\n--bnd--\r\n"

        r = http.post("/v1/assets", content=chunked(),
                      headers={"Content-Type": "multipart/form-data; boundary=bnd"})  # fmt: skip
        assert r.status_code == 413  # no Content-Length to trust: counted as it streams
        assert http.get("/v1/assets").json()["total"] == 1
        staging = sf.service.ingest.staging
        assert not any(staging.iterdir())


def test_describe_merges_and_validates(sf) -> None:
    with sf.client() as http:
        asset = form(http, b"data", tags="x, y").json()
        assert asset["tags"] == ["x", "y"]
        r = http.patch(
            f"/v1/assets/{asset['id']}", json={"synopsis": "new", "tags": ["z"], "duration_s": 12.5}
        )
        assert r.status_code == 200
        assert (r.json()["synopsis"], r.json()["tags"], r.json()["duration_s"]) == (
            "new",
            ["z"],
            12.5,
        )
        assert http.get("/v1/assets", params={"tag": "z"}).json()["total"] == 1
        assert http.get("/v1/assets", params={"tag": "x"}).json()["total"] == 0
        r = http.patch(f"/v1/assets/{asset['id']}", json={"duration_s": "long"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "duration_s"
        r = http.patch(f"/v1/assets/{asset['id']}", json={"synopsis": None})
        assert r.json()["synopsis"] is None
        assert http.put("/v1/schema", json=PROVIDER_SCHEMA).status_code == 200
        r = http.patch(f"/v1/assets/{asset['id']}", json={"synopsis": "x"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["path"] == "episode"
        r = http.patch(f"/v1/assets/{asset['id']}", json={"episode": {"season": 2, "number": 3}})
        assert r.status_code == 200
        assert http.get("/v1/schema").json()["provider"] == PROVIDER_SCHEMA
        assert http.put("/v1/schema", json={"type": 12}).json()["error"] == "invalid_schema"


def test_retrieval_ranges_and_conditional_requests(sf) -> None:
    data = bytes(range(256)) * 40
    with sf.client() as http:
        asset = form(http, data).json()
        url = asset["links"]["content"]
        full = http.get(url)
        assert full.status_code == 200
        assert full.headers["accept-ranges"] == "bytes"
        assert full.headers["etag"] == f'"{sha256(data)}"'
        assert full.headers["content-length"] == str(len(data))
        assert "filename*=UTF-8''clip.mp4" in full.headers["content-disposition"]
        r = http.get(url, headers={"Range": "bytes=100-199"})
        assert (r.status_code, r.content, r.headers["content-range"]) == (
            206,
            data[100:200],
            f"bytes 100-199/{len(data)}",
        )
        r = http.get(url, headers={"Range": "bytes=-10"})
        assert r.content == data[-10:]
        r = http.get(url, headers={"Range": "bytes=99999-"})
        assert r.status_code == 416
        assert r.headers["content-range"] == f"bytes */{len(data)}"
        assert http.get(url, headers={"If-None-Match": full.headers["etag"]}).status_code == 304
        assert http.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        assert (
            http.get(url, headers={"If-Modified-Since": full.headers["last-modified"]}).status_code
            == 304
        )
        assert (
            http.get(
                url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
            ).status_code
            == 200
        )
        r = http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert (r.status_code, len(r.content)) == (200, len(data))
        r = http.get(url, headers={"Range": "bytes=0-9", "If-Range": full.headers["etag"]})
        assert r.status_code == 206
        head = http.head(url)
        assert (head.status_code, head.headers["content-length"], head.content) == (
            200,
            str(len(data)),
            b"",
        )


def test_publish_serves_without_a_token_and_unpublish_withdraws(sf) -> None:
    import httpx

    with sf.client() as http, httpx.Client(base_url=sf.url, trust_env=False) as anon:
        asset = form(http, b"public bytes").json()
        assert anon.get(f"/p/{asset['id']}").status_code == 404
        assert http.post(f"/v1/assets/{asset['id']}/publish").json()["published"] is True
        r = anon.get(f"/p/{asset['id']}", headers={"Range": "bytes=0-5"})
        assert (r.status_code, r.content) == (206, b"public")
        assert r.headers["cache-control"].startswith("public")
        assert http.get("/v1/assets", params={"published": "true"}).json()["total"] == 1
        http.delete(f"/v1/assets/{asset['id']}/publish")
        assert anon.get(f"/p/{asset['id']}").status_code == 404
        assert http.delete(f"/v1/assets/{asset['id']}").status_code == 200
        assert http.get(f"/v1/assets/{asset['id']}").status_code == 404


def test_the_api_refuses_other_tenants_and_anonymous_callers(sf) -> None:
    import httpx

    with sf.client(KEY_A) as a, sf.client(KEY_B) as b:
        asset = form(a, b"mine").json()
        for method, path in (("GET", f"/v1/assets/{asset['id']}"), ("PATCH", f"/v1/assets/{asset['id']}"),
                             ("DELETE", f"/v1/assets/{asset['id']}"), ("POST", f"/v1/assets/{asset['id']}/publish"),
                             ("GET", f"/v1/assets/{asset['id']}/content")):  # fmt: skip
            assert b.request(method, path, json={}).status_code == 404, path
        assert b.put("/v1/schema", json=PROVIDER_SCHEMA).status_code == 200
        assert a.get("/v1/schema").json()["provider"] is None
    with httpx.Client(base_url=sf.url, trust_env=False) as anon:
        for path in ("/v1/assets", "/v1/schema", "/v1/rule", "/v1/jobs", "/v1/usage", "/v1/status"):
            assert anon.get(path).status_code == 401, path
        assert anon.get("/health").status_code == 200


def test_every_route_declares_its_access_rule(sf) -> None:
    from flame.common.access import route_rules
    from flame.media.content.app import create_app

    rules = route_rules(create_app(sf.service))
    public = sorted(
        f"{m} {p}" for (m, p), rule in rules.items() if rule is not None and rule.public
    )
    assert public == [
        "GET /", "GET /docs", "GET /docs/oauth2-redirect", "GET /health", "GET /openapi.json",
        "GET /p/{asset_id}", "GET /redoc", "GET /ui/{name}", "HEAD /docs", "HEAD /docs/oauth2-redirect",
        "HEAD /openapi.json", "HEAD /p/{asset_id}", "HEAD /redoc",
    ]  # fmt: skip
    for (_, path), rule in rules.items():
        assert rule is not None
        if path.startswith("/v1/"):
            assert {r.value for r in rule.roles} == {"tenant"}, path


def test_database_on_postgresql_through_the_sf(tmp_path: Path, postgres_url: str) -> None:
    with content_server(tmp_path, MEDIA_DB=postgres_url) as sf, sf.client() as http:
        loc = create(http, 10, filename="pg.bin", tags="one,two")
        r = patch(http, loc, 0, b"0123456789")
        assert r.status_code == 204
        assert http.get("/v1/assets", params={"tag": "two"}).json()["total"] == 1
        assert http.get("/v1/status").json()["database"] == "postgresql"
