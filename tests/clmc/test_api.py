"""The InfluxDB 1.x HTTP API (CLMC-8, 16): statuses, JSON errors, gzip, limits, v2 write,
read-your-writes, and the token rules for operators and tenants."""

from __future__ import annotations

import base64
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from flame.clmc.api import create_app
from flame.clmc.ingest import Ingest
from flame.common.auth import Role, TokenStore

pytestmark = pytest.mark.asyncio


async def test_ping(client: httpx.AsyncClient) -> None:
    r = await client.get("/ping")
    assert r.status_code == 204
    assert r.headers["X-Influxdb-Version"]
    r = await client.head("/ping")
    assert r.status_code == 204
    r = await client.get("/ping", params={"verbose": "true"})
    assert r.status_code == 200
    assert "version" in r.json()


async def test_write_then_query_reads_own_writes(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/write", params={"db": "db", "precision": "s"}, content=b"cpu,h=a v=1 1\ncpu,h=b v=2 2"
    )
    assert r.status_code == 204, r.text
    r = await client.get("/query", params={"db": "db", "q": "SELECT count(v) FROM cpu"})
    assert r.status_code == 200
    assert r.json()["results"][0]["series"][0]["values"][0][1] == 2


@pytest.mark.parametrize(
    ("params", "body", "status", "error"),
    [
        ({}, b"m v=1", 400, "database is required"),
        ({"db": "nope"}, b"m v=1", 404, 'database not found: "nope"'),
        ({"db": "db", "rp": "weekly"}, b"m v=1", 404, "retention policy not found: weekly"),
        (
            {"db": "db"},
            b"m v=1\nbad",
            400,
            "partial write: unable to parse 'bad': missing fields dropped=0",
        ),
        ({"db": "db"}, b"bad", 400, "unable to parse 'bad': missing fields"),
    ],
)
async def test_write_errors(
    client: httpx.AsyncClient, params: dict[str, str], body: bytes, status: int, error: str
) -> None:
    r = await client.post("/write", params=params, content=body)
    assert r.status_code == status
    assert r.json()["error"] == error
    assert r.headers["X-Influxdb-Error"] == error.replace("\n", " ")


async def test_write_error_names_the_line(client: httpx.AsyncClient) -> None:
    r = await client.post("/write", params={"db": "db"}, content=b"m v=1\n\nm v=\nm v=2")
    assert r.status_code == 400
    assert r.json()["line"] == 3


async def test_field_type_conflict(client: httpx.AsyncClient) -> None:
    await client.post("/write", params={"db": "db"}, content=b"m v=1 1")
    r = await client.post("/write", params={"db": "db"}, content=b"m v=1i 2\nm v=2 3")
    assert r.status_code == 400
    assert r.json()["error"] == (
        'partial write: field type conflict: input field "v" on measurement "m" is type integer, '
        "already exists as type float dropped=1"
    )


