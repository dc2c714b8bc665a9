"""The vectorised fast path on Telegraf-shaped bodies (issue 12, item 3): many measurements
per body, shapes that vary within a measurement, simple string values; it must take all of
them (never hand a plain line to the line-by-line scanner) and read them exactly as the
reference scanner does."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc import lineproto
from flame.clmc._lpfast import Tokens, fast_path
from flame.clmc._lpscan import scan_line

_NAME = st.text("abcdefgxyz_", min_size=1, max_size=6).filter(lambda s: s != "time")
_STRING = st.text(st.characters(blacklist_characters=' ,="\\\n\r\t\0', codec="utf-8"), max_size=8)


def _not_in(keys: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda k: k not in keys


@st.composite
def _bodies(draw: st.DrawFn) -> list[str]:
    measurements = draw(st.lists(_NAME, min_size=1, max_size=12, unique=True))
    lines = []
    for m in measurements:
        tag_keys = draw(st.lists(_NAME, max_size=3, unique=True))
        field_keys = draw(
            st.lists(
                _NAME.filter(_not_in(tuple(tag_keys))),
                min_size=1,
                max_size=5,
                unique=True,
            )
        )
        kinds = {k: draw(st.sampled_from("fiubs")) for k in field_keys}
        for _ in range(draw(st.integers(3, 8))):
            tags = "".join(f",{k}={draw(_NAME)}" for k in tag_keys if draw(st.booleans()))
            present = [k for k in field_keys if draw(st.integers(0, 4))] or field_keys[:1]
            values = []
            for k in present:
                kind = kinds[k]
                if kind == "f":
                    values.append(f"{k}={draw(st.floats(-1e9, 1e9, allow_nan=False))!r}")
                elif kind == "i":
                    values.append(f"{k}={draw(st.integers(-(2**63), 2**63 - 1))}i")
                elif kind == "u":
                    values.append(f"{k}={draw(st.integers(0, 2**64 - 1))}u")
                elif kind == "b":
                    values.append(f"{k}={draw(st.sampled_from(['t', 'F', 'true', 'FALSE']))}")
                else:
                    values.append(f'{k}="{draw(_STRING)}"')
            ts = draw(st.none() | st.integers(0, 2**62))
            lines.append(f"{m}{tags} {','.join(values)}" + ("" if ts is None else f" {ts}"))
    return draw(st.permutations(lines))


def _rows(body: bytes) -> list[tuple[int, str, dict[str, object], int]]:
    result = lineproto.parse(body, now_ns=7)
    assert not result.errors, result.influx_error()
    out = []
    for b in result.batches:
        for line, row in zip(b.lines, b.table.to_pylist(), strict=True):
            t = row.pop("time")
            out.append(
                (int(line), b.measurement, {k: v for k, v in row.items() if v is not None}, t)
            )
    return sorted(out, key=lambda r: r[0])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(lines=_bodies())
def test_the_fast_path_takes_mixed_bodies_and_agrees_with_the_scanner(
    lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    body = "\n".join(lines).encode()
    starts, ends = lineproto._line_bounds(body)
    chunks: list[object] = []
    with caplog.at_level(logging.ERROR):
        rest = fast_path(Tokens(body, starts, ends), np.arange(len(starts)), 1, chunks)  # type: ignore[arg-type]
    # measurements of fewer than 3 lines are cheaper line by line; nothing else goes slow
    counts: dict[str, int] = {}
    for line in lines:
        m = line.split(",", 1)[0].split(" ", 1)[0]
        counts[m] = counts.get(m, 0) + 1
    assert all(counts[lines[i].split(",", 1)[0].split(" ", 1)[0]] < 3 for i in rest)
    want = []
    for n, line in enumerate(lines, 1):
        p = scan_line(line, 1)
        fields = {k: v for k, _, v in p.fields}
        want.append((n, p.measurement, {**dict(p.tags), **fields}, 7 if p.time is None else p.time))
    assert _rows(body) == want
    assert not [r for r in caplog.records if "fast path failed" in r.getMessage()]


def test_a_mixed_body_costs_about_what_one_measurement_does() -> None:
    """The number of measurements in a body must not multiply the work (it did: past 64
    shapes every further line went through the scanner, 60 times the cost of one
    measurement). What is left is a small constant per measurement (about 0.2 ms)."""
    import time

    def body(measurements: int) -> bytes:
        lines = []
        per = 20_000 // measurements
        for m in range(measurements):
            for i in range(per):
                lines.append(f"m{m},host=h{i % 50},k=k{i} a={i}.5,b={i}i,c=1.25 {i}")
        return "\n".join(lines).encode()

    def cost(measurements: int) -> float:
        b = body(measurements)
        lineproto.parse(b)
        start = time.process_time()
        for _ in range(3):
            lineproto.parse(b)
        return (time.process_time() - start) / 3

    one, many = cost(1), cost(200)
    assert many < 12 * one + 0.1, (one, many)


@pytest.mark.parametrize(
    "names",
    [
        ["docker_container_cpu", "docker_container_mem"],  # one length, 16 bytes alike
        ["abcdefgh", "abcdefgi"],  # differ in the last byte of the only word
        ["m", "n", "m"],  # one byte
        ["service_request"] * 2,  # one measurement: the shortcut
    ],
)
def test_measurements_of_one_length_are_told_apart(names: list[str]) -> None:
    """Grouping by measurement compares names word by word when they have one length (the
    one-measurement shortcut): names alike but for a byte are still two measurements."""
    lines = [f"{m},host=h{i} v={i} {i}" for i, m in enumerate(names * 4)]
    body = "\n".join(lines).encode()
    starts, ends = lineproto._line_bounds(body)
    chunks: list[object] = []
    rest = fast_path(Tokens(body, starts, ends), np.arange(len(starts)), 1, chunks)  # type: ignore[arg-type]
    assert rest == []
    assert sorted({c.measurement for c in chunks}) == sorted(set(names))  # type: ignore[attr-defined]
    got = {(b.measurement, int(line)) for b in lineproto.parse(body).batches for line in b.lines}
    assert got == {(m, n) for n, m in enumerate(names * 4, 1)}
