"""The PCE's array graph (SFR-4, SFR-8): its structure, and its compiled and Python link pass.

`Graph` reads the links into numpy columns with the compiled `flame.sfr._sssp.link_columns`
when it is built, else with list comprehensions; both must give the same graph, and the same
error for the first bad link.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flame.sfr import graph as graph_module
from flame.sfr.graph import NO_NODE, Graph, TopologyError
from flame.topology.model import Link, LinkState, Node, NodeKind

needs_compiled = pytest.mark.skipif(
    graph_module._COMPILED_COLUMNS is None,
    reason="the kernel is not built (tools/compile_pce.py)",
)

KINDS = (
    NodeKind.SERVICE_ROUTER,
    NodeKind.SWITCH,
    NodeKind.CLUSTER,
    NodeKind.USER_EQUIPMENT,
)


@st.composite
def topologies(draw: st.DrawFn) -> tuple[dict[str, Node], list[Link]]:
    """Nodes of every kind (some attached to an SR, some to nothing or a non-SR) and links:
    parallel ones, down ones, costs or none, classes or none; rarely a bad one."""
    n = draw(st.integers(1, 12))
    ids = [f"n{i}" for i in range(n)]
    nodes = {}
    for node_id in ids:
        kind = draw(st.sampled_from(KINDS))
        sr = draw(st.one_of(st.none(), st.sampled_from([*ids, "ghost"])))
        nodes[node_id] = Node(node_id, kind, sr=sr)
    ends = st.sampled_from(ids) if draw(st.integers(0, 9)) else st.sampled_from([*ids, "ghost"])
    weight = st.sampled_from([0.0, 0.5, 2.0]) if draw(st.integers(0, 9)) else st.floats()
    link = st.builds(
        Link,
        ends,
        ends,
        latency_ms=weight,
        cost=st.one_of(st.none(), weight),
        state=st.sampled_from(list(LinkState)),
        link_class=st.sampled_from([None, "metro", "core", "access"]),
    )
    links = draw(st.lists(link, max_size=30))
    return nodes, links


def build(nodes: dict[str, Node], links: list[Link]) -> Graph | str:
    try:
        return Graph(nodes, links)
    except TopologyError as error:
        return str(error)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(case=topologies())
def test_compiled_link_pass_equals_python(case: tuple[dict[str, Node], list[Link]]) -> None:
    nodes, links = case
    compiled = build(nodes, links)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(graph_module, "_COMPILED_COLUMNS", None)
        python = build(nodes, links)
    if isinstance(compiled, str) or isinstance(python, str):
        assert compiled == python  # the same error for the same first bad link
        return
    for name, want in vars(python).items():
        got = getattr(compiled, name)
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype, name
            assert np.array_equal(got, want, equal_nan=True), name
        else:
            assert got == want, name


@settings(max_examples=200, deadline=None)
@given(case=topologies())
def test_structure_is_consistent(case: tuple[dict[str, Node], list[Link]]) -> None:
    """Pairs, CSR slots and attachments say the same as the links and nodes they come from."""
    nodes, links = case
    g = build(nodes, links)
    if isinstance(g, str):
        return
    ids = list(nodes)
    assert g.classes == tuple(sorted({k.link_class for k in links if k.link_class is not None}))
    for k, link in enumerate(links):
        a, b = ids.index(link.a), ids.index(link.b)
        p = int(g.link_pair[k])
        assert (g.pair_u[p], g.pair_v[p]) == (min(a, b), max(a, b))
        assert k in g.links_of_pair(p).tolist()
        assert g.up[k] == (link.state is LinkState.UP)
        assert g.link_class[k] == (
            -1 if link.link_class is None else g.classes.index(link.link_class)
        )
        assert math.isnan(g.cost[k]) if link.cost is None else g.cost[k] == link.cost
    slots = [g.links_of_pair(p) for p in range(g.pairs)] or [np.zeros(0, dtype=np.int32)]
    assert sorted(np.concatenate(slots)) == list(range(len(links)))
    for p in range(g.pairs):
        u, v = int(g.pair_u[p]), int(g.pair_v[p])
        forward, backward = g.pair_slots[p].tolist()
        assert g.slot_pair[forward] == g.slot_pair[backward] == p
        assert g.indices[forward] == v
        assert g.indices[backward] == u
        assert g.indptr[u] <= forward < g.indptr[u + 1]
        assert g.indptr[v] <= backward < g.indptr[v + 1]
    for row in range(g.n):  # rows sorted by column, one slot per pair and direction
        columns = g.neighbours(row).tolist()
        assert columns == sorted(set(columns))
    assert g.slots == 2 * g.pairs == g.indptr[-1]
    for i, node in enumerate(nodes.values()):
        named = ids.index(node.sr) if node.sr in nodes else -1
        if node.kind is NodeKind.SERVICE_ROUTER:
            want = i
        elif named >= 0 and nodes[ids[named]].kind is NodeKind.SERVICE_ROUTER:
            want = named
        else:
            want = NO_NODE
        assert g.attached_sr[i] == want
        is_egress = node.kind is NodeKind.SERVICE_ROUTER and any(
            other.kind is NodeKind.CLUSTER and other.sr == node.id for other in nodes.values()
        )
        assert (g.egress_row[i] >= 0) == is_egress
        assert g.cluster_egress[i] == (want if node.kind is NodeKind.CLUSTER else -1)
