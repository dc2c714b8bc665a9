"""The SFE port and sandbox uid ranges of parallel test workers (tests/ranges.py) never overlap,
and the ports lie where neither free_port nor the kernel's ephemeral allocation can pick them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ranges
from flame.common import ports
from ranges import SFE_PORTS, UID_BLOCK, UID_BLOCKS, sandbox_uid_base, sfe_port_base


def _runs(most: int) -> st.SearchStrategy[list[int]]:
    """The pids of one run's xdist workers, 1 to `most` of them."""
    return st.integers(min_value=1, max_value=most).flatmap(
        lambda count: st.lists(
            st.integers(min_value=1, max_value=4_194_304), min_size=count, max_size=count
        )
    )


def _meet(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


@dataclass(frozen=True)
class Kernel:
    start: int  # ip_local_port_range
    end: int

    def free_port_slice(self, index: int, count: int) -> range:
        width = (self.start - 10_000) // count  # as tests/conftest.py gives each worker
        return range(10_000 + index * width, 10_000 + (index + 1) * width)


_kernels = st.builds(
    lambda start, extra: Kernel(start, min(start + extra, 65_535)),
    st.integers(min_value=16_384, max_value=49_152),
    st.integers(min_value=1_000, max_value=50_000),
)


def _as_worker(mp: pytest.MonkeyPatch, index: int, count: int, pid: int, kernel: Kernel) -> None:
    mp.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
    mp.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    mp.setattr(os, "getpid", lambda: pid)
    mp.setattr(ranges, "_ephemeral_end", lambda: kernel.end)
    mp.setattr(ports, "ephemeral_start", lambda: kernel.start)
    own = kernel.free_port_slice(index, count)
    mp.setenv(ports.RANGE_VARIABLE, f"{own.start}-{own.stop}")


@given(pids=_runs(8), kernel=_kernels)
def test_workers_of_one_run_get_disjoint_sfe_port_blocks_outside_free_port_and_the_kernel(
    pids: list[int], kernel: Kernel
) -> None:
    """Blocks 0 and 1 of every worker: pairwise disjoint, valid for port_ranges(), never in the
    ephemeral range, and in no free_port slice but (last resort) the worker's own."""
    taken: list[range] = []
    with pytest.MonkeyPatch.context() as mp:
        for index, pid in enumerate(pids):
            _as_worker(mp, index, len(pids), pid, kernel)
            for block in (0, 1):
                try:
                    base = sfe_port_base(block)
                except LookupError:
                    continue  # a kernel setting that leaves no room: said, not overlapped
                ports_ = range(base, base + SFE_PORTS)
                assert ports_.start >= 1024  # what port_ranges() takes
                assert ports_.stop <= 65_535
                assert ports_.stop <= kernel.start or ports_.start > kernel.end
                for other in range(len(pids)):
                    if other != index:
                        assert not _meet(ports_, kernel.free_port_slice(other, len(pids)))
                assert not any(_meet(ports_, t) for t in taken)
                taken.append(ports_)


@given(pids=_runs(8))
def test_with_linux_defaults_blocks_0_and_1_exist_and_block_0_lies_above_the_ephemeral_range(
    pids: list[int],
) -> None:
    """Up to eight workers each get two blocks; with up to four (`make test` runs three), the
    current callers' block (0) lies above the ephemeral range and block 1 outside free_port's."""
    kernel = Kernel(32_768, 60_999)
    with pytest.MonkeyPatch.context() as mp:
        for index, pid in enumerate(pids):
            _as_worker(mp, index, len(pids), pid, kernel)
            first, second = sfe_port_base(0), sfe_port_base(1)
            if len(pids) <= 4:
                assert first > kernel.end
                assert 1024 <= second < 10_000 or second > kernel.end
    with pytest.raises(LookupError, match="no SFE port block"):
        sfe_port_base(99)


@given(pids=_runs(8), sizes=st.lists(st.integers(1, UID_BLOCK), min_size=UID_BLOCKS, max_size=4))
def test_workers_of_one_run_get_disjoint_sandbox_uid_blocks(
    pids: list[int], sizes: list[int]
) -> None:
    """Every worker's every block, whatever size each caller asks, is apart from all others."""
    taken: list[range] = []
    with pytest.MonkeyPatch.context() as mp:
        for index, pid in enumerate(pids):
            _as_worker(mp, index, len(pids), pid, Kernel(32_768, 60_999))
            for block, size in enumerate(sizes):
                base = sandbox_uid_base(size, block)
                uids = range(base, base + size)
                assert uids.start >= 400_000  # above the process VIM's default sandbox uids
                assert not any(_meet(uids, t) for t in taken)
                taken.append(uids)
    for size, block in ((0, 0), (UID_BLOCK + 1, 0), (16, UID_BLOCKS)):
        with pytest.raises(LookupError):
            sandbox_uid_base(size, block)


def test_a_process_keeps_its_ranges_across_calls() -> None:
    assert sfe_port_base() == sfe_port_base()  # vim/conftest's port_base() relies on it
    assert sfe_port_base(1) == sfe_port_base(1) != sfe_port_base(0)
    assert sandbox_uid_base(16, 1) == sandbox_uid_base(16, 1)
