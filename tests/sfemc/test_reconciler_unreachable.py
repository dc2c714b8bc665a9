"""Issue 13: a VIM that cannot be asked (a cluster agent down, restarting or cut off) changes no
endpoint's state: nothing is concluded from silence, however long; no attempt is counted towards
`failed`; a running endpoint's registration stays; when the VIM answers again the waiting
endpoints are asked about at once and converge, and the stale reason is cleared."""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path

import pytest

from flame.sfemc.events import InProcessBus
from flame.sfemc.lifecycle import Lifecycle
from flame.sfemc.reconciler import Reconciler
from flame.sfemc.registrar import InProcessRegistrar
from flame.sfemc.store import open_store
from flame.sfemc.vim.base import EndpointSpec, VimState, VimStatus, VimUnreachable

from .fakes import FakeVim
from .helpers import spec

pytestmark = pytest.mark.asyncio

SFE = "svc-1.web.c1"
OTHER = "svc-1.web.c2"


class AwayVim(FakeVim):
    """FakeVim that can be cut off: every call then raises VimUnreachable."""

    def __init__(self) -> None:
        super().__init__()
        self.away = False
        self.asked_while_away = 0

    def _gate(self, sfe: str) -> None:
        if self.away:
            self.asked_while_away += 1
            raise VimUnreachable(sfe, "the VIM agent at http://edge:7090 did not answer")

    async def available(self) -> bool:
        return not self.away

    async def place(self, spec: EndpointSpec) -> VimStatus:
        self._gate(spec.sfe)
        return await super().place(spec)

    async def boot(self, sfe: str) -> VimStatus:
        self._gate(sfe)
        return await super().boot(sfe)

    async def stop(self, sfe: str) -> VimStatus:
        self._gate(sfe)
        return await super().stop(sfe)

    async def remove(self, sfe: str) -> None:
        self._gate(sfe)
        await super().remove(sfe)

    async def status(self, sfe: str) -> VimStatus:
        self._gate(sfe)
        return await super().status(sfe)

    async def list(self) -> builtins.list[VimStatus]:
        self._gate("*")
        return await super().list()


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.store = open_store(tmp / "s.db")
        self.away = AwayVim()  # cluster c1, on another host
        self.local = FakeVim()  # cluster c2, here
        self.registrar = InProcessRegistrar({"acme.example": "acme"})
        self.reconciler = Reconciler(
            self.store,
            Lifecycle(self.store, InProcessBus()),
            {"c1": self.away, "c2": self.local},
            self.registrar,
            resync_s=0,
            drain_s=0,
            base_delay_s=0.01,
            max_delay_s=0.1,
            unreachable_retry_s=0.5,
        )

    def path(self, sfe: str = SFE) -> list[str]:
        return [t.event.to_state for t in self.store.history(sfe=sfe)]

    def add(self, sfe: str, cluster: str, desired: str) -> None:
        self.store.upsert_endpoint(
            spec(sfe=sfe, cluster=cluster, fqdn="web.acme.example"), desired, 0.0
        )
        self.reconciler.enqueue(sfe)


async def test_a_vim_away_changes_no_state_and_converges_when_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.reconciler.start()
    try:
        rig.add(SFE, "c1", "connected")
        rig.add(OTHER, "c2", "connected")
        await rig.reconciler.wait_idle(5)
        before = rig.path()
        assert before[-1] == "connected"
        registered = dict(rig.registrar.endpoints)

        rig.away.away = True
        # Far more retries than `temporary_attempts` (5) would allow a failing VIM.
        for _ in range(8):
            await rig.reconciler.resync()
            await asyncio.sleep(0.15)
        record = rig.store.endpoint(SFE)
        assert record is not None
        assert record.state.value == "connected"
        assert "did not answer" in str(record.reason)
        assert rig.path() == before  # no transition at all, never failed
        assert rig.registrar.endpoints == registered  # still routed to: it may well serve
        assert rig.reconciler.queue.failures(SFE) == 0
        assert rig.away.asked_while_away >= 8
        # The other cluster's endpoints are reconciled as usual meanwhile.
        rig.store.set_desired(OTHER, "booted")
        rig.reconciler.enqueue(OTHER)
        await asyncio.sleep(0.3)
        assert rig.store.endpoint(OTHER).state.value == "booted"  # type: ignore[union-attr]

        rig.away.away = False  # back: the probe asks about the waiting endpoint at once
        for _ in range(50):
            await asyncio.sleep(0.02)
            record = rig.store.endpoint(SFE)
            if record is not None and record.reason is None:
                break
        assert record is not None
        assert record.reason is None
        assert record.state.value == "connected"
        assert rig.path() == before
    finally:
        await rig.reconciler.stop()


async def test_an_operation_cut_off_mid_way_resumes_without_duplicating(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.away.away = True  # away from the start: the placement cannot even begin
    await rig.reconciler.start()
    try:
        rig.add(SFE, "c1", "connected")
        await asyncio.sleep(1.2)
        record = rig.store.endpoint(SFE)
        assert record is not None
        assert record.state.value == "placing"  # waiting, not failed
        assert "failed" not in rig.path()
        rig.away.away = False
        await rig.reconciler.wait_idle(5)
        assert rig.path() == ["placing", "placed", "booting", "booted", "connecting", "connected"]
        assert [c for c in rig.away.calls if c[0] in ("place", "boot")] == [
            ("place", SFE),
            ("boot", SFE),
        ]
        assert rig.store.endpoint(SFE).reason is None  # type: ignore[union-attr]
    finally:
        await rig.reconciler.stop()


async def test_resync_checks_the_vims_that_answer(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.local.states["orphan.web.c2"] = VimState.RUNNING  # runs here, no record
    rig.away.states["orphan.web.c1"] = VimState.RUNNING  # runs there, no record
    rig.away.away = True
    await rig.reconciler.start()  # the start-up resync must not fail on the VIM away
    try:
        assert "orphan.web.c2" not in rig.local.states
        assert "orphan.web.c1" in rig.away.states  # not known: not touched
        rig.away.away = False
        await rig.reconciler.resync()
        assert "orphan.web.c1" not in rig.away.states
    finally:
        await rig.reconciler.stop()
