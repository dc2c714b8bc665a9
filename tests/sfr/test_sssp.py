"""The PCE's compiled shortest-path kernel against scipy's Dijkstra (SFR-4, SFR-13).

`flame.sfr._sssp` (tools/compile_pce.py, `make build`) computes the PCE's whole shortest-path
trees; scipy.sparse.csgraph is the fallback when it is not built. Both must give the same
distances, and predecessors that are trees of shortest paths (among equal-cost paths the two
may pick different ones). The kernel tests skip when it is not built, except under `make unit`
(FLAME_REQUIRE_COMPILED=1), which builds it first.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
from scipy.sparse.csgraph import dijkstra  # type: ignore[import-untyped]

from flame.sfr.graph import NO_NODE
from flame.sfr.pce import kernel, ranking

try:
    from flame.sfr._sssp import rank_candidates, shortest_path_trees
except ImportError:  # not built: the kernel tests skip (but not under `make unit`)
    rank_candidates = shortest_path_trees = None  # type: ignore[assignment]

needs_kernel = pytest.mark.skipif(
    shortest_path_trees is None, reason="the kernel is not built (tools/compile_pce.py)"
)


ANY_WEIGHT = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0, np.inf]),  # ties, zero-weight and down links
    st.floats(0.001, 100.0, allow_nan=False).map(lambda x: round(x, 3)),
)
# Links > 0 within a bounded ratio: the kernel's bucket queue, not its heap.
POSITIVE_WEIGHT = st.one_of(
    st.sampled_from([0.05, 0.5, 1.0, 2.0, np.inf]),
    st.floats(0.05, 50.0, allow_nan=False).map(lambda x: round(x, 2)),
)


@st.composite
def graphs(
    draw: st.DrawFn, weight: st.SearchStrategy[float] = ANY_WEIGHT
) -> tuple[csr_matrix, np.ndarray]:
    """A symmetric graph like the PCE's: some pairs, weights with ties, zeros and inf (down)."""
    n = draw(st.integers(1, 40))
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] < p[1]),
            unique=True,
            max_size=4 * n,
        )
    )
    weights = draw(st.lists(weight, min_size=len(pairs), max_size=len(pairs)))
    u = np.array([p[0] for p in pairs] + [p[1] for p in pairs], dtype=np.int64)
    v = np.array([p[1] for p in pairs] + [p[0] for p in pairs], dtype=np.int64)
    w = np.array(weights + weights, dtype=np.float64)
    order = np.lexsort((v, u))
    indptr = np.searchsorted(u[order], np.arange(n + 1)).astype(np.int32)
    matrix = csr_matrix((w[order], v[order].astype(np.int32), indptr), shape=(n, n))
    sources = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n))
    return matrix, np.array(sources, dtype=np.int32)


def run_kernel(matrix: csr_matrix, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert shortest_path_trees is not None
    n, k = matrix.shape[0], len(sources)
    dist, pred = np.full((k, n), -1.0), np.full((k, n), 7, dtype=np.int32)  # overwritten whole
    shortest_path_trees(matrix.indptr, matrix.indices, matrix.data, sources, dist, pred)
    return dist, pred


def assert_same_trees(
    matrix: csr_matrix, sources: np.ndarray, dist: np.ndarray, pred: np.ndarray
) -> None:
    """Scipy's distances exactly; every predecessor a link on a path of that distance."""
    want, want_pred = dijkstra(matrix, directed=True, indices=sources, return_predecessors=True)
    assert np.array_equal(dist, want)
    assert pred.dtype == np.int32
    assert np.array_equal(pred < 0, want_pred < 0)
    assert set(np.unique(pred[pred < 0]).tolist()) <= {NO_NODE}
    dense = matrix.toarray()
    has_link = np.zeros_like(dense, dtype=bool)
    has_link[np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)), matrix.indices] = True
    for row, source in enumerate(sources.tolist()):
        assert dist[row, source] == 0.0
        assert pred[row, source] == NO_NODE
        child = np.flatnonzero(pred[row] >= 0)
        parent = pred[row, child]
        assert has_link[parent, child].all()
        # dist[child] = dist[parent] + w (same float sum as scipy's on its own path: tolerance)
        np.testing.assert_allclose(
            dist[row, child], dist[row, parent] + dense[parent, child], rtol=1e-12, atol=1e-12
        )
        # Following pred leads to the root without a cycle.
        for start in child.tolist():
            node, steps = start, 0
            while node != source:
                node = int(pred[row, node])
                steps += 1
                assert node >= 0
                assert steps <= matrix.shape[0]


@needs_kernel
@settings(max_examples=300, deadline=None)
@given(case=graphs())
def test_kernel_equals_scipy_on_random_graphs(case: tuple[csr_matrix, np.ndarray]) -> None:
    """SFR-4: same distances as scipy, predecessors giving paths of the same cost."""
    matrix, sources = case
    dist, pred = run_kernel(matrix, sources)
    assert_same_trees(matrix, sources, dist, pred)


