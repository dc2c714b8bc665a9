"""Property tests of the line-protocol parser (CLMC-8).

- serialise random points, parse, get the same points back (escapes, every type, unicode);
- the vectorised fast path and the reference scanner agree on plain lines;
- arbitrary bytes never raise: every problem is a located LineProtocolError.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc._lpscan import MAX_NS, MIN_NS, ScanError, scan_line
from flame.clmc.errors import LineProtocolError
from flame.clmc.lineproto import parse

_ALPHA = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\\n\r\t")
names = st.text(_ALPHA, min_size=1, max_size=8).filter(lambda s: s != "time" and s.strip() == s)
plain = st.text("abcxyz019_.-", min_size=1, max_size=6).filter(lambda s: s != "time")

FIELD_VALUES = {
    "f": st.floats(allow_nan=False, allow_infinity=False),
    "i": st.integers(-(2**63), 2**63 - 1),
    "u": st.integers(0, 2**64 - 1),
    "b": st.booleans(),
    "s": st.text(st.characters(codec="utf-8"), max_size=10),  # no surrogates (category Cs)
}


def esc(s: str, chars: str) -> str:
    for c in chars:
        s = s.replace(c, "\\" + c)
    return s


def value_text(kind: str, v: object, spelling: int) -> str:
    if kind == "f":
        return repr(float(v))  # type: ignore[arg-type]
    if kind in "iu":
        return f"{v}{kind}"
    if kind == "b":
        words = ["t", "T", "true", "True", "TRUE"] if v else ["f", "F", "false", "False", "FALSE"]
        return words[spelling % 5]
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def points(
    draw: st.DrawFn, key: st.SearchStrategy[str] = names
) -> tuple[str, dict[str, str], dict[str, tuple[str, object]], int | None]:
    m = draw(key.filter(lambda s: not s.startswith("#")))
    tags = draw(st.dictionaries(key, key, max_size=3))
    kinds = draw(st.lists(st.sampled_from("fiubs"), min_size=1, max_size=4))
    fields: dict[str, tuple[str, object]] = {}
    for kind in kinds:
        # the key carries its type, so no two points disagree on a field's type
        name = draw(key) + "_" + kind
        if name not in tags:
            fields[name] = (kind, draw(FIELD_VALUES[kind]))
    if not fields:
        fields["v_f"] = ("f", 1.0)
    ts = draw(st.none() | st.integers(MIN_NS, MAX_NS))
    return m, tags, fields, ts


def serialise(
    p: tuple[str, dict[str, str], dict[str, tuple[str, object]], int | None], spelling: int
) -> str:
    m, tags, fields, ts = p
    out = esc(m, ", ")
    for k, v in tags.items():
        out += "," + esc(k, ", =") + "=" + esc(v, ", =")
    out += " " + ",".join(
        esc(k, ", =") + "=" + value_text(kind, v, spelling) for k, (kind, v) in fields.items()
    )
    return out + ("" if ts is None else f" {ts}")


def parsed_points(body: bytes, now: int) -> list[tuple[str, dict[str, object], int]]:
    result = parse(body, now_ns=now)
    assert not result.errors, result.influx_error()
    assert not result.dropped, result.dropped
    out = []
    for b in result.batches:
        for line, row in zip(b.lines, b.table.to_pylist(), strict=True):
            t = row.pop("time")
            out.append(
                (int(line), b.measurement, {k: v for k, v in row.items() if v is not None}, t)
            )
    return [(m, r, t) for _, m, r, t in sorted(out, key=lambda x: x[0])]


def expected(
    ps: list[tuple[str, dict[str, str], dict[str, tuple[str, object]], int | None]], now: int
) -> list[tuple[str, dict[str, object], int]]:
    return [
        (m, {**tags, **{k: v for k, (_, v) in fields.items()}}, now if ts is None else ts)
        for m, tags, fields, ts in ps
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(points(), min_size=1, max_size=8), st.integers(0, 4))
def test_round_trip(ps: list, spelling: int) -> None:
    body = "\n".join(serialise(p, spelling) for p in ps).encode()
    assert parsed_points(body, 42) == expected(ps, 42)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(points(plain), min_size=1, max_size=30), st.integers(0, 4))
def test_fast_path_agrees_with_reference_scanner(ps: list, spelling: int) -> None:
    lines = [serialise(p, spelling) for p in ps]
    got = parsed_points("\n".join(lines).encode(), 7)
    want = []
    for line in lines:
        p = scan_line(line, 1)
        row: dict[str, object] = dict(p.tags)
        row.update({k: v for k, _, v in p.fields})
        want.append((p.measurement, row, 7 if p.time is None else p.time))
    assert got == want


def _same(a: object, b: object) -> bool:
    return a == b or (
        isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(body: bytes) -> None:
    result = parse(body)
    for e in result.errors:
        assert isinstance(e, LineProtocolError)
        assert e.line_no >= 1
        assert e.influx_message.startswith("unable to parse '")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(list('ab=, "\\\n0123456789.-iutTfF#e')), max_size=60))
def test_structured_garbage_is_a_parse_error_or_points(text: str) -> None:
    result = parse(text.encode())
    # each non-blank line is either a point or an error; nothing is lost silently
    for line in text.split("\n"):
        if '"' in text or "\\" in text:
            break  # quotes and escapes may join lines, as in InfluxDB
        s = line.lstrip(" ")
        if not s or s.startswith("#"):
            continue
        try:
            scan_line(s, 1)
        except ScanError:
            assert any(e.line == s for e in result.errors)
