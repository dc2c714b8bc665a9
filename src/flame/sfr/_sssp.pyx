# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The PCE's compiled kernels: shortest-path trees, ranking, link columns (SFR-4, SFR-13).

Built by `tools/compile_pce.py`; `flame.sfr.pce` and `flame.sfr.graph` fall back to scipy's
`scipy.sparse.csgraph.dijkstra`, numpy sorts and list comprehensions when it is not built.

`shortest_path_trees`: one Dijkstra per source, the GIL released, so callers may run several
calls at once on different sources from threads. When every link is > 0 and the longest is at
most `MAX_BUCKET_SPAN` times the shortest (latencies, costs, hops), a bucket queue half a
shortest link wide (`_tree_buckets`, O(1) per operation); else an indexed 4-ary heap with
decrease-key (`_tree`). Measured on the PCE benchmark's graph (2,500 nodes, 20,000 CSR slots,
303 sources, one thread): bucket queue 42-46 ms; 4-ary heap 57-63 ms; binary indexed heap
80-100 ms, binary lazy-deletion heap 160 ms, radix heap 130 ms, scipy (Fibonacci heap) 180 ms.

Output follows scipy's conventions: `dist` is inf for unreachable nodes, `pred` is -9999 for the
source and for unreachable nodes. Weights must be >= 0 (not checked); an inf weight is no link.
Distances are scipy's to the bit. Equal-cost ties keep the first predecessor that reached a
node's distance (strict `<`), as scipy does, but nodes are settled in another order among
equal (heap) or nearby (buckets) distances, so among equally short paths the one chosen may
differ from scipy's.