@needs_kernel
@settings(max_examples=300, deadline=None)
@given(case=graphs(POSITIVE_WEIGHT))
def test_bucket_queue_equals_scipy_on_random_graphs(case: tuple[csr_matrix, np.ndarray]) -> None:
    """SFR-4: links > 0 within a bounded ratio take the bucket queue: still scipy's distances."""
    matrix, sources = case
    dist, pred = run_kernel(matrix, sources)
    assert_same_trees(matrix, sources, dist, pred)


@needs_kernel
def test_bucket_queue_and_heap_give_the_same_distances() -> None:
    """One zero-weight link sends a graph to the heap: distances elsewhere must not move."""
    rng = np.random.default_rng(7)
    n, m = 300, 1200
    u, v = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = u != v
    u, v = u[keep], v[keep]
    w = np.round(rng.uniform(0.05, 5.0, len(u)), 3)
    graph = csr_matrix((np.concatenate([w, w]), (np.concatenate([u, v]), np.concatenate([v, u]))))
    graph.sum_duplicates()
    graph.indptr, graph.indices = graph.indptr.astype(np.int32), graph.indices.astype(np.int32)
    heap = graph.copy()
    heap.data = np.append(heap.data[:-1], 0.0)  # one zero link (one direction): the heap
    sources = np.arange(0, n, 7, dtype=np.int32)
    assert_same_trees(graph, sources, *run_kernel(graph, sources))  # scipy's distances exactly
    assert_same_trees(heap, sources, *run_kernel(heap, sources))


@settings(max_examples=100, deadline=None)
@given(case=graphs(), how=st.sampled_from(["two threads", "one thread", "scipy"]))
def test_pce_trees_equal_scipy_threaded_or_not(
    case: tuple[csr_matrix, np.ndarray], how: str
) -> None:
    """SFR-4/SFR-13: what `_Trees` uses (the kernel on two threads or one, else scipy) agrees."""
    matrix, sources = case
    with pytest.MonkeyPatch.context() as patch:
        if how == "two threads":  # when the machine has two cores
            patch.setattr(kernel, "SPLIT_WORK", 0)
        elif how == "one thread":
            patch.setattr(kernel, "_POOL", None)
        else:
            patch.setattr(kernel, "_KERNEL", None)
        dist, pred = kernel._shortest_path_trees(matrix, sources)
    assert dist.shape == pred.shape == (len(sources), matrix.shape[0])
    assert_same_trees(matrix, sources, dist, pred)


@needs_kernel
def test_unreachable_nodes_get_inf_and_no_predecessor() -> None:
    """SFR-13: a failed link (inf) or no link at all leaves nodes unreachable, as scipy says."""
    # 0 - 1 (1.0), 1 - 2 down (inf), 3 isolated
    matrix = csr_matrix(
        (
            np.array([1.0, 1.0, np.inf, np.inf]),
            np.array([1, 0, 2, 1], dtype=np.int32),
            np.array([0, 1, 3, 4, 4], dtype=np.int32),
        ),
        shape=(4, 4),
    )
    dist, pred = run_kernel(matrix, np.array([0, 2, 3], dtype=np.int32))
    inf = np.inf
    assert dist.tolist() == [[0.0, 1.0, inf, inf], [inf, inf, 0.0, inf], [inf, inf, inf, 0.0]]
    assert pred.tolist() == [
        [NO_NODE, 0, NO_NODE, NO_NODE],
        [NO_NODE, NO_NODE, NO_NODE, NO_NODE],
        [NO_NODE, NO_NODE, NO_NODE, NO_NODE],
    ]
    assert_same_trees(matrix, np.array([0, 2, 3], dtype=np.int32), dist, pred)


@needs_kernel
def test_single_node_and_no_sources() -> None:
    matrix = csr_matrix(
        (np.zeros(0), np.zeros(0, dtype=np.int32), np.zeros(2, dtype=np.int32)), shape=(1, 1)
    )
    dist, pred = run_kernel(matrix, np.array([0, 0], dtype=np.int32))
    assert dist.tolist() == [[0.0], [0.0]]
    assert pred.tolist() == [[NO_NODE], [NO_NODE]]
    dist, pred = run_kernel(matrix, np.zeros(0, dtype=np.int32))
    assert dist.shape == pred.shape == (0, 1)


@needs_kernel
def test_zero_weight_links_form_a_tree() -> None:
    """Zero-latency links (allowed by the topology) tie everywhere; pred is still a tree."""
    n = 6
    pairs = [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (4, 5), (5, 3)]
    u = np.array([a for a, _ in pairs] + [b for _, b in pairs])
    v = np.array([b for _, b in pairs] + [a for a, _ in pairs])
    matrix = csr_matrix((np.zeros(len(u)), (u, v)), shape=(n, n))
    assert matrix.nnz == len(u)  # explicit zeros are links (scipy's csgraph counts them too)
    sources = np.arange(n, dtype=np.int32)
    dist, pred = run_kernel(matrix, sources)
    assert (dist == 0.0).all()
    assert_same_trees(matrix, sources, dist, pred)