async def test_gzip(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/write",
        params={"db": "db"},
        content=gzip.compress(b"z v=1 1"),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 204
    r = await client.post(
        "/write", params={"db": "db"}, content=b"notgzip", headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "unexpected EOF"
    r = await client.post(
        "/write", params={"db": "db"}, content=b"x" * 20, headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "gzip: invalid header"
    r = await client.post(
        "/write",
        params={"db": "db"},
        content=gzip.compress(b"z v=1 1")[:-6],
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 400


async def test_oversize_bodies_413(ingest: Ingest) -> None:
    app = create_app(ingest, max_body_bytes=100)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        r = await c.post("/write", params={"db": "db"}, content=b"m v=1 1\n" * 20)
        assert r.status_code == 413
        assert r.json()["error"] == "Request Entity Too Large"
        bomb = gzip.compress(b"m v=1 1\n" * 1000)  # small on the wire, too big inflated
        r = await c.post(
            "/write", params={"db": "db"}, content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 413


async def test_v2_write(client: httpx.AsyncClient, ingest: Ingest) -> None:
    r = await client.post(
        "/api/v2/write",
        params={"bucket": "db/autogen", "org": "x", "precision": "ms"},
        content=b"v2 v=1 5",
    )
    assert r.status_code == 204
    r = await client.post(
        "/api/v2/write", params={"bucket": "db", "precision": "hours"}, content=b"v2 v=1 5"
    )
    assert r.status_code == 400
    assert "precision" in r.json()["error"]
    r = await client.post("/api/v2/write", params={"bucket": "nope"}, content=b"v2 v=1 5")
    assert r.status_code == 404
    ingest.wait_applied()
    got = ingest.store.query('SELECT time FROM "db\x1fautogen\x1fv2"').column(0).to_pylist()
    assert got == [5_000_000]


async def test_query_basics(client: httpx.AsyncClient) -> None:
    r = await client.post("/query", params={"q": "CREATE DATABASE other"})
    assert r.status_code == 200
    assert r.json() == {"results": [{"statement_id": 0}]}
    r = await client.get("/query", params={"q": "SHOW DATABASES"})
    assert r.json()["results"][0]["series"][0]["values"] == [["db"], ["other"]]
    r = await client.post("/query", data={"q": "DROP DATABASE other"})
    assert r.status_code == 200
    r = await client.get("/query")
    assert r.status_code == 400
    assert r.json()["error"] == 'missing required parameter "q"'
    r = await client.get("/query", params={"q": "CREATE DATABSE x"})
    assert r.status_code == 400
    assert r.json()["error"].startswith("error parsing query:")


# -- security ---------------------------------------------------------------------------------


@pytest.fixture
def tokens(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


@pytest_asyncio.fixture
async def secured(ingest: Ingest, tokens: TokenStore) -> AsyncIterator[httpx.AsyncClient]:
    ingest.store.create_database("acme")
    ingest.store.create_database("acme_video")
    ingest.store.create_database("globex")
    app = create_app(ingest, tokens)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        yield c


async def test_credentials_required_except_ping(secured: httpx.AsyncClient) -> None:
    assert (await secured.get("/ping")).status_code == 204
    r = await secured.post("/write", params={"db": "acme"}, content=b"m v=1")
    assert r.status_code == 401
    assert r.json()["error"] == "unable to parse authentication credentials"
    r = await secured.post(
        "/write", params={"db": "acme", "u": "x", "p": "flm_wrong"}, content=b"m v=1"
    )
    assert r.status_code == 401
    assert r.json()["error"] == "authorization failed"
    r = await secured.get("/query", params={"q": "SHOW DATABASES"})
    assert r.status_code == 401


async def test_tenant_owns_its_databases_only(
    secured: httpx.AsyncClient, tokens: TokenStore
) -> None:
    token = tokens.issue("acme-writer", Role.TENANT, "acme")
    basic = base64.b64encode(f"acme:{token}".encode()).decode()
    ways = [
        {"params": {"u": "acme", "p": token}},
        {"headers": {"Authorization": f"Token {token}"}},
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"headers": {"Authorization": f"Basic {basic}"}},
    ]
    for way in ways:
        params = {"db": "acme_video", **way.get("params", {})}
        r = await secured.post(
            "/write", params=params, content=b"m v=1", headers=way.get("headers")
        )
        assert r.status_code == 204, (way, r.text)
    r = await secured.post(
        "/write", params={"db": "globex", "u": "a", "p": token}, content=b"m v=1"
    )
    assert r.status_code == 403
    assert "not authorized" in r.json()["error"]
    auth = {"Authorization": f"Token {token}"}
    r = await secured.get("/query", params={"q": "SHOW DATABASES"}, headers=auth)
    assert r.json()["results"][0]["series"][0]["values"] == [["acme"], ["acme_video"]]
    r = await secured.get("/query", params={"q": "SELECT * FROM m", "db": "globex"}, headers=auth)
    assert r.status_code == 403
    r = await secured.get(
        "/query", params={"q": 'SELECT * FROM "globex"."autogen"."m"', "db": "acme"}, headers=auth
    )
    assert r.status_code == 403
    r = await secured.post("/query", params={"q": "CREATE DATABASE globex_x"}, headers=auth)
    assert r.status_code == 403
    r = await secured.post("/query", params={"q": "CREATE DATABASE acme_new"}, headers=auth)
    assert r.status_code == 200


async def test_operator_may_do_everything(secured: httpx.AsyncClient, tokens: TokenStore) -> None:
    token = tokens.issue("ops", Role.OPERATOR)
    auth = {"Authorization": f"Bearer {token}"}
    r = await secured.post("/write", params={"db": "globex"}, content=b"m v=1", headers=auth)
    assert r.status_code == 204
    r = await secured.get("/query", params={"q": "SHOW DATABASES"}, headers=auth)
    assert ["globex"] in r.json()["results"][0]["series"][0]["values"]


async def test_overload_answers_503_with_retry_after(tmp_path: Path) -> None:
    from flame.clmc.store.duckdb_store import DuckDBStore

    store = DuckDBStore(tmp_path / "o.duckdb")
    ing = Ingest(store, tmp_path / "owal", max_backlog_bytes=0)
    ing.start()
    store.create_database("db")
    app = create_app(ing)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://c"
        ) as c:
            with ing.paused():  # nothing is applied, so the backlog cannot drain
                assert (
                    await c.post("/write", params={"db": "db"}, content=b"m v=1 1")
                ).status_code == 204
                r = await c.post("/write", params={"db": "db"}, content=b"m v=2 2")
            assert r.status_code == 503
            assert r.headers["Retry-After"] == "1"
            assert "backlog" in r.json()["error"]
    finally:
        ing.stop()
        store.close()


async def test_too_many_concurrent_writes_429(ingest: Ingest) -> None:
    app = create_app(ingest, max_inflight_writes=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as c:
        r = await c.post("/write", params={"db": "db"}, content=b"m v=1 1")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert "retry" in r.json()["error"]


async def test_a_dropped_database_forgets_its_field_types(client: httpx.AsyncClient) -> None:
    assert (await client.post("/write", params={"db": "db"}, content=b"m v=1 1")).status_code == 204
    assert (await client.post("/query", params={"q": "DROP DATABASE db"})).status_code == 200
    assert (await client.post("/query", params={"q": "CREATE DATABASE db"})).status_code == 200
    r = await client.post("/write", params={"db": "db"}, content=b"m v=1i 1")
    assert r.status_code == 204, r.text
