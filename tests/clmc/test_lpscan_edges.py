"""The reference scanner's byte-level rules on their edge cases (`_lpscan`: InfluxDB 1.x's
`scanKey` and `scanNumber`), pinned when issue 18 split both functions: a name ends at a `,`, ` `
(or, in tags, `=`) whose previous byte is not a backslash, whatever precedes that backslash; a
tag value may begin with `=`; number shapes, suffixes and range errors keep InfluxDB's texts."""

from __future__ import annotations

import pytest

from flame.clmc._lpscan import ScanError, scan_line

ACCEPTED = [
    ("a\\\\,b x=1", "a\\,b", (), (("x", "FLOAT", 1.0),)),
    ("a\\ b,t\\ k=v\\,w x=1", "a b", (("t k", "v,w"),), (("x", "FLOAT", 1.0),)),
    ("cpu,a==b x=1", "cpu", (("a", "=b"),), (("x", "FLOAT", 1.0),)),
    ("cpu,a\\=b=c x=1", "cpu", (("a=b", "c"),), (("x", "FLOAT", 1.0),)),
    ("cpu,a=b,a\\=b=c x=1", "cpu", (("a", "b"), ("a=b", "c")), (("x", "FLOAT", 1.0),)),
    (
        "m x=9223372036854775807i,y=-9223372036854775808i",
        "m",
        (),
        (("x", "INTEGER", 9223372036854775807), ("y", "INTEGER", -9223372036854775808)),
    ),
    ("m x=18446744073709551615u", "m", (), (("x", "UNSIGNED", 18446744073709551615),)),
    (
        "m x=5.,y=.5,z=-1.5E-3,w=1e+2",
        "m",
        (),
        (("x", "FLOAT", 5.0), ("y", "FLOAT", 0.5), ("z", "FLOAT", -0.0015), ("w", "FLOAT", 100.0)),
    ),
]

REFUSED = [
    ("cpu,a=b=c x=1", "invalid tag format"),
    ("cpu,a=b,a=c x=1", "duplicate tags"),
    ("cpu,=b x=1", "missing tag key"),
    ("cpu,a= x=1", "missing tag value"),
    ("cpu,a x=1", "missing tag value"),
    ("cpu,a=b", "missing fields"),
    ("cpu", "missing fields"),
    ("cpu,a=b,", "missing tag key"),
    (",cpu x=1", "missing measurement"),
    ("cpu\\ x=1", "missing fields"),
    ("m x=-", "invalid number"),
    ("m x=-i", "invalid number"),
    ("m x=1iu", "invalid number"),
    ("m x=1ii", "invalid number"),
    ("m x=i", "invalid boolean"),
    ("m x=1e", "invalid float"),
    ("m x=1e+", "invalid float"),
    ("m x=.e5", "invalid float"),
    ("m x=1.5e3i", "invalid number"),
    ("m x=1e5e5", "invalid float"),
    ("m x=1.2.3", "invalid number"),
    (
        "m x=9223372036854775808i",
        'unable to parse integer 9223372036854775808: strconv.ParseInt: parsing "9223372036854775808": value out of range',
    ),
    (
        "m x=-9223372036854775809i",
        'unable to parse integer -9223372036854775809: strconv.ParseInt: parsing "-9223372036854775809": value out of range',
    ),
    ("m x=-1u", 'unable to parse unsigned -1: strconv.ParseUint: parsing "-1": invalid syntax'),
    ("m x=-0u", "invalid number"),
    (
        "m x=18446744073709551616u",
        'unable to parse unsigned 18446744073709551616: strconv.ParseUint: parsing "18446744073709551616": value out of range',
    ),
    ("m x=1e400", "invalid float"),
    ("m x=-1e400", "invalid float"),
    ("m x=Nan", "invalid number"),
    ("m x=1N", "invalid number"),
    ("m x=1-2", "invalid number"),
    ("m x=+1", "invalid boolean"),
    ("m x=1u5", "invalid number"),
]


@pytest.mark.parametrize(("line", "measurement", "tags", "fields"), ACCEPTED)
def test_clmc8_edge_lines_parse_as_influxdb_reads_them(
    line: str,
    measurement: str,
    tags: tuple[tuple[str, str], ...],
    fields: tuple[tuple[str, str, object], ...],
) -> None:
    point = scan_line(line, 1)
    assert point.measurement == measurement
    assert point.tags == tags
    assert tuple((k, t.name, v) for k, t, v in point.fields) == fields


@pytest.mark.parametrize(("line", "reason"), REFUSED)
def test_clmc8_edge_lines_are_refused_with_influxdbs_reason(line: str, reason: str) -> None:
    with pytest.raises(ScanError) as caught:
        scan_line(line, 1)
    assert str(caught.value) == reason
