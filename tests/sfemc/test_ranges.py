"""The SFE port and sandbox uid ranges of parallel test workers (ranges.py) never overlap, and
the ports lie where neither free_port nor the kernel's ephemeral allocation can pick them."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flame.common import ports

from .ranges import SFE_PORTS, _ephemeral_end, sandbox_uid_base, sfe_port_base

_run = st.integers(min_value=1, max_value=4).flatmap(
    lambda count: st.lists(
        st.integers(min_value=1, max_value=4_194_304), min_size=count, max_size=count
    )
)


def _as_worker(monkeypatch: pytest.MonkeyPatch, index: int, count: int, pid: int) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    monkeypatch.setattr(os, "getpid", lambda: pid)


@pytest.mark.skipif(
    (65535 - _ephemeral_end()) // 4 < SFE_PORTS,
    reason="the kernel's ephemeral range leaves too little room above it (ranges.py falls back)",
)
@given(pids=_run)
def test_workers_of_one_run_get_disjoint_sfe_ports_above_the_ephemeral_range(
    pids: list[int],
) -> None:
    taken: list[range] = []
    with pytest.MonkeyPatch.context() as mp:
        for index, pid in enumerate(pids):
            _as_worker(mp, index, len(pids), pid)
            base = sfe_port_base()
            block = range(base, base + SFE_PORTS)
            assert block.start > _ephemeral_end() >= ports.ephemeral_start()  # not free_port's
            assert block.stop <= 65535  # what flame.sfemc.runtime.port_ranges accepts
            assert all(not set(block) & set(other) for other in taken)
            taken.append(block)


@given(pids=_run)
def test_workers_of_one_run_get_disjoint_sandbox_uids(pids: list[int]) -> None:
    taken: list[range] = []
    with pytest.MonkeyPatch.context() as mp:
        for index, pid in enumerate(pids):
            _as_worker(mp, index, len(pids), pid)
            base = sandbox_uid_base(64)
            block = range(base, base + 64)
            assert block.start >= 400_000  # above the media tests' blocks
            assert all(not set(block) & set(other) for other in taken)
            taken.append(block)


def test_a_process_keeps_its_sfe_ports_across_calls() -> None:
    assert sfe_port_base() == sfe_port_base()  # vim/conftest's port_base() relies on it
