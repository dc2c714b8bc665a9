"""Line protocol (CLMC-8): values, escapes, errors worded as InfluxDB 1.x, both parser paths."""

from __future__ import annotations

from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from flame.clmc.lineproto import parse
from flame.clmc.store.base import FIELD, KIND_KEY, TAG


def rows(body: bytes, **kw: object) -> dict[str, list[dict[str, Any]]]:
    result = parse(body, **kw)  # type: ignore[arg-type]
    assert not result.errors, result.influx_error()
    return {b.measurement: b.table.to_pylist() for b in result.batches}


def test_all_field_types_and_tags() -> None:
    got = rows(b'cpu,host=a,dc=x f=1.5,i=-3i,u=7u,s="hi",t=t,T=TRUE,F=False 10')
    assert got == {
        "cpu": [
            {
                "time": 10,
                "dc": "x",
                "host": "a",
                "F": False,
                "T": True,
                "f": 1.5,
                "i": -3,
                "s": "hi",
                "t": True,
                "u": 7,
            }
        ]
    }


def test_column_kinds_and_types_are_marked_for_the_store() -> None:
    (batch,) = parse(b'm,t=a f=1,i=2i,u=3u,b=true,s="x" 1').batches
    kinds = {f.name: f.metadata[KIND_KEY] for f in batch.table.schema if f.name != "time"}
    assert kinds == {"t": TAG, "f": FIELD, "i": FIELD, "u": FIELD, "b": FIELD, "s": FIELD}
    types = {f.name: f.type for f in batch.table.schema}
    assert types["i"] == pa.int64()
    assert types["u"] == pa.uint64()
    assert types["b"] == pa.bool_()


@pytest.mark.parametrize(
    ("precision", "factor"),
    [
        ("n", 1),
        (None, 1),
        ("u", 10**3),
        ("ms", 10**6),
        ("s", 10**9),
        ("m", 60 * 10**9),
        ("h", 3600 * 10**9),
    ],
)
def test_precision(precision: str | None, factor: int) -> None:
    assert rows(b"m v=1 5", precision=precision)["m"][0]["time"] == 5 * factor


def test_missing_timestamp_is_server_time_truncated_to_precision() -> None:
    got = rows(b"m v=1\nm v=2", precision="s", now_ns=1_234_567_891_000)
    assert [r["time"] for r in got["m"]] == [1_234_000_000_000, 1_234_000_000_000]


def test_escapes() -> None:
    got = rows(b'we\\ ird\\,m,t\\ k\\=1=v\\,a\\ l f\\=k\\ 1="q\\"uo\\\\te",x=1 1')
    assert got == {"we ird,m": [{"time": 1, "t k=1": "v,a l", "f=k 1": 'q"uo\\te', "x": 1.0}]}


def test_comments_blank_lines_leading_spaces_crlf_free() -> None:
    got = rows(b"# header\n\n   \n  m v=1 1\n\tm v=2 2\n")
    assert [r["v"] for r in got["m"]] == [1.0, 2.0]


def test_newline_inside_quoted_string() -> None:
    got = rows(b'm s="a\nb" 1\nm s="c" 2')
    assert [r["s"] for r in got["m"]] == ["a\nb", "c"]


def test_last_duplicate_field_wins() -> None:
    assert rows(b"m v=1,v=2 1")["m"] == [{"time": 1, "v": 2.0}]


def test_measurements_and_shapes_mixed() -> None:
    body = b"\n".join(
        [
            b"cpu,h=a u=1 1",
            b"mem free=2i 2",
            b"cpu,h=b,z=q u=3 3",
            b"cpu u=4 4",
            b"mem free=5i,x=1 5",
        ]
    )
    got = rows(body)
    assert [r["u"] for r in got["cpu"]] == [1.0, 3.0, 4.0]
    assert sorted(r["free"] for r in got["mem"]) == [2, 5]