@needs_kernel
def test_bad_arguments_raise_instead_of_writing_out_of_bounds() -> None:
    assert shortest_path_trees is not None
    indptr = np.array([0, 1, 2], dtype=np.int32)
    indices = np.array([1, 0], dtype=np.int32)
    data = np.ones(2)
    with pytest.raises(ValueError, match="not a node"):
        shortest_path_trees(
            indptr,
            indices,
            data,
            np.array([2], dtype=np.int32),
            np.empty((1, 2)),
            np.empty((1, 2), dtype=np.int32),
        )
    with pytest.raises(ValueError, match="not a CSR graph"):
        shortest_path_trees(
            indptr,
            np.array([1, 2], dtype=np.int32),
            data,
            np.array([0], dtype=np.int32),
            np.empty((1, 2)),
            np.empty((1, 2), dtype=np.int32),
        )
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        shortest_path_trees(
            indptr,
            indices,
            data,
            np.array([0], dtype=np.int32),
            np.empty((2, 2)),
            np.empty((1, 2), dtype=np.int32),
        )


@st.composite
def candidate_sets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """`PathComputer._rank`'s input for one group: ties, unreachable, over-long, disallowed."""
    rows, fqdns, k = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    value = st.sampled_from([0.0, 1.0, 1.5, 2.0, np.inf])
    cost = np.array(draw(st.lists(value, min_size=rows * fqdns * k, max_size=rows * fqdns * k)))
    cost = cost.reshape(rows, fqdns, k)
    latency = cost  # the latency metric: the same array
    if draw(st.booleans()):  # another metric: latency is finite where cost is
        finite = st.sampled_from([0.0, 1.0, 1.5, 2.0, 9.0])
        extra = np.array(draw(st.lists(finite, min_size=cost.size, max_size=cost.size)))
        latency = np.where(np.isfinite(cost), extra.reshape(cost.shape), np.inf)

    def bools(size: int) -> np.ndarray:
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)

    ranks = draw(st.lists(st.integers(0, 2), min_size=fqdns * k, max_size=fqdns * k))
    uniform = draw(st.booleans())  # one rank for all: the kernel's cost-only path
    rank = np.zeros((fqdns, k), np.int32) if uniform else np.array(ranks, np.int32)
    limits = st.sampled_from([np.inf, 1.0, 1.5, 9.0])
    return {
        "cost": cost,
        "latency": latency,
        "rank": rank.reshape(fqdns, k),
        "max_latency": np.array(draw(st.lists(limits, min_size=fqdns, max_size=fqdns))),
        "candidate_ok": bools(fqdns * k).reshape(fqdns, k) | draw(st.booleans()),
        "row_ok": bools(rows) | draw(st.booleans()),
    }


@needs_kernel
@settings(max_examples=300, deadline=None)
@given(case=candidate_sets())
def test_compiled_ranking_equals_numpy(case: dict[str, np.ndarray]) -> None:
    """SFR-4/5/6: the compiled ranking gives numpy's stable sorts' order of routable candidates."""
    order, count = ranking._order(**case)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ranking, "_RANKER", None)
        want_order, want_count = ranking._order(**case)
    assert count.dtype == np.int32
    assert np.array_equal(count, want_count)
    for index in np.ndindex(*count.shape):
        routable = int(count[index])
        assert order[index][:routable].tolist() == want_order[index][:routable].tolist()
        assert sorted(order[index].tolist()) == list(range(order.shape[-1]))  # a permutation


@needs_kernel
def test_ranking_rejects_shapes_that_do_not_fit() -> None:
    assert rank_candidates is not None
    cost = np.zeros((2, 1, 3))
    with pytest.raises(ValueError, match="shapes must be"):
        rank_candidates(
            cost,
            cost,
            np.zeros((1, 3), np.int32),
            np.full(1, np.inf),
            np.ones((1, 3), np.uint8),
            np.ones(1, np.uint8),  # two rows
            np.empty((2, 1, 3), np.intp),
            np.empty((2, 1), np.int32),
        )


def test_status_says_which_dijkstra_runs() -> None:
    """The PCE service logs this line at start."""
    status = kernel.shortest_paths_status()
    if kernel.shortest_paths_compiled():
        assert "compiled kernel" in status
        assert "older than its source" not in status, "run `make build`"
    else:
        assert "scipy" in status
        assert "make build" in status


@pytest.mark.skipif(
    os.environ.get("FLAME_REQUIRE_COMPILED") != "1",
    reason="`make unit` sets FLAME_REQUIRE_COMPILED=1 after building the PCE's kernel",
)
def test_the_kernel_is_built_under_make() -> None:
    assert kernel.shortest_paths_compiled(), kernel.shortest_paths_status()
