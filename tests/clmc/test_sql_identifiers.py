"""Names written by users become SQL identifiers through one quoter
(`flame.common.sqlident.quote_identifier`, issue 18): quotes, blanks and keywords in names
round-trip, and a NUL in a name, which no SQL identifier can hold, is refused when written
instead of being acknowledged and then failing to apply (or, cut short at the NUL, landing in
another table). Tag and string field values may hold a NUL."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from flame.common.sqlident import quote_identifier


async def _write(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/write", params={"db": "db"}, content=body)


async def _query(client: httpx.AsyncClient, q: str) -> dict[str, Any]:
    r = await client.get("/query", params={"db": "db", "q": q, "read_your_writes": "true"})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


def test_the_quoter_doubles_quotes_and_refuses_what_no_identifier_holds() -> None:
    assert quote_identifier('a"b') == '"a""b"'
    for bad in ("", "a\0b"):
        with pytest.raises(ValueError, match="SQL identifier"):
            quote_identifier(bad)


@pytest.mark.asyncio
async def test_names_with_quotes_blanks_and_keywords_round_trip(client: httpx.AsyncClient) -> None:
    body = b'select,"k\\ 1=v "f"=1 1'
    assert (await _write(client, body)).status_code == 204
    result = await _query(client, 'SELECT * FROM "select"')
    (series,) = result["series"]
    assert series["columns"] == ["time", '"f"', '"k 1']
    assert series["values"] == [["1970-01-01T00:00:00.000000001Z", 1, "v"]]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("line", "what"),
    [
        (b"o\0p f=1 3", "measurement"),
        (b"m,a\0b=v f=1 1", "tag key"),
        (b"n g\0h=1 2", "field key"),
    ],
)
async def test_a_nul_in_a_name_is_refused_and_the_rest_stored(
    client: httpx.AsyncClient, line: bytes, what: str
) -> None:
    r = await _write(client, line + b"\nok,t=a\0b v=1 7")
    assert r.status_code == 400
    assert f"{what} contains a NUL character" in r.json()["error"]
    result = await _query(client, "SHOW MEASUREMENTS")
    assert result["series"][0]["values"] == [["ok"]]
    result = await _query(client, "SELECT * FROM ok")
    assert result["series"][0]["values"] == [
        ["1970-01-01T00:00:00.000000007Z", "a\0b", 1]  # a value may hold a NUL
    ]
    health = (await client.get("/health")).json()
    assert health["ingest"]["quarantined"] == 0  # nothing acknowledged then failed to apply


@pytest.mark.asyncio
async def test_database_and_policy_names_with_a_nul_are_refused(
    client: httpx.AsyncClient,
) -> None:
    for q in (
        'CREATE DATABASE "a\0b"',
        'CREATE DATABASE x WITH DURATION 1h NAME "r\0"',
        'CREATE RETENTION POLICY "r\0" ON db DURATION 1h REPLICATION 1',
    ):
        r = await client.post("/query", params={"q": q})
        assert "cannot contain a NUL character" in r.json()["results"][0]["error"], q
    r = await client.get("/query", params={"q": "SHOW DATABASES"})
    assert r.json()["results"][0]["series"][0]["values"] == [["db"]]