`rank_candidates` orders each FQDN's candidate endpoints for many SRs (`PathComputer._rank`);
`table_routes` builds one SR's `Route` objects from that ranking (`RouteTable`);
`link_columns` reads `Link` objects into the `Graph`'s numpy columns in one pass.
"""

from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject
from cpython.object cimport PyObject_GenericSetAttr
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.math cimport INFINITY, NAN
from libc.stdlib cimport free, malloc

cdef int NO_NODE = -9999  # scipy's "no predecessor" (flame.sfr.graph.NO_NODE)
cdef int FREE = -1  # never in the heap yet
cdef int DONE = -2  # settled
# Longest link / shortest link up to which `_tree_buckets` runs (2 buckets per shortest link).
cdef double MAX_BUCKET_SPAN = 2048.0


cdef void _tree(
    const int* indptr,
    const int* indices,
    const double* data,
    int n,
    int source,
    double* dist,
    int* pred,
    double* hkey,
    int* hnode,
    int* pos,
) noexcept nogil:
    """One shortest-path tree into dist[0:n], pred[0:n]; hkey/hnode/pos are n-long scratch.

    The heap is 4-ary (children of i: 4i + 1 .. 4i + 4), keys and nodes in separate arrays:
    half the depth of a binary heap, and the four keys a sift-down compares share a cache line.
    """
    cdef int i, size, u, v, j, child, c, best, parent, end, last_node
    cdef double d, nd, best_key, last_key
    for i in range(n):
        dist[i] = INFINITY
        pred[i] = NO_NODE
        pos[i] = FREE
    dist[source] = 0.0
    hkey[0] = 0.0
    hnode[0] = source
    pos[source] = 0
    size = 1
    while size > 0:
        u = hnode[0]
        d = hkey[0]
        pos[u] = DONE
        size -= 1
        if size > 0:  # the last entry sifts down from the root (hole technique)
            last_key = hkey[size]
            last_node = hnode[size]
            i = 0
            while True:
                child = 4 * i + 1
                if child >= size:
                    break
                best = child
                best_key = hkey[child]
                end = child + 4
                if end > size:
                    end = size
                for c in range(child + 1, end):
                    if hkey[c] < best_key:
                        best_key = hkey[c]
                        best = c
                if best_key >= last_key:
                    break
                hkey[i] = best_key
                hnode[i] = hnode[best]
                pos[hnode[i]] = i
                i = best
            hkey[i] = last_key
            hnode[i] = last_node
            pos[last_node] = i
        end = indptr[u + 1]
        for j in range(indptr[u], end):
            v = indices[j]
            nd = d + data[j]
            if nd < dist[v]:
                i = pos[v]
                if i == DONE:  # unreachable with weights >= 0; keeps the heap sound otherwise
                    continue
                dist[v] = nd
                pred[v] = u
                if i == FREE:
                    i = size
                    size += 1
                while i > 0:  # sift up: push or decrease-key
                    parent = (i - 1) >> 2
                    if hkey[parent] <= nd:
                        break
                    hkey[i] = hkey[parent]
                    hnode[i] = hnode[parent]
                    pos[hnode[i]] = i
                    i = parent
                hkey[i] = nd
                hnode[i] = v
                pos[v] = i


cdef void _tree_buckets(
    const int* indptr,
    const int* indices,
    const double* data,
    int n,
    int source,
    double* dist,
    int* pred,
    double inv_width,
    int buckets,
    int* head,
    int* entry_next,
    int* entry_node,
    unsigned char* done,
) noexcept nogil:
    """One shortest-path tree with a bucket queue: `_tree`'s distances, O(1) per operation.

    Bucket b holds the nodes of tentative distance in [b, b + 1) * width, circularly (`buckets`,
    a power of two, cover the longest link), as singly linked lists of entries (head,
    entry_next, entry_node; one entry per improvement, at most slots + 1). A node improved again
    gets a new entry; the old one is skipped when popped (`done`), which beats unlinking it.
    The width is half the shortest link, so no node can improve another of its own bucket:
    every node of the lowest non-empty bucket is settled, in any order. Distances are the same
    floats as the heap's (each the least dist[u] + w over neighbours u); only ties between
    equally short paths may pick another predecessor.
    """
    cdef int i, u, v, j, end, entry, entries, pending
    cdef long long current = 0
    cdef long long mask = buckets - 1  # no division per link
    cdef double d, nd
    for i in range(n):
        dist[i] = INFINITY
        pred[i] = NO_NODE
        done[i] = False
    for i in range(buckets):
        head[i] = -1
    dist[source] = 0.0
    entry_node[0] = source
    entry_next[0] = -1
    head[0] = 0
    entries = pending = 1
    while pending > 0:
        entry = head[current & mask]
        if entry < 0:
            current += 1
            continue
        head[current & mask] = entry_next[entry]
        pending -= 1
        u = entry_node[entry]
        if done[u]:  # an older entry of a node improved since
            continue
        done[u] = True
        d = dist[u]
        end = indptr[u + 1]
        for j in range(indptr[u], end):
            v = indices[j]
            nd = d + data[j]
            if nd < dist[v] and not done[v]:  # settled: unreachable with links > 0
                dist[v] = nd
                pred[v] = u
                i = <int>((<long long>(nd * inv_width)) & mask)
                entry_node[entries] = v
                entry_next[entries] = head[i]
                head[i] = entries
                entries += 1
                pending += 1


def shortest_path_trees(
    const int[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    const int[::1] sources,
    double[:, ::1] dist,
    int[:, ::1] pred,
):
    """Fill dist[i] and pred[i] with the shortest-path tree from sources[i], GIL released.

    indptr (int32, n + 1), indices (int32) and data (float64) are a CSR graph of n nodes;
    dist (float64) and pred (int32) are C-contiguous [len(sources), n] arrays, written whole.
    """
    cdef int n = indptr.shape[0] - 1
    cdef int k = sources.shape[0]
    cdef int r, s, j
    cdef bint bad = False
    if n < 0:
        raise ValueError("indptr must have n + 1 entries")
    if indices.shape[0] < indptr[n] or data.shape[0] < indptr[n]:
        raise ValueError("indices and data must have indptr[-1] entries")
    with nogil:  # a bad CSR would read out of bounds: O(n + slots), nothing next to Dijkstra
        bad = indptr[0] < 0
        for r in range(n):
            if indptr[r + 1] < indptr[r]:
                bad = True
        for j in range(indptr[0], indptr[n]):
            if indices[j] < 0 or indices[j] >= n:
                bad = True
    if bad:
        raise ValueError("not a CSR graph: indptr must not decrease, indices must be nodes")
    if dist.shape[0] != k or dist.shape[1] != n or pred.shape[0] != k or pred.shape[1] != n:
        raise ValueError(f"dist and pred must be [{k}, {n}]")
    for r in range(k):
        s = sources[r]
        if s < 0 or s >= n:
            raise ValueError(f"source {s} is not a node of a {n}-node graph")
    if k == 0 or n == 0:
        return
    cdef double shortest = INFINITY, longest = 0.0, w
    with nogil:
        for j in range(indptr[0], indptr[n]):
            w = data[j]
            if w < shortest:
                shortest = w
            if w > longest and w < INFINITY:
                longest = w
    # Buckets need links > 0 (a zero link ties a bucket to itself) and few buckets per link.
    cdef int buckets = 0
    if 0.0 < shortest < INFINITY and longest <= MAX_BUCKET_SPAN * shortest:
        buckets = 4
        while buckets < 2.0 * longest / shortest + 3:
            buckets *= 2
    if buckets:
        _trees_buckets(indptr, indices, data, sources, dist, pred, shortest, buckets)
    else:
        _trees_heap(indptr, indices, data, sources, dist, pred)


cdef _trees_heap(
    const int[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    const int[::1] sources,
    double[:, ::1] dist,
    int[:, ::1] pred,
):
    cdef int n = indptr.shape[0] - 1, r
    cdef double* hkey = <double*>malloc(n * sizeof(double))
    cdef int* hnode = <int*>malloc(n * sizeof(int))
    cdef int* pos = <int*>malloc(n * sizeof(int))
    if hkey == NULL or hnode == NULL or pos == NULL:
        free(hkey)
        free(hnode)
        free(pos)
        raise MemoryError()
    with nogil:
        for r in range(sources.shape[0]):
            _tree(
                &indptr[0], &indices[0], &data[0], n, sources[r],
                &dist[r, 0], &pred[r, 0], hkey, hnode, pos,
            )
    free(hkey)
    free(hnode)
    free(pos)


cdef _trees_buckets(
    const int[::1] indptr,
    const int[::1] indices,
    const double[::1] data,
    const int[::1] sources,
    double[:, ::1] dist,
    int[:, ::1] pred,
    double shortest,
    int buckets,
):
    cdef int n = indptr.shape[0] - 1, r
    cdef int entries = indptr[n] - indptr[0] + 1  # the source, then one per improving link
    cdef int* head = <int*>malloc(buckets * sizeof(int))
    cdef int* entry_next = <int*>malloc(entries * sizeof(int))
    cdef int* entry_node = <int*>malloc(entries * sizeof(int))
    cdef unsigned char* done = <unsigned char*>malloc(n)
    if head == NULL or entry_next == NULL or entry_node == NULL or done == NULL:
        free(head)
        free(entry_next)
        free(entry_node)
        free(done)
        raise MemoryError()
    with nogil:
        for r in range(sources.shape[0]):
            _tree_buckets(
                &indptr[0], &indices[0], &data[0], n, sources[r], &dist[r, 0], &pred[r, 0],
                2.0 / shortest, buckets, head, entry_next, entry_node, done,
            )
    free(head)
    free(entry_next)
    free(entry_node)
    free(done)


cdef inline bint _before(
    int rank_a, double cost_a, double lat_a, int rank_b, double cost_b, double lat_b
) noexcept nogil:
    """Does candidate a rank strictly before b (preference class, cost, latency)? Branch-free:
    the outcome is random, a mispredicted branch costs more than evaluating every term."""
    return (rank_a < rank_b) | (
        (rank_a == rank_b) & ((cost_a < cost_b) | ((cost_a == cost_b) & (lat_a < lat_b)))
    )


def rank_candidates(
    const double[:, :, ::1] cost,
    const double[:, :, ::1] latency,
    const int[:, ::1] rank,
    const double[::1] max_latency,
    const unsigned char[:, ::1] candidate_ok,
    const unsigned char[::1] row_ok,
    Py_ssize_t[:, :, ::1] order,
    int[:, ::1] count,
):
    """Rank k candidates for R rows and F FQDNs (`PathComputer._rank`), GIL released.

    Candidate j of FQDN f is routable from row r when cost[r, f, j] is finite, latency[r, f, j]
    <= max_latency[f], candidate_ok[f, j] and row_ok[r]. count[r, f] is the number routable and
    order[r, f, :count] their indices by (rank[f, j], cost, latency, j), as a stable sort gives;
    the unroutable follow in index order. k is small (an FQDN's endpoints): each candidate's
    place is counted from k comparisons, without branches, rather than sorted (an insertion
    sort mispredicts); on cost alone when an FQDN's candidates share one rank and latency is
    the cost (the default policy), the unroutable then counting as infinitely far.
    """
    cdef Py_ssize_t rows = cost.shape[0], fqdns = cost.shape[1], k = cost.shape[2]
    cdef Py_ssize_t r, f, i, j, place, routable, skipped
    cdef const double* c
    cdef const double* lat
    cdef const int* rk
    cdef const unsigned char* allowed
    cdef double limit
    cdef Py_ssize_t* out
    cdef int* uniform
    cdef bint routable_j
    cdef double* key
    cdef bint same_latency
    if (
        latency.shape[0] != rows or latency.shape[1] != fqdns or latency.shape[2] != k
        or order.shape[0] != rows or order.shape[1] != fqdns or order.shape[2] != k
        or rank.shape[0] != fqdns or rank.shape[1] != k
        or candidate_ok.shape[0] != fqdns or candidate_ok.shape[1] != k
        or max_latency.shape[0] != fqdns or row_ok.shape[0] != rows
        or count.shape[0] != rows or count.shape[1] != fqdns
    ):
        raise ValueError(
            "shapes must be: cost, latency, order [R, F, k]; rank, candidate_ok [F, k]; "
            f"max_latency [F]; row_ok [R]; count [R, F] (got cost [{rows}, {fqdns}, {k}])"
        )
    if rows == 0 or fqdns == 0 or k == 0:
        count[:, :] = 0
        return
    same_latency = &latency[0, 0, 0] == &cost[0, 0, 0]
    key = <double*>malloc(k * sizeof(double))
    uniform = <int*>malloc(fqdns * sizeof(int))  # not char: a char* write may alias anything
    if key == NULL or uniform == NULL:
        free(key)
        free(uniform)
        raise MemoryError()
    with nogil:
        for f in range(fqdns):  # one rank for all of an FQDN's candidates: the fast path
            uniform[f] = same_latency
            for j in range(1, k):
                uniform[f] = uniform[f] & (rank[f, j] == rank[f, 0])
        for r in range(rows):
            for f in range(fqdns):
                c, lat, rk = &cost[r, f, 0], &latency[r, f, 0], &rank[f, 0]
                allowed, limit = &candidate_ok[f, 0], max_latency[f] if row_ok[r] else -INFINITY
                out = &order[r, f, 0]
                routable = 0
                for j in range(k):  # key: the cost of a routable candidate, else inf
                    routable_j = (c[j] < INFINITY) & (lat[j] <= limit) & (allowed[j] != 0)
                    key[j] = c[j] if routable_j else INFINITY
                    routable += routable_j
                count[r, f] = <int>routable
                skipped = 0
                for j in range(k):
                    if key[j] == INFINITY:
                        out[routable + skipped] = j
                        skipped += 1
                        continue
                    # Routable candidates ahead of j: tied and earlier, or before it.
                    place = 0
                    if uniform[f]:
                        for i in range(j):
                            place += key[i] <= key[j]
                        for i in range(j + 1, k):
                            place += key[i] < key[j]
                    else:
                        for i in range(j):
                            place += (key[i] < INFINITY) & (
                                not _before(rk[j], c[j], lat[j], rk[i], c[i], lat[i])
                            )
                        for i in range(j + 1, k):
                            place += (key[i] < INFINITY) & _before(
                                rk[i], c[i], lat[i], rk[j], c[j], lat[j]
                            )
                    out[place] = j
    free(key)
    free(uniform)


def link_columns(
    list links,
    dict index,
    object up,
    int[::1] a,
    int[::1] b,
    double[::1] latency,
    double[::1] cost,
    unsigned char[::1] has_cost,
    unsigned char[::1] is_up,
    int[::1] link_class,
):
    """Fill the per-link columns of `flame.sfr.graph.Graph` from Link objects, in one pass.

    a, b: each end's node index (-1: not in `index`); cost NaN and has_cost 0 where a link has
    none; is_up: its state is `up`; link_class: a code per class name, numbered in order of
    first appearance (-1: none). Returns the names in code order. The Python loop it replaces
    costs several times more (an attribute, a look-up and a conversion per field and link).
    """
    cdef Py_ssize_t i, m = len(links)
    cdef dict codes = {}
    cdef list names = []
    if not (
        a.shape[0] == b.shape[0] == latency.shape[0] == cost.shape[0] == has_cost.shape[0]
        == is_up.shape[0] == link_class.shape[0] == m
    ):
        raise ValueError(f"every column must have one entry per link ({m})")
    for i in range(m):
        link = links[i]
        a[i] = index.get(link.a, -1)
        b[i] = index.get(link.b, -1)
        latency[i] = link.latency_ms
        value = link.cost
        has_cost[i] = value is not None
        cost[i] = NAN if value is None else value
        is_up[i] = link.state is up
        name = link.link_class
        if name is None:
            link_class[i] = -1
            continue
        code = codes.get(name)
        if code is None:
            code = codes[name] = len(names)
            names.append(name)
        link_class[i] = code
    return names


cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)

cdef object _new = object.__new__


def table_routes(
    type route,
    const Py_ssize_t[:, ::1] order,
    const int[::1] count,
    const double[:, ::1] cost,
    const double[:, ::1] latency,
    const int[:, ::1] egress,
    list endpoints,
    const int[:, ::1] pred,
    const int[::1] egress_row,
    int source,
    tuple ids,
    list addresses,
    list paths,
):
    """One SR's routes for F FQDNs of a ranking group (`flame.sfr.pce.RouteTable`).

    Per FQDN f, a tuple of `route` objects for the candidates order[f, :count[f]]: endpoint
    endpoints[f][j], egress SR ids[egress[f, j]], cost and latency [f, j], path from node
    `source` up the egress's tree pred[egress_row[egress]], egress_address addresses[egress].
    `paths` (per node, None until built) caches this SR's path to each egress across groups.
    Fields are set as `object.__setattr__` would (the frozen dataclass's __init__ costs three
    times as much per route). Routes, paths and their tuples hold only strings, floats and
    endpoints, never a cycle: they are untracked by the cycle collector, which otherwise spends
    most of the time (a full collection scans every route of every table held, 0.4 against
    1.9 ms per table on the PCE benchmark).
    """
    cdef Py_ssize_t fqdns = order.shape[0], k = order.shape[1], n = pred.shape[1]
    cdef Py_ssize_t f, x, j, length, node, step
    cdef int e
    cdef const int* up
    cdef list out = []
    cdef tuple routes, path
    cdef list candidates
    if (
        count.shape[0] != fqdns or cost.shape[0] != fqdns or cost.shape[1] != k
        or latency.shape[0] != fqdns or latency.shape[1] != k
        or egress.shape[0] != fqdns or egress.shape[1] != k or len(endpoints) != fqdns
        or egress_row.shape[0] != n or len(ids) != n or len(addresses) != n or len(paths) != n
        or not 0 <= source < n
    ):
        raise ValueError(
            "shapes must be: order, cost, latency, egress [F, k]; count, endpoints [F]; "
            "egress_row, ids, addresses, paths [n] (pred [E, n]); 0 <= source < n"
        )
    for f in range(fqdns):
        candidates = endpoints[f]
        if len(candidates) != k:
            raise ValueError(f"FQDN {f} has {len(candidates)} endpoints, not {k}")
        routes = PyTuple_New(count[f])
        for x in range(count[f]):
            j = order[f, x]
            e = egress[f, j]
            if not 0 <= e < n:
                raise ValueError(f"egress {e} is not a node")
            found = <object>PyList_GET_ITEM(paths, e)
            if found is None:
                # Two passes up the tree: the length, then the ids (no list to grow).
                up = &pred[egress_row[e], 0]
                length, node = 1, source
                while node != e:
                    node = up[node]
                    length += 1
                    if node < 0 or length > n:  # a broken tree must not loop forever
                        raise ValueError(f"no tree path from {ids[source]} to {ids[e]}")
                path = PyTuple_New(length)
                node = source
                for step in range(length):
                    name = ids[node]
                    Py_INCREF(name)
                    PyTuple_SET_ITEM(path, step, name)
                    node = up[node]
                PyObject_GC_UnTrack(<PyObject*>path)
                paths[e] = found = path
            r = _new(route)
            PyObject_GenericSetAttr(r, "endpoint", candidates[j])
            PyObject_GenericSetAttr(r, "egress_sr", ids[e])
            PyObject_GenericSetAttr(r, "cost", cost[f, j])
            PyObject_GenericSetAttr(r, "latency_ms", latency[f, j])
            PyObject_GenericSetAttr(r, "path", found)
            PyObject_GenericSetAttr(r, "egress_address", addresses[e])
            PyObject_GC_UnTrack(<PyObject*>r)
            Py_INCREF(r)
            PyTuple_SET_ITEM(routes, x, r)
        PyObject_GC_UnTrack(<PyObject*>routes)
        out.append(routes)
    return out
