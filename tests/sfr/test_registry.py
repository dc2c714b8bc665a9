"""The FQDN registry (SFR-10, SFR-11, SFEMC-7): static entries from the topology file, tenant
isolation, delegated names, versions; and the store that persists it with the PCE lease (SFR-20).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flame.common.auth import Principal, Role
from flame.common.diagnostics import ValidationFailed
from flame.common.errors import PermissionDenied, UserError
from flame.sfr.models import (
    AddNode,
    Endpoint,
    LinkCost,
    LinkLatency,
    LinkState,
    Metric,
    RemoveNode,
    RoutingPolicy,
)
from flame.sfr.registry import (
    Conflict,
    Delegation,
    NotFound,
    Origin,
    Registration,
    Registry,
    normalise_fqdn,
)
from flame.sfr.store import (
    LeaseOutcome,
    NotActive,
    Store,
    decode_change,
    encode_change,
    topology_digest,
)
from flame.topology.geo import GeoPoint
from flame.topology.loader import load_topology
from flame.topology.model import Link, Node, NodeKind, Resources, StaticRegistration

OPERATOR = Principal("ops", Role.OPERATOR)
ACME = Principal("acme-sfemc", Role.TENANT, "acme")
GLOBEX = Principal("globex-bot", Role.TENANT, "globex")


def endpoint(sfe: str = "vod-1", fqdn: str = "vod.example", **kw: object) -> Endpoint:
    fields: dict[str, object] = {
        "sfe": sfe,
        "fqdn": fqdn,
        "cluster": "edge-1",
        "host": "127.0.0.1",
        "port": 8080,
    }
    fields.update(kw)
    return Endpoint(**fields)  # type: ignore[arg-type]


@pytest.fixture
def registry() -> Registry:
    r = Registry()
    r.delegate(OPERATOR, "vod.example", "acme")
    r.delegate(OPERATOR, "globex.example", "globex")
    return r


# -- authorisation (SFR-11, SFEMC-7) ----------------------------------------------------------


def test_tenant_registers_a_delegated_name_and_owns_the_endpoint(registry: Registry) -> None:
    change = registry.register(ACME, endpoint())
    assert change.changed
    assert change.before is None
    assert change.after is not None
    assert change.after.owner == "acme"  # stamped with the caller's tenant
    assert change.after.origin is Origin.API
    assert registry.endpoints() == [endpoint(tenant="acme")]


def test_delegation_covers_every_name_under_it(registry: Registry) -> None:
    for name in ("vod.example", "eu.vod.example", "a.b.c.vod.example"):
        assert registry.owner_of(name) == "acme"
        registry.register(ACME, endpoint(sfe=f"e-{name}", fqdn=name))
    # Not a suffix match on characters: "myvod.example" is not under "vod.example".
    assert registry.owner_of("myvod.example") is None
    assert registry.owner_of("example") is None


def test_the_most_specific_delegation_wins(registry: Registry) -> None:
    registry.delegate(OPERATOR, "live.vod.example", "globex")
    assert registry.owner_of("vod.example") == "acme"
    assert registry.owner_of("cam1.live.vod.example") == "globex"
    with pytest.raises(PermissionDenied):
        registry.register(ACME, endpoint(fqdn="cam1.live.vod.example"))
    registry.register(GLOBEX, endpoint(fqdn="cam1.live.vod.example"))


def test_foreign_registration_is_refused_naming_the_fqdn(registry: Registry) -> None:
    with pytest.raises(PermissionDenied) as info:
        registry.register(GLOBEX, endpoint(fqdn="eu.vod.example"))
    error = info.value
    assert "eu.vod.example" in error.message
    assert error.as_dict()["fqdn"] == "eu.vod.example"
    assert error.http_status == 403
    # The words are the same for a name nobody owns: no hint that acme owns this one.
    with pytest.raises(PermissionDenied) as unowned:
        registry.register(GLOBEX, endpoint(fqdn="nobody.example"))
    assert unowned.value.message.replace("nobody.example", "X") == error.message.replace(
        "eu.vod.example", "X"
    )
    assert registry.registrations() == []
    assert registry.version == 2  # the two delegations only


def test_tenant_cannot_register_for_another_tenant(registry: Registry) -> None:
    with pytest.raises(PermissionDenied, match="for tenant 'globex'"):
        registry.register(ACME, endpoint(tenant="globex"))


def test_operator_registers_anything_for_anyone(registry: Registry) -> None:
    registry.register(OPERATOR, endpoint(sfe="a", fqdn="undelegated.example"))
    registry.register(OPERATOR, endpoint(sfe="b", fqdn="vod.example", tenant="acme"))
    owners = {r.endpoint.sfe: r.owner for r in registry.registrations()}
    assert owners == {"a": None, "b": "acme"}
    # The SFEMC (operator) registered b for acme: acme sees it and may withdraw it.
    assert [r.endpoint.sfe for r in registry.registrations(ACME)] == ["b"]
    registry.withdraw(ACME, "b")


def test_tenants_see_and_withdraw_only_their_own(registry: Registry) -> None:
    registry.register(ACME, endpoint(sfe="acme-1"))
    registry.register(GLOBEX, endpoint(sfe="globex-1", fqdn="globex.example"))
    assert [r.endpoint.sfe for r in registry.registrations(ACME)] == ["acme-1"]
    assert [r.endpoint.sfe for r in registry.registrations(GLOBEX)] == ["globex-1"]
    assert len(registry.registrations(OPERATOR)) == 2
    # Another tenant's endpoint answers exactly like a missing one.
    with pytest.raises(NotFound) as foreign:
        registry.withdraw(GLOBEX, "acme-1")
    with pytest.raises(NotFound) as missing:
        registry.withdraw(GLOBEX, "no-such")
    assert foreign.value.message.replace("acme-1", "X") == missing.value.message.replace(
        "no-such", "X"
    )
    assert registry.get("acme-1") is not None


def test_a_tenant_cannot_take_over_an_endpoint_id(registry: Registry) -> None:
    registry.register(GLOBEX, endpoint(sfe="shared", fqdn="globex.example"))
    with pytest.raises(Conflict, match="taken"):
        registry.register(ACME, endpoint(sfe="shared"))
    assert registry.get("shared").owner == "globex"  # type: ignore[union-attr]


def test_only_the_operator_delegates(registry: Registry) -> None:
    with pytest.raises(PermissionDenied, match="only the operator"):
        registry.delegate(ACME, "more.example", "acme")
    with pytest.raises(PermissionDenied):
        registry.undelegate(ACME, "vod.example")


def test_undelegation_stops_new_registrations_but_keeps_running_ones(registry: Registry) -> None:
    registry.register(ACME, endpoint(sfe="running"))
    registry.undelegate(OPERATOR, "vod.example")
    assert registry.get("running") is not None
    with pytest.raises(PermissionDenied):
        registry.register(ACME, endpoint(sfe="new"))
    with pytest.raises(NotFound, match="not delegated"):
        registry.undelegate(OPERATOR, "vod.example")


def test_tenants_see_only_their_delegations(registry: Registry) -> None:
    assert registry.delegations(ACME) == [Delegation("vod.example", "acme")]
    assert len(registry.delegations(OPERATOR)) == 2


# -- names and endpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("VOD.Example.", "vod.example"), (" a-1.b.example ", "a-1.b.example")],
)
def test_names_are_normalised(raw: str, clean: str) -> None:
    assert normalise_fqdn(raw) == clean


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("localhost", "two labels"),
        ("bad_label.example", "invalid label 'bad_label'"),
        ("-x.example", "invalid label"),
        ("*.vod.example", "wildcards"),
        ("a" * 64 + ".example", "invalid label"),
        (("a" * 60 + ".") * 5 + "example", "longer than 253"),
    ],
)
def test_bad_names_say_what_is_wrong(name: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        normalise_fqdn(name)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"sfe": "has space"}, "endpoint id"),
        ({"sfe": "a/b"}, "endpoint id"),
        ({"host": "cache.local"}, "must be an IP address"),
        ({"port": 0}, "port must be from 1 to 65535"),
        ({"weight": 0.0}, "weight must be a positive"),
        ({"weight": float("inf")}, "weight must be a positive"),
        ({"fqdn": "nodots"}, "two labels"),
    ],
)
def test_bad_endpoints_are_refused(registry: Registry, bad: dict[str, Any], words: str) -> None:
    with pytest.raises(UserError, match=words):
        registry.register(OPERATOR, endpoint(**bad))
    assert registry.registrations() == []


def test_fqdns_are_stored_lowercase(registry: Registry) -> None:
    registry.register(ACME, endpoint(fqdn="EU.Vod.Example."))
    assert registry.endpoints()[0].fqdn == "eu.vod.example"


# -- versions ----------------------------------------------------------------------------------


def test_every_change_bumps_the_version_and_repeats_do_not(registry: Registry) -> None:
    v = registry.version
    registry.register(ACME, endpoint())
    assert registry.version == v + 1
    again = registry.register(ACME, endpoint())
    assert not again.changed
    assert registry.version == v + 1
    moved = registry.register(ACME, endpoint(port=9090))
    assert moved.changed
    assert moved.before is not None
    assert registry.version == v + 2
    renamed = registry.register(ACME, endpoint(fqdn="eu.vod.example"))
    assert renamed.fqdns == {"vod.example", "eu.vod.example"}  # both names' routes change
    registry.delegate(OPERATOR, "vod.example", "acme")  # the same delegation again
    assert registry.version == v + 3
    registry.withdraw(ACME, "vod-1")
    assert registry.version == v + 4


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["register", "withdraw", "delegate", "undelegate"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["vod.example", "x.vod.example", "other.example"]),
            st.sampled_from([OPERATOR, ACME, GLOBEX]),
        ),
        max_size=30,
    )
)
def test_versions_only_grow_and_tenants_never_hold_foreign_names(
    steps: list[tuple[str, str, str, Principal]],
) -> None:
    """Whatever anyone tries, a tenant only ever holds endpoints for names it owned when it
    registered them, and the version never goes back."""
    registry = Registry()
    last = registry.version
    for action, sfe, fqdn, who in steps:
        try:
            if action == "register":
                registry.register(who, endpoint(sfe=sfe, fqdn=fqdn))
                if who.role is Role.TENANT:
                    assert registry.owner_of(fqdn) == who.tenant
            elif action == "withdraw":
                registry.withdraw(who, sfe)
            elif action == "delegate":
                registry.delegate(who, fqdn, "acme" if sfe == "a" else "globex")
            else:
                registry.undelegate(who, fqdn)
        except (PermissionDenied, NotFound, Conflict):
            pass
        assert registry.version >= last
        last = registry.version
        for r in registry.registrations(ACME):
            assert r.owner == "acme"


# -- registration by configuration (SFR-10) ---------------------------------------------------

TOPOLOGY = """\
flame_topology: 1
name: reg
service_routers:
  sr-a: {address: 127.0.1.1}
