"""Hypothesis profiles for the whole suite, chosen by `HYPOTHESIS_PROFILE` (`.ci/run` sets `ci`).

Neither sets `max_examples`, so no profile is weaker than the default: a test's own
`@settings(max_examples=N)` holds under both, and the fuzzers (tests/tosca/test_fuzz.py,
tests/sfr/router/test_fuzz.py) keep their own counts, derandomized, under `dev` and `ci` alike
(only another profile, e.g. `fuzz-deep`, replaces them). Both drop the per-example deadline:
the suite runs on shared 2-core machines, where a slow example is load, not a bug, and a
deadline made property tests fail at random under load. `ci` also prints the reproduction blob
of a failure. `fuzz-deep` (tests/tosca/test_fuzz.py) runs more.

tests/ is on sys.path (this conftest's directory), so shared helpers import by name, e.g.
`from eventually import eventually` (tests/eventually.py: the one way tests wait).

After the last test, the main pytest process (the xdist controller under `-n`) stops and
reports any process the run left behind (tests/leftovers.py): a test that forgot a server, or
an xdist worker that died mid-test before its fixtures' finalizers ran."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import settings

import leftovers
from flame.common import ports

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, print_blob=True)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
if _PROFILE in ("dev", "ci"):
    settings.load_profile(_PROFILE)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")  # set by pytest-xdist in its workers only


def pytest_configure(config: pytest.Config) -> None:
    if not _is_worker(config):  # before the xdist workers start: they inherit the token
        token = leftovers.new_token()
        os.environ[leftovers.RUN_VARIABLE] = token
        config.stash[_TOKEN] = token
    else:  # each worker (and what it starts) picks free ports in its own slice: no collision
        os.environ[ports.RANGE_VARIABLE] = _worker_port_range(config)


def _worker_port_range(config: pytest.Config) -> str:
    info: dict[str, Any] = getattr(config, "workerinput")  # noqa: B009
    index, count = int(info["workerid"].removeprefix("gw")), int(info["workercount"])
    low, high = 10_000, ports.ephemeral_start()
    width = (high - low) // count
    return f"{low + index * width}-{low + (index + 1) * width}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    token = config.stash.get(_TOKEN, None)
    if token is None:
        return
    factory: pytest.TempPathFactory = getattr(config, "_tmp_path_factory")  # noqa: B009
    basetemp = factory.getbasetemp()  # the xdist workers' basetemps are under it
    left = leftovers.sweep(token, basetemp)
    if left:
        terminalreporter.section("processes left behind (stopped now)", red=True, bold=True)
        for pid, cmdline in sorted(left.items()):
            terminalreporter.write_line(f"{pid}: {cmdline}")


_TOKEN = pytest.StashKey[str]()
