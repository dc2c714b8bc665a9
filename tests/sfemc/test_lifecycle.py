"""The endpoint lifecycle state machine (SFEMC-5): legal moves only, each persisted and published."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from flame.sfemc.events import InProcessBus
from flame.sfemc.lifecycle import (
    STABLE,
    TRANSITIONS,
    IllegalTransition,
    Lifecycle,
    LifecycleState,
    StaleState,
    is_legal,
)
from flame.sfemc.store import open_store

from .helpers import Recorder, spec

S = LifecycleState


def test_the_happy_path_up_and_down(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    bus = InProcessBus()
    rec = Recorder(bus)
    clock = iter(range(100, 200))
    life = Lifecycle(store, bus, clock=lambda: float(next(clock)))
    store.upsert_endpoint(spec(), "connected", 99.0)
    path = [
        S.UNPLACED,
        S.PLACING,
        S.PLACED,
        S.BOOTING,
        S.BOOTED,
        S.CONNECTING,
        S.CONNECTED,
        S.DISCONNECTING,
        S.BOOTED,
        S.STOPPING,
        S.PLACED,
        S.REMOVING,
        S.UNPLACED,
    ]
    for src, dst in itertools.pairwise(path):
        life.transition("svc-1.web.c1", src, dst)
    assert [(e.from_state, e.to_state) for e in rec.config] == [
        (a.value, b.value) for a, b in itertools.pairwise(path)
    ]
    first = rec.config[0]
    assert (first.cluster, first.sfc, first.sfci, first.sf, first.sfe) == (
        "c1",
        "svc",
        "svc-1",
        "web",
        "svc-1.web.c1",
    )
    assert first.time == 100.0
    assert first.duration_s == 1.0
    assert [t.event for t in store.history("svc-1.web.c1")] == rec.config
    assert store.endpoint("svc-1.web.c1").state is S.UNPLACED  # type: ignore[union-attr]


def test_illegal_transition_raises_and_changes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    bus = InProcessBus()
    rec = Recorder(bus)
    life = Lifecycle(store, bus)
    store.upsert_endpoint(spec(), "connected", 1.0)
    with pytest.raises(
        IllegalTransition, match=r"unplaced -> connected; from unplaced only placing"
    ):
        life.transition("svc-1.web.c1", S.UNPLACED, S.CONNECTED)
    assert store.endpoint("svc-1.web.c1").state is S.UNPLACED  # type: ignore[union-attr]
    assert rec.events == []
    assert store.history() == []


def test_failed_needs_a_reason_and_keeps_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    life = Lifecycle(store, InProcessBus())
    store.upsert_endpoint(spec(), "connected", 1.0)
    life.transition("svc-1.web.c1", S.UNPLACED, S.PLACING)
    with pytest.raises(Exception, match="needs a reason"):
        life.transition("svc-1.web.c1", S.PLACING, S.FAILED)
    life.transition("svc-1.web.c1", S.PLACING, S.FAILED, "image sha256:aa not in the repository")
    record = store.endpoint("svc-1.web.c1")
    assert record is not None
    assert record.state is S.FAILED
    assert record.reason == "image sha256:aa not in the repository"


def test_stale_source_state_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s.db")
    life = Lifecycle(store, InProcessBus())
    store.upsert_endpoint(spec(), "connected", 1.0)
    life.transition("svc-1.web.c1", S.UNPLACED, S.PLACING)
    with pytest.raises(StaleState, match="is placing, not unplaced"):
        life.transition("svc-1.web.c1", S.UNPLACED, S.PLACING)
    with pytest.raises(StaleState, match="does not exist"):
        life.transition("nope", S.UNPLACED, S.PLACING)


def test_every_state_can_get_back_to_unplaced() -> None:
    # Reachability: from any state there is a path home, so nothing is ever stuck.
    for start in S:
        seen, frontier = {start}, [start]
        while frontier:
            for nxt in TRANSITIONS[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert S.UNPLACED in seen or start is S.UNPLACED, start
        assert set(STABLE) <= seen | {start}


class LifecycleMachine(RuleBasedStateMachine):
    """Random attempts on several endpoints: legal ones persist and publish, illegal ones raise."""

    SFES = ("e1", "e2", "e3")

    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.store = open_store(Path(self.dir) / "s.db")
        self.bus = InProcessBus()
        self.rec = Recorder(self.bus)
        self.life = Lifecycle(self.store, self.bus)
        self.model = {sfe: S.UNPLACED for sfe in self.SFES}
        self.legal = 0
        for sfe in self.SFES:
            self.store.upsert_endpoint(spec(sfe=sfe), "connected", 0.0)

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(sfe=st.sampled_from(SFES), dst=st.sampled_from(list(S)))
    def attempt(self, sfe: str, dst: LifecycleState) -> None:
        src = self.model[sfe]
        reason = "boom" if dst is S.FAILED else None
        if is_legal(src, dst):
            event = self.life.transition(sfe, src, dst, reason)
            assert (event.from_state, event.to_state) == (src.value, dst.value)
            self.model[sfe] = dst
            self.legal += 1
        else:
            with pytest.raises(IllegalTransition):
                self.life.transition(sfe, src, dst, reason)

    @rule(
        sfe=st.sampled_from(SFES), believed=st.sampled_from(list(S)), dst=st.sampled_from(list(S))
    )
    def attempt_from_wrong_state(
        self, sfe: str, believed: LifecycleState, dst: LifecycleState
    ) -> None:
        if believed is self.model[sfe] or not is_legal(believed, dst):
            return
        with pytest.raises(StaleState):
            self.life.transition(sfe, believed, dst, "x")

    @invariant()
    def persisted_and_published(self) -> None:
        for sfe, state in self.model.items():
            record = self.store.endpoint(sfe)
            assert record is not None
            assert record.state is state
        history = [t.event for t in self.store.history()]
        assert len(history) == self.legal
        assert history == self.rec.config
        for event in history:
            assert is_legal(S(event.from_state), S(event.to_state))


TestLifecycleMachine = LifecycleMachine.TestCase
TestLifecycleMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_a_failing_subscriber_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    from flame.sfemc.events import InProcessBus as Bus

    bus = Bus()
    seen: list[object] = []

    def broken(_: object) -> None:
        raise RuntimeError("consumer bug")

    bus.subscribe("t", broken)
    unsubscribe = bus.subscribe("t", seen.append)
    bus.publish("t", 1)
    assert seen == [1]
    assert "subscriber" in caplog.text
    assert "consumer bug" in caplog.text
    unsubscribe()
    bus.publish("t", 2)
    assert seen == [1]