clusters:
  edge-1: {sr: sr-a, capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}}
  edge-2: {sr: sr-a, capacity: {cpus: 4, memory: 8 GB, disk: 50 GB}}
registrations:
  - {fqdn: www.example.org, cluster: edge-1, host: 127.0.0.1, port: 8080}
  - {fqdn: www.example.org, cluster: edge-2, host: "::1", port: 8081, sfe: www-2}
"""


def load(tmp_path: Path, text: str = TOPOLOGY) -> object:
    path = tmp_path / "topo.yaml"
    path.write_text(text, encoding="utf-8")
    return load_topology(path)


def test_static_registrations_load_with_default_ids(tmp_path: Path) -> None:
    topology = load(tmp_path)
    assert topology.registrations == (  # type: ignore[attr-defined]
        StaticRegistration(
            "www.example.org", "edge-1", "127.0.0.1", 8080, "www.example.org@edge-1"
        ),
        StaticRegistration("www.example.org", "edge-2", "::1", 8081, "www-2"),
    )


def errors(tmp_path: Path, text: str) -> list[tuple[str, int, str]]:
    with pytest.raises(ValidationFailed) as info:
        load(tmp_path, text)
    return [(d.code, d.position.line, d.message) for d in info.value.diagnostics]


def test_static_registration_errors_are_located(tmp_path: Path) -> None:
    text = TOPOLOGY.replace(
        "registrations:\n",
        "registrations:\n"
        "  - {fqdn: a.example, cluster: edge-9, host: 127.0.0.1, port: 80}\n"
        "  - {fqdn: a.example, cluster: edge-1, host: 10.0.0, port: 80}\n"
        "  - {fqdn: a.example, cluster: edge-1, host: 127.0.0.1, port: 70000}\n"
        "  - {fqdn: a.example, cluster: edge-1, host: 127.0.0.1, port: 80, sfe: www-2}\n"
        "  - {fqdn: Bad_Name, cluster: edge-1, host: 127.0.0.1, port: 80}\n"
        "  - {cluster: edge-1, host: 127.0.0.1, port: 80, colour: red}\n"
        "  - {fqdn: a.example, cluster: sr-a, host: 127.0.0.1, port: true}\n",
    )
    found = errors(tmp_path, text)
    assert [(code, line) for code, line, _ in found] == [
        ("T103", 9),  # unknown cluster edge-9
        ("T104", 10),  # host not an IP address
        ("T104", 11),  # port out of range
        ("T104", 13),  # bad fqdn
        ("E202", 14),  # missing fqdn
        ("E200", 14),  # unknown key colour
        ("T103", 15),  # sr-a is not a cluster
        ("T104", 15),  # port: true
        ("T105", 17),  # www-2 again
    ]
    messages = [m for _, _, m in found]
    assert messages[0] == "registration #1: 'edge-9' is not a cluster"
    assert messages[-1] == "registration #9: endpoint id 'www-2' is used twice (first at line 12)"


def test_two_unnamed_entries_for_one_name_and_cluster_clash(tmp_path: Path) -> None:
    text = TOPOLOGY + "  - {fqdn: www.example.org, cluster: edge-1, host: 127.0.0.2, port: 9}\n"
    assert [code for code, _, _ in errors(tmp_path, text)] == ["T105"]


def test_static_entries_are_the_operators_and_only_the_file_changes_them(tmp_path: Path) -> None:
    topology = load(tmp_path)
    registry = Registry()
    registry.register(OPERATOR, endpoint(sfe="www-2", fqdn="www.example.org"))
    displaced = registry.configure(topology.registrations)  # type: ignore[attr-defined]
    assert [r.endpoint.sfe for r in displaced] == ["www-2"]  # the file wins
    static = registry.get("www-2")
    assert static is not None
    assert static.origin is Origin.CONFIG
    assert static.owner is None
    with pytest.raises(Conflict, match="topology file"):
        registry.withdraw(OPERATOR, "www-2")
    with pytest.raises(Conflict, match="topology file"):
        registry.register(OPERATOR, endpoint(sfe="www-2", fqdn="www.example.org"))
    version = registry.version
    registry.configure(topology.registrations)  # type: ignore[attr-defined]
    assert registry.version == version  # the same file again changes nothing


# -- the store: persistence and the lease (SFR-20) -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registrations_delegations_policies_and_versions_survive_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "pce.sqlite3"
    store = Store(db, "one")
    assert store.acquire() is LeaseOutcome.ACQUIRED
    registration = Registration(endpoint(tenant="acme"))
    policy = RoutingPolicy("vod.example", metric=Metric.HOPS, prefer_clusters=("edge-1",))
    with store.write() as w:
        w.put_registration(registration)
        w.put_delegation(Delegation("vod.example", "acme"))
        w.put_policy(policy)
        w.set_registry_version(7)
        w.put_tables({"sr-a": (3, "d1"), "sr-b": (1, "d2")})
        w.add_change(LinkState("sr-a", "sw-1", up=False))
    generation = store.load().generation
    store.close()

    again = Store(db, "two")
    state = again.load()
    assert state.generation == generation != ""
    assert state.registrations == [registration]
    assert state.delegations == [Delegation("vod.example", "acme")]
    assert state.policies == [policy]
    assert state.registry_version == 7
    assert state.tables == {"sr-a": (3, "d1"), "sr-b": (1, "d2")}
    assert state.changes == [LinkState("sr-a", "sw-1", up=False)]
    again.close()


def test_only_the_lease_holder_writes_and_a_standby_takes_over_on_expiry(tmp_path: Path) -> None:
    clock = Clock()
    db = tmp_path / "pce.sqlite3"
    active = Store(db, "active", lease_ttl=10, clock=clock)
    standby = Store(db, "standby", lease_ttl=10, clock=clock)
    assert active.acquire() is LeaseOutcome.ACQUIRED
    assert standby.acquire() is LeaseOutcome.HELD
    with pytest.raises(NotActive), standby.write():
        pytest.fail("a standby must not write")
    clock.now += 5
    assert active.acquire() is LeaseOutcome.RENEWED
    clock.now += 9  # renewed at +5, so it holds until +15
    assert standby.acquire() is LeaseOutcome.HELD
    clock.now += 2  # the active stopped renewing: expired
    assert standby.acquire() is LeaseOutcome.ACQUIRED
    lease = standby.lease()
    assert lease is not None
    assert lease.holder == "standby"
    assert lease.epoch == 2
    # The old active woke up late: fenced off, it writes nothing.
    with pytest.raises(NotActive), active.write() as w:
        w.set_registry_version(99)
    assert standby.load().registry_version == 0
    assert active.acquire() is LeaseOutcome.HELD
    active.close()
    standby.close()


def test_release_lets_a_standby_in_at_once(tmp_path: Path) -> None:
    clock = Clock()
    a = Store(tmp_path / "db", "a", clock=clock)
    b = Store(tmp_path / "db", "b", clock=clock)
    a.acquire()
    assert b.acquire() is LeaseOutcome.HELD
    a.release()
    assert b.acquire() is LeaseOutcome.ACQUIRED


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", "a")
    store.acquire()

    def failing_write() -> None:
        with store.write() as w:
            w.put_delegation(Delegation("vod.example", "acme"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing_write()
    assert store.load().delegations == []


def test_concurrent_writers_from_threads_do_not_corrupt(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", "a")
    store.acquire()

    def put(i: int) -> None:
        for j in range(20):
            with store.write() as w:
                w.put_delegation(Delegation(f"n{i}-{j}.example", "acme"))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load().delegations) == 80


def test_a_database_from_a_newer_pce_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", "a")
    store.acquire()
    with store.write():
        store._db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(Exception, match="schema version 99"):
        Store(tmp_path / "db", "b")


CHANGES = [
    LinkState("a", "b", up=False),
    LinkLatency("a", "b", 2.5),
    LinkCost("a", "b", None),
    LinkCost("a", "b", 7.0),
    RemoveNode("x"),
    AddNode(
        Node(
            "edge-9",
            NodeKind.CLUSTER,
            location=GeoPoint(51.0, -2.0),
            location_name="bath",
            sr="sr-a",
            capacity=Resources(4.0, 8 * 10**9, 5 * 10**10),
        ),
        (Link("edge-9", "sr-a", latency_ms=1.5, bandwidth_bps=1e9, cost=2.0, link_class="metro"),),
    ),
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: type(c).__name__)
def test_topology_changes_round_trip(change: object) -> None:
    assert decode_change(encode_change(change)) == change  # type: ignore[arg-type]


def test_topology_digest_ignores_layout_but_not_content(tmp_path: Path) -> None:
    one = load(tmp_path)
    (tmp_path / "b").mkdir()
    two = load(tmp_path / "b", "# a comment\n" + TOPOLOGY)
    assert topology_digest(one) == topology_digest(two)  # type: ignore[arg-type]
    (tmp_path / "c").mkdir()
    three = load(tmp_path / "c", TOPOLOGY.replace("sr-a: {address: 127.0.1.1}", "sr-a: {}"))
    assert topology_digest(one) != topology_digest(three)  # type: ignore[arg-type]
