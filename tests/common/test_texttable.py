"""One CLI table helper (issue 18 item 4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flame.common.texttable import columns

cells = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12)


def test_left_aligned_two_spaces_apart_without_trailing_blanks() -> None:
    assert columns([("NAME", "SIZE"), ("a", "1.2 MB"), ("long-name", "")]) == [
        "NAME       SIZE",
        "a          1.2 MB",
        "long-name",
    ]


def test_nothing_to_show() -> None:
    assert columns([]) == []


def test_short_rows_keep_later_columns_in_place() -> None:
    assert columns([("A", "B", "C"), ("x",), ("y", "z", "w")]) == ["A  B  C", "x", "y  z  w"]


@given(st.lists(st.lists(cells, min_size=3, max_size=3), min_size=1, max_size=8))
def test_every_column_starts_at_one_offset(rows: list[list[str]]) -> None:
    lines = columns(rows)
    assert len(lines) == len(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    starts = [0, widths[0] + 2, widths[0] + widths[1] + 4]
    for line, row in zip(lines, rows, strict=True):
        assert line == line.rstrip()
        for start, cell in zip(starts, row, strict=True):
            assert line[start : start + len(cell)] == cell
