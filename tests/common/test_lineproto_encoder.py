"""The line-protocol writer every reporter uses (`flame.common.lineproto`, CLMC-8), checked
against the CLMC's own parser (`flame.clmc.lineproto`): whatever names and values a reporter
hands it (commas, spaces, equals signs, quotes, backslashes, line breaks, unicode), the CLMC
reads back the same point, with line breaks as spaces; missing values are left out."""

from __future__ import annotations

import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flame.clmc.lineproto import parse
from flame.common.lineproto import FieldValue, line, point

_TEXT = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\t") | (
    st.sampled_from(", =\\\"'\n\r")
)
# Names: as the CLMC stores them (`time` is its column; a leading '#' is a comment line;
# spaces around a name are not kept by the parser).
# Spellings line protocol lacks (`test_a_backslash_without_a_spelling_is_left_out`): a
# backslash ending a name or tag value, an odd run of them before a delimiter in a field key.
_ODD_RUN_BEFORE_DELIMITER = re.compile(r"(?<!\\)(\\\\)*\\(?=[,= ])")
names = st.text(_TEXT, min_size=1, max_size=8).filter(
    lambda s: (
        s.strip() == s
        and s != "time"
        and not s.startswith("#")
        and not s.endswith("\\")
        and not _ODD_RUN_BEFORE_DELIMITER.search(s)
    )
)
values = st.text(_TEXT, min_size=1, max_size=10).filter(lambda s: not s.endswith("\\"))
field_values = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.text(_TEXT, max_size=10)
)


def _flat(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def _read(text: str) -> tuple[str, dict[str, object], int]:
    result = parse(text.encode(), precision="n")
    assert not result.errors, (text, result.influx_error())
    ((batch_rows, measurement),) = [(b.table.to_pylist(), b.measurement) for b in result.batches]
    (row,) = batch_rows
    ts = row.pop("time")
    return measurement, {k: v for k, v in row.items() if v is not None}, ts


@st.composite
def points(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, FieldValue], int]:
    measurement = draw(names)
    tags = draw(st.dictionaries(names, values, max_size=3))
    fields = draw(st.dictionaries(names, field_values, min_size=1, max_size=4))
    fields = {k: v for k, v in fields.items() if _flat(k) not in {_flat(t) for t in tags}}
    if not fields:
        fields = {"v_only": 1}
    return measurement, tags, fields, draw(st.integers(0, 2**62))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points())
def test_clmc8_encoded_points_read_back_the_same(
    p: tuple[str, dict[str, str], dict[str, FieldValue], int],
) -> None:
    measurement, tags, fields, ts = p
    want: dict[str, object] = {_flat(k): _flat(v) for k, v in tags.items()}
    want.update({_flat(k): _flat(v) if isinstance(v, str) else v for k, v in fields.items()})
    for text in (point(measurement, tags, fields, ts), line(measurement, tags, fields, ts)):
        assert text is not None
        assert "\n" not in text
        assert _read(text) == (_flat(measurement), want, ts)


@given(st.dictionaries(names, st.none() | st.sampled_from([math.nan, math.inf, -math.inf])))
def test_line_leaves_out_what_has_no_value(missing: dict[str, object]) -> None:
    assert line("m", {"t": None, "u": ""}, missing, 1) is None  # a point needs a field
    text = line("m", {"t": None, "u": "", "k": "v"}, {**missing, "ok": 1.5}, 1)
    assert text is not None
    assert _read(text) == ("m", {"k": "v", "ok": 1.5}, 1)


def test_a_backslash_without_a_spelling_is_left_out() -> None:
    tags = {"path": "C:\\dir\\", "k\\": "a\\\\", "only": "\\\\", "mid": "a\\,b\\ c"}
    fields: dict[str, FieldValue] = {"f\\": 1, 'q\\"': 2, "x\\,y": 3, "x\\\\,z": 4}
    text = point("m\\", tags, fields, 1)
    want: dict[str, object] = {
        "path": "C:\\dir",
        "k": "a",
        "mid": "a\\,b\\ c",
    }  # "only" had nothing left
    want.update({"f": 1, 'q\\"': 2, "x,y": 3, "x\\\\,z": 4})
    assert _read(text) == ("m", want, 1)
