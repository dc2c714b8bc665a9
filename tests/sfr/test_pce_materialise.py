"""Materialised tables (`RouteTable`) equal a straightforward construction from the ranking;
the service's text of tables equals repr() and json.dumps().

`RouteTable` builds one SR's `Route` objects per group of FQDNs in one pass (the compiled
`_sssp.table_routes`, else `_table_routes_py`), with each path to an egress walked once per SR.
The reference here builds every route on its own, with `Route(...)` and a fresh walk up the
egress's tree, as the PCE did before. Both builders must give the same routes, in the same
order, with the same paths, costs, latencies and egress SRs and addresses, on random
topologies and policies, before and after link changes.
"""

from __future__ import annotations

import dataclasses
import gc
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flame.sfr.pce.ranking as ranking_module
from flame.sfr.models import Endpoint, ForwardingTable, Metric, Route, RoutingPolicy
from flame.sfr.pce import PathComputer, RouteTable
from flame.sfr.service import PublishedTable
from flame.sfr.service.published import _routes_repr
from flame.topology.model import NodeKind

from .test_pce_properties import METRICS, SETTINGS, Case, cases

BUILDERS = {"compiled": ranking_module._table_routes, "python": ranking_module._table_routes_py}
if BUILDERS["compiled"] is ranking_module._table_routes_py:
    del BUILDERS["compiled"]  # the kernel is not built: only the Python builder to check


def reference(pce: PathComputer, table: RouteTable) -> dict[str, tuple[Route, ...]]:
    """Every route on its own: Route(...) and a walk from the SR up the egress's tree."""
    ranking, i, g = table._ranking, table._row, pce.graph
    out: dict[str, tuple[Route, ...]] = {}
    for fqdn, where in ranking.fqdns.items():
        if where is None:
            out[fqdn] = ()
            continue
        group = ranking.groups[where[0]]
        j = where[1]
        routes = []
        for x in group.order[i, j, : group.count[i, j]].tolist():
            e = int(group.egress[j, x])
            up = group.paths.pred[group.paths.egress_row[e]].tolist()
            node, path = group.paths.sources[i], [group.paths.sources[i]]
            while node != e:
                node = up[node]
                path.append(node)
            routes.append(
                Route(
                    group.endpoints[j][x],
                    g.ids[e],
                    float(group.cost[i, j, x]),
                    float(group.latency[i, j, x]),
                    tuple(g.ids[n] for n in path),
                    g.nodes[e].address,
                )
            )
        out[fqdn] = tuple(routes)
    return out


def check(
    pce: PathComputer, case: Case, policies: dict[str, RoutingPolicy], *, collect: bool = False
) -> None:
    for name, builder in BUILDERS.items():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ranking_module, "_table_routes", builder)
            tables = pce.tables(case.endpoints, policies)
            materialised = {sr: dict(table) for sr, table in tables.items()}
            if collect:
                # Compiled routes are untracked by the collector: still intact after it ran. The
                # young generations hold them; a full collection would walk the heap every
                # earlier test grew (353 s of a 10-minute suite).
                gc.collect(1)
            for sr, table in tables.items():
                want, got = reference(pce, table), materialised[sr]
                assert list(got) == list(want), (name, sr)
                for fqdn, routes in want.items():
                    assert got[fqdn] == routes, (name, sr, fqdn)
                    for a, b in zip(got[fqdn], routes, strict=True):
                        # Same types too (a numpy float would compare equal to a float).
                        assert type(a) is Route
                        assert [type(v) for v in dataclasses.astuple(a)] == [
                            type(v) for v in dataclasses.astuple(b)
                        ]
                        assert a.endpoint is b.endpoint
                        assert repr(a) == repr(b)  # the service digests tables by repr