# InfluxDB 1.6.7's own texts, checked against the real server by test_influx_compat.py.
ERRORS = [
    (b"cpu", "missing fields"),
    (b"cpu value", "invalid field format"),
    (b"cpu value=", "missing field value"),
    (b"cpu,host value=1", "missing tag value"),
    (b"cpu,=a value=1", "missing tag key"),
    (b"cpu value=1 abc", "bad timestamp"),
    (b"cpu value=1 1 2", "point is invalid"),
    (b"cpu value=tru", "invalid boolean"),
    (b'cpu value="abc', "unbalanced quotes"),
    (b"cpu,a=1,a=2 value=1", "duplicate tags"),
    (b",a=1 value=1", "missing measurement"),
    (b"cpu value=1.5i", "invalid number"),
    (b"cpu value=nan", "invalid number"),
    (b"cpu value=inf", "invalid boolean"),
    (b"cpu,a=b=c value=1", "invalid tag format"),
    (b"cpu value=+5", "invalid boolean"),
    (b"cpu value=1e5e5", "invalid float"),
    (
        b"cpu value=99999999999999999999i",
        'unable to parse integer 99999999999999999999: strconv.ParseInt: parsing "99999999999999999999": value out of range',
    ),
    (
        b"cpu v=1 99999999999999999999",
        'strconv.ParseInt: parsing "99999999999999999999": value out of range',
    ),
    (
        b"cpu v=1 9223372036854775807",
        "time outside range -9223372036854775806 - 9223372036854775806",
    ),
    (b"cpu v=1 -", 'strconv.ParseInt: parsing "-": invalid syntax'),
    (b"cpu v=1\r", "invalid number"),
]


@pytest.mark.parametrize(("line", "reason"), ERRORS)
def test_errors_word_and_locate(line: bytes, reason: str) -> None:
    # last, because an unbalanced quote swallows the lines after it (as in InfluxDB)
    body = b"ok v=1 1\nok v=2 2\n" + line
    result = parse(body)
    (err,) = result.errors
    assert err.reason == reason
    assert err.line_no == 3
    assert err.influx_message == f"unable to parse '{line.decode()}': {reason}"
    assert "line 3" in err.message
    assert result.points == 2  # the good lines are kept


def test_several_errors_are_joined_like_influxdb() -> None:
    result = parse(b"bad1\nbad2")
    assert (
        result.influx_error()
        == "unable to parse 'bad1': missing fields\nunable to parse 'bad2': missing fields"
    )


def test_type_conflict_inside_one_body_drops_later_points() -> None:
    result = parse(b"m v=1 1\nm v=2i 2\nm v=3 3")
    assert [d.line for d in result.dropped] == [2]
    assert result.dropped[0].message == (
        'field type conflict: input field "v" on measurement "m" is type integer, already exists as type float'
    )
    assert [r["v"] for r in result.batches[0].table.to_pylist()] == [1.0, 3.0]


def test_reserved_time_key() -> None:
    result = parse(b"a time=1,v=2 1\nb time=1 1\nc,time=x v=1 1")
    assert {b.measurement: b.table.to_pylist() for b in result.batches} == {
        "a": [{"time": 1, "v": 2.0}]
    }
    assert [d.message for d in result.dropped] == [
        'invalid field name: input field "time" on measurement "b" is invalid',
        'invalid tag key: input tag "time" on measurement "c" is invalid',
    ]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    result = parse(b"h\xff v=1 1")
    assert [b.measurement for b in result.batches] == ["h\ufffd"]


def test_unsigned_range() -> None:
    assert rows(b"m v=18446744073709551615u 1")["m"][0]["v"] == 2**64 - 1
    (err,) = parse(b"m v=18446744073709551616u 1").errors
    assert "value out of range" in err.reason


def test_a_bad_value_deep_in_a_big_batch_only_costs_its_line() -> None:
    lines = [f"m,h=a v={i} {i}".encode() for i in range(2000)]
    lines[1500] = b"m,h=a v=1.2.3 1500"
    result = parse(b"\n".join(lines))
    assert [e.line_no for e in result.errors] == [1501]
    assert result.errors[0].reason == "invalid number"
    assert result.points == 1999
