"""The path computation element: ranked routes per ingress SR and FQDN (SFR-4, 5, 6, 13).

Shortest-path trees rooted at every egress, i.e. every service router with a cluster (distances
and predecessors, one multi-source Dijkstra over the `Graph`'s CSR structure: the compiled
kernel `flame.sfr._sssp` on two threads when built, else scipy.sparse.csgraph), are kept for
the default metric (latency) and, on demand, for each (metric, excluded link classes, path
area) a policy asks for. Links are undirected, so the tree of an egress gives every SR its
distance and a shortest path to that egress; there are at most as many egresses as SRs, so this
is the cheaper side to run Dijkstra from. A link change rewrites one weight per tree set and
updates only the trees it can affect: a raised or failed link, the subtrees below it in the trees
that use it (SFR-13); a lowered or restored link, the distances it shortens. It reports the SRs
whose distance or path to some egress may have changed. Tables rank the endpoints of every FQDN
for many SRs at once (numpy gathers the distances, the compiled kernel or numpy's stable sorts
order them) and build `Route` objects only when a table is read.

Errors (both `UserError`): `TopologyError` (graph.py) for unknown nodes and links or bad values;
`PolicyError` from `check_policy` for policies naming unknown clusters, locations, link classes.
A `PathComputer` is not thread-safe: one caller (or a lock) at a time.

Modules: `kernel` (the compiled Dijkstra and ranking kernels, else scipy and numpy), `trees`
(the trees of one metric and filter, repaired through link changes), `ranking` (candidates
ordered per SR, `RouteTable`), `computer` (`PathComputer`: the topology, changes, policies).
"""

from __future__ import annotations

from flame.sfr.graph import TopologyError
from flame.sfr.pce.computer import PathComputer, PolicyError
from flame.sfr.pce.kernel import shortest_paths_compiled, shortest_paths_status
from flame.sfr.pce.ranking import RouteTable
from flame.sfr.pce.trees import TreeKey

__all__ = [
    "PathComputer",
    "PolicyError",
    "RouteTable",
    "TopologyError",
    "TreeKey",
    "shortest_paths_compiled",
    "shortest_paths_status",
]
