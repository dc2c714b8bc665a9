"""The `influxdb` Python client (InfluxDB 1.x's own) against a real CLMC server, unchanged:
create a database, write points with tags and every field type, query them back, errors."""

from __future__ import annotations

import uuid

import pytest
from influxdb import InfluxDBClient  # type: ignore[import-untyped]
from influxdb.exceptions import InfluxDBClientError  # type: ignore[import-untyped]


def test_the_influxdb_python_client_works_unchanged(clmc_url: str) -> None:
    host, port = clmc_url.removeprefix("http://").split(":")
    client = InfluxDBClient(host=host, port=int(port))
    db = "client_" + uuid.uuid4().hex[:8]
    client.create_database(db)
    assert {"name": db} in client.get_list_database()
    points = [
        {
            "measurement": "sr_fqdn",
            "tags": {"sr": "sr-ue-1", "fqdn": "vod.flame.example"},
            "time": 1_800_000_000_000_000_000 + i * 1_000_000_000,
            "fields": {"response_time": 10.5 + i, "requests": i, "ok": True, "note": f"n{i}"},
        }
        for i in range(5)
    ]
    assert client.write_points(points, database=db, time_precision="n")
    result = client.query(
        'SELECT mean("response_time"), sum("requests") FROM "sr_fqdn" GROUP BY "fqdn"',
        database=db,
    )
    ((mean_row,),) = [
        list(rows) for rows in [result.get_points(tags={"fqdn": "vod.flame.example"})]
    ]
    assert mean_row["mean"] == pytest.approx(12.5)
    assert mean_row["sum"] == 10
    raw = list(client.query('SELECT * FROM "sr_fqdn" LIMIT 2', database=db).get_points())
    assert [(r["note"], r["ok"], r["sr"]) for r in raw] == [
        ("n0", True, "sr-ue-1"),
        ("n1", True, "sr-ue-1"),
    ]
    with pytest.raises(InfluxDBClientError, match="database not found"):
        client.write_points(points, database="nowhere_" + uuid.uuid4().hex[:6])
    with pytest.raises(InfluxDBClientError):
        client.query("SELEC nonsense", database=db)
