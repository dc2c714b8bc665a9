"""The suite's one wait helper (tests/eventually.py): returns the first value that holds, treats
a raising probe as "not yet", stops at once on `Fatal`, and on time-out names what it waited for
with the probe's last value or exception."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from eventually import Fatal, eventually, eventually_async


def test_returns_the_first_truthy_value_after_failures() -> None:
    answers = iter([0, None, ConnectionError("refused"), "", {"state": "done"}])

    def probe() -> object:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert eventually(probe, every=0) == {"state": "done"}


def test_until_decides_and_the_value_is_returned() -> None:
    counter = itertools.count()
    assert eventually(lambda: next(counter), until=lambda n: n >= 3, every=0) == 3


def test_time_out_names_the_wait_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for the job to finish; last value 'queued'"):
        eventually(lambda: "queued", until=lambda s: s == "done", timeout=0.05, every=0.01,
                   what="the job to finish")  # fmt: skip


def test_time_out_shows_the_last_exception_and_chains_it() -> None:
    def probe() -> bool:
        raise KeyError("state")

    with pytest.raises(AssertionError, match=r"last exception KeyError: 'state'") as failed:
        eventually(probe, timeout=0.05, every=0.01)
    assert isinstance(failed.value.__cause__, KeyError)


def test_a_described_wait_is_described_at_the_time_out() -> None:
    seen: list[int] = []
    with pytest.raises(AssertionError, match=r"waiting for 3 polls seen"):
        eventually(lambda: seen.append(1), timeout=0.03, every=0.01,
                   what=lambda: f"{min(len(seen), 3)} polls seen")  # fmt: skip


def test_fatal_stops_at_once() -> None:
    calls = 0

    def probe() -> bool:
        nonlocal calls
        calls += 1
        raise Fatal("the process exited 1")

    with pytest.raises(Fatal, match="exited 1"):
        eventually(probe, timeout=60)
    assert calls == 1


def test_the_async_form_awaits_coroutine_probes() -> None:
    counter = itertools.count()

    async def probe() -> int:
        await asyncio.sleep(0)
        return next(counter)

    async def main() -> int:
        return await eventually_async(probe, until=lambda n: n == 2, every=0)

    assert asyncio.run(main()) == 2
    with pytest.raises(AssertionError, match="waiting for nothing; last value False"):
        asyncio.run(eventually_async(lambda: False, timeout=0.03, every=0.01, what="nothing"))


def test_an_until_that_raises_is_not_yet() -> None:
    answers = iter(["<html>starting", '{"sfe": "a"}', '{"sfe": "b"}'])
    got = eventually(lambda: next(answers), until=lambda t: json.loads(t)["sfe"] == "b", every=0)
    assert got == '{"sfe": "b"}'