@settings(SETTINGS, max_examples=60)
@given(
    case=cases(max_nodes=40),
    metrics=st.tuples(st.sampled_from(METRICS), st.sampled_from(METRICS)),
    max_latency=st.sampled_from([None, 2.0, 20.0]),
    addressed=st.booleans(),
)
def test_materialised_tables_equal_the_reference(
    case: Case, metrics: tuple[Metric, Metric], max_latency: float | None, addressed: bool
) -> None:
    topology = case.topology
    if addressed:  # egress SRs' addresses go into their routes
        nodes = {
            k: dataclasses.replace(n, address=f"10.0.0.{i}")
            if n.kind is NodeKind.SERVICE_ROUTER
            else n
            for i, (k, n) in enumerate(topology.nodes.items())
        }
        topology = dataclasses.replace(topology, nodes=nodes)
        case = dataclasses.replace(case, topology=topology)
    pce = PathComputer(topology)
    policies = {
        "a.example": RoutingPolicy("a.example", metric=metrics[0], max_latency_ms=max_latency),
        "b.example": RoutingPolicy("b.example", metric=metrics[1]),
        "none.example": RoutingPolicy("none.example"),  # no endpoints: an empty entry
    }
    check(pce, case, policies, collect=True)
    for change in case.changes:
        pce.apply(change)
        check(pce, case, policies)


@settings(SETTINGS, max_examples=20)
@given(case=cases(max_nodes=20))
def test_one_fqdn_routes_match_the_table(case: Case) -> None:
    """`PathComputer.routes` (one SR, one FQDN) reads the same builder as whole tables."""
    pce = PathComputer(case.topology)
    tables = pce.tables(case.endpoints, {})
    for sr in pce.service_routers:
        for fqdn in ("a.example", "b.example"):
            endpoints = [e for e in case.endpoints if e.fqdn == fqdn]
            if endpoints:
                assert pce.routes(sr, endpoints) == tables[sr][fqdn]
        with pytest.raises(KeyError):
            tables[sr]["unknown.example"]


# -- the service's text of tables: the same as repr() and json.dumps() ------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 10**20), st.just(0.1 + 0.2)
)
endpoints = st.builds(
    Endpoint,
    sfe=names,
    fqdn=names,
    cluster=names,
    host=names,
    port=st.integers(0, 65535),
    sfc=st.none() | names,
    tenant=st.none() | names,
    weight=numbers,
)
routes = st.builds(
    Route,
    endpoint=endpoints,
    egress_sr=names,
    cost=numbers,
    latency_ms=numbers,
    path=st.lists(names, max_size=5).map(tuple),
    egress_address=st.none() | names,
)


@settings(SETTINGS, max_examples=200)
@given(
    table=st.dictionaries(names, st.lists(routes, max_size=3).map(tuple), max_size=4),
    version=st.integers(0, 10**12),
    sr=names,
)
def test_table_text_equals_repr_and_json(
    table: dict[str, tuple[Route, ...]], version: int, sr: str
) -> None:
    """Digests hash repr(routes) and SRs receive json.dumps(to_dict()): to the character."""
    forwarding = ForwardingTable(sr, version, table)
    want = json.dumps(forwarding.to_dict(), separators=(",", ":")).encode()
    first = PublishedTable(forwarding, {})
    assert first.body() == want
    # A next version shares all entries but the first (the same tuples): copied from `first`.
    changed = {f: (rs[:1] if i == 0 else rs) for i, (f, rs) in enumerate(table.items())}
    second = first.successor(ForwardingTable(sr, version + 1, changed), {})
    assert second.body() == json.dumps(second.table.to_dict(), separators=(",", ":")).encode()
    third = second.successor(ForwardingTable(sr, version + 2, table), {})
    fourth = third.successor(ForwardingTable(sr, version + 3, changed), {})  # third: no body yet
    assert fourth.body() == json.dumps(fourth.table.to_dict(), separators=(",", ":")).encode()
    for entry in table.values():
        assert _routes_repr(entry) == repr(entry)
        shared = (*entry, *entry)  # the same path and endpoint objects again (the caches)
        assert _routes_repr(shared) == repr(shared)
