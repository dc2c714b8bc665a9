"""MC-11: the level chosen from client hints, like an ABR player's rendition choice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flame.media.lod.choose import Candidate, Hints, Policy, choose, parse_hints

LADDER = [
    Candidate("100", 40_000, 600_000),
    Candidate("50", 20_000, 300_000),
    Candidate("20", 8_000, 130_000),
    Candidate("5", 2_000, 35_000),
]


def pick(headers: dict[str, str]) -> str:
    return choose(parse_hints(headers), LADDER).lod


def test_mc11_slow_links_get_low_levels_fast_links_high_ones() -> None:
    assert pick({"downlink": "0.1"}) == "5"
    assert pick({"downlink": "0.5"}) == "20"  # 150 kB in 3 s at 80 % of 0.5 Mbit/s
    assert pick({"downlink": "1.2"}) == "50"
    assert pick({"downlink": "10"}) == "100"
    assert pick({"ect": "2g"}) == "5"
    assert pick({"ect": "3g"}) == "20"
    assert pick({"ect": "4g"}) == "100"
    assert pick({}) == "100"  # no hint: the default 5 Mbit/s, as a player's start rate


def test_save_data_rtt_and_device_hints() -> None:
    assert pick({"downlink": "50", "save-data": "on"}) == "5"
    assert pick({"downlink": "50", "save-data": "off"}) == "100"
    # A long round trip leaves less of the budget for the bytes.
    assert pick({"downlink": "1.2", "rtt": "1500"}) == "20"
    # A phone with 0.25 GiB may draw 62,500 triangles; 0.05 GiB counts as the 0.25 floor.
    assert pick({"downlink": "50", "device-memory": "0.25"}) == "100"
    assert pick({"downlink": "50", "sec-ch-viewport-width": "100", "sec-ch-dpr": "1"}) == "20"
    assert pick({"downlink": "50", "sec-ch-viewport-width": "100", "sec-ch-dpr": "2"}) == "50"
    reason = choose(parse_hints({"downlink": "50", "sec-ch-viewport-width": "100"}), LADDER)
    assert reason.reason == "downlink + device"


def test_malformed_hints_are_ignored() -> None:
    hints = parse_hints({"downlink": "fast", "rtt": "-3", "ect": "5g", "device-memory": "nan",
                         "sec-ch-viewport-width": "1e999", "save-data": "yes please"})  # fmt: skip
    assert hints == Hints()


HEADER_NAMES = st.sampled_from(
    ["downlink", "ect", "rtt", "save-data", "device-memory", "sec-ch-viewport-width",
     "sec-ch-dpr", "viewport-width", "dpr"]
)  # fmt: skip
VALUES = st.one_of(
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["on", "slow-2g", "2g", "3g", "4g", "0", "-1", "1e308", " 7 "]),
)
LADDERS = st.lists(
    st.builds(Candidate, st.text(min_size=1, max_size=4), st.integers(0, 10**7),
              st.integers(0, 10**9)),
    min_size=1, max_size=8, unique_by=lambda c: c.lod,  # a manifest's levels have unique ids
)  # fmt: skip


@given(st.dictionaries(HEADER_NAMES, VALUES), LADDERS)
def test_any_headers_choose_one_of_the_levels(
    headers: dict[str, str], ladder: list[Candidate]
) -> None:
    choice = choose(parse_hints(headers), ladder)
    assert choice.lod in {c.lod for c in ladder}


@given(st.floats(0, 10_000), st.floats(0, 10_000), LADDERS)
def test_more_bandwidth_never_gets_a_smaller_level(
    a: float, b: float, ladder: list[Candidate]
) -> None:
    slow, fast = sorted((a, b))
    by_lod = {c.lod: c for c in ladder}
    low = by_lod[choose(Hints(downlink_mbps=slow), ladder).lod]
    high = by_lod[choose(Hints(downlink_mbps=fast), ladder).lod]
    assert high.triangles >= low.triangles or high.size <= low.size


@given(st.floats(0.01, 10_000), st.floats(0.25, 64), LADDERS)
def test_a_chosen_level_fits_the_budget_and_the_device_when_any_does(
    mbps: float, memory: float, ladder: list[Candidate]
) -> None:
    policy = Policy()
    budget = mbps * 1e6 / 8 * policy.safety * policy.budget_s
    cap = memory * 250_000
    chosen = next(
        c
        for c in ladder
        if c.lod == choose(Hints(downlink_mbps=mbps, device_memory_gib=memory), ladder).lod
    )
    if any(c.size <= budget and c.triangles <= cap for c in ladder):
        assert chosen.size <= budget
        assert chosen.triangles <= cap
    else:
        assert chosen.size == min(c.size for c in ladder)


@given(st.dictionaries(HEADER_NAMES, VALUES), LADDERS)
def test_save_data_always_gets_the_smallest(
    headers: dict[str, str], ladder: list[Candidate]
) -> None:
    chosen = choose(parse_hints({**headers, "save-data": "on"}), ladder)
    assert next(c for c in ladder if c.lod == chosen.lod).size == min(c.size for c in ladder)
