"""Ranked candidates per SR and FQDN, and `RouteTable`: `Route` objects built when a table
is read (SFR-4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flame.common.errors import FlameError
from flame.sfr.graph import BoolArray, FloatArray, IntArray
from flame.sfr.models import Endpoint, Route
from flame.sfr.pce.kernel import _RANKER, ROUND_DIGITS, _split
from flame.sfr.pce.trees import TreeKey


@dataclass(slots=True)
class _Paths:
    """The predecessor matrix a ranking was made on (copy-on-write in `_Trees`), for paths.

    The tree of an egress leads every node towards it, so the path from an SR to an egress is
    read from the SR up that tree (`_table_routes`, once per SR and egress).
    """

    sources: list[int]  # per ranking row: the SR's node index
    egress_row: IntArray  # per node: its row in `pred` (egresses only)
    pred: IntArray


@dataclass(slots=True)
class _Group:
    """FQDNs that share a tree set and a number of candidate endpoints, ranked for many SRs."""

    endpoints: list[list[Endpoint]]  # per FQDN, the candidates
    egress: IntArray  # (F, k) each candidate's egress SR (node index)
    order: npt.NDArray[np.intp]  # (R, F, k) candidate indices, best first
    count: IntArray  # (R, F) how many of them are routable
    cost: FloatArray  # (R, F, k) per candidate (not ranked)
    latency: FloatArray  # (R, F, k) per candidate (not ranked); `cost` itself for latency
    paths: _Paths


@dataclass(slots=True)
class _Ranking:
    """The result of one `tables` or `routes` call: where each FQDN's ranking is."""

    ids: tuple[str, ...]
    fqdns: dict[str, tuple[int, int] | None]  # fqdn -> (group, index in group); None: no routes
    groups: list[_Group]
    addresses: list[str | None]  # per node index: the egress SR's `address` for its routes

    def group_routes(
        self, i: int, g: int, paths: dict[int, list[tuple[str, ...] | None]]
    ) -> list[tuple[Route, ...]]:
        """The routes of every FQDN of group g for ranking row i, in one pass.

        `paths` holds the row's path to each egress per predecessor matrix (groups of a tree
        set share it), so each path is walked and built once per SR, not once per route.
        """
        group = self.groups[g]
        source = group.paths.sources[i]
        row_paths = paths.get(id(group.paths))
        if row_paths is None:
            row_paths = paths[id(group.paths)] = [None] * len(self.ids)
        try:
            return _table_routes(
                Route,
                group.order[i],
                group.count[i],
                group.cost[i],
                group.latency[i],
                group.egress,
                group.endpoints,
                group.paths.pred,
                group.paths.egress_row,
                source,
                self.ids,
                self.addresses,
                row_paths,
            )
        except ValueError as e:  # a broken tree (or bad shapes): a bug, not the caller's
            raise FlameError(str(e)) from e


def _table_routes_py(
    route: type[Route],
    order: npt.NDArray[np.intp],
    count: IntArray,
    cost: FloatArray,
    latency: FloatArray,
    egress: IntArray,
    endpoints: list[list[Endpoint]],
    pred: IntArray,
    egress_row: IntArray,
    source: int,
    ids: tuple[str, ...],
    addresses: list[str | None],
    paths: list[tuple[str, ...] | None],
) -> list[tuple[Route, ...]]:
    """`_sssp.table_routes` when it is not compiled: the same routes, in Python."""
    out: list[tuple[Route, ...]] = []
    costs, latencies = cost.tolist(), latency.tolist()
    for f, (ranked, n, cands, nodes) in enumerate(
        zip(order.tolist(), count.tolist(), endpoints, egress.tolist(), strict=True)
    ):
        routes = []
        for j in ranked[:n]:
            e = nodes[j]
            path = paths[e]
            if path is None:
                up, walk, node = pred[egress_row[e]], [source], source
                while node != e:
                    node = int(up[node])
                    walk.append(node)
                    if node < 0 or len(walk) > len(ids):  # a broken tree must not loop forever
                        raise ValueError(f"no tree path from {ids[source]} to {ids[e]}")
                path = paths[e] = tuple(ids[x] for x in walk)
            routes.append(route(cands[j], ids[e], costs[f][j], latencies[f][j], path, addresses[e]))
        out.append(tuple(routes))
    return out


def _load_table_routes() -> Callable[..., list[tuple[Route, ...]]]:
    try:
        from flame.sfr._sssp import table_routes  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return _table_routes_py
    return table_routes


_table_routes = _load_table_routes()


def _by_source(matrix: FloatArray, tree_rows: IntArray, sources: IntArray) -> FloatArray:
    """matrix[tree_rows, sources] transposed, (sources, tree_rows), rounded to 1e-9.

    Different paths of the same length can sum to floats an ulp apart; rounding makes ties
    real ties (broken by endpoint id) and incremental results equal to recomputed ones.
    """
    picked = matrix[:, sources][tree_rows].T.copy()  # C order: groups gather along rows
    return np.round(picked, ROUND_DIGITS, out=picked)


def _order(
    cost: FloatArray,
    latency: FloatArray,
    rank: IntArray,
    max_latency: FloatArray,
    candidate_ok: BoolArray,
    row_ok: BoolArray,
) -> tuple[npt.NDArray[np.intp], IntArray]:
    """Rank (R, F, k) candidates: order (indices, best first) and count (R, F) of routable.

    Routable: finite cost, latency within the FQDN's maximum, candidate and row allowed.
    Best: preference rank, then cost, then latency, then index (candidates come in endpoint id
    order). Only order[..., :count] is meaningful. Compiled when built, rows over two threads:
    numpy's sorts along an axis of a few elements cost more per row than the sorting itself
    (7 ms against 2 for the benchmark's 93,500 rows of 5).
    """
    if _RANKER is not None:
        ranker, candidate_bytes, row_bytes = (
            _RANKER,
            candidate_ok.view(np.uint8),
            row_ok.view(np.uint8),
        )
        order = np.empty(cost.shape, dtype=np.intp)
        count = np.empty(cost.shape[:2], dtype=np.int32)
        _split(
            len(cost),
            cost.size,
            lambda part: ranker(
                cost[part],
                latency[part],
                rank,
                max_latency,
                candidate_bytes,
                row_bytes[part],
                order[part],
                count[part],
            ),
        )
        return order, count
    ok = np.isfinite(cost) & candidate_ok[None] & row_ok[:, None, None]
    if np.isfinite(max_latency).any():
        ok &= latency <= max_latency[None, :, None]
    # Stable sorts keep the index order for ties.
    keys: list[npt.NDArray[np.generic]] = []
    if latency is not cost:
        keys.append(latency)
    keys.append(np.where(ok, cost, np.inf))
    if rank.any():  # preferences first; unroutable ones still last
        keys.append(np.where(ok, rank[None], np.iinfo(np.int32).max))
    if len(keys) == 1:
        order = np.argsort(keys[0], axis=-1, kind="stable")
    else:
        order = np.lexsort(keys, axis=-1)
    return order, ok.sum(axis=-1, dtype=np.int32)


class RouteTable(Mapping[str, tuple[Route, ...]]):
    """One SR's routes per FQDN, best first; `Route` objects are built when first read.

    Ranking is done for all SRs at once; building half a million Route objects is not, because an
    SR's table is only read when it is serialised for that SR. Reading one FQDN builds those of
    its whole group (`_Ranking.group_routes`): tables are read whole. Fits
    `ForwardingTable.routes`.
    """

    __slots__ = ("_groups", "_paths", "_ranking", "_row", "sr")

    def __init__(self, sr: str, ranking: _Ranking, row: int) -> None:
        self.sr = sr
        self._ranking, self._row = ranking, row
        self._groups: dict[int, list[tuple[Route, ...]]] = {}
        self._paths: dict[int, list[tuple[str, ...] | None]] = {}

    def __getitem__(self, fqdn: str) -> tuple[Route, ...]:
        where = self._ranking.fqdns[fqdn]  # KeyError for an FQDN not in the table
        if where is None:
            return ()
        g, j = where
        routes = self._groups.get(g)
        if routes is None:
            routes = self._groups[g] = self._ranking.group_routes(self._row, g, self._paths)
            if len(self._groups) == len(self._ranking.groups):
                self._paths.clear()  # every route built: the per-egress paths are not needed
        return routes[j]

    def __contains__(self, fqdn: object) -> bool:
        return fqdn in self._ranking.fqdns

    def __iter__(self) -> Iterator[str]:
        return iter(self._ranking.fqdns)

    def __len__(self) -> int:
        return len(self._ranking.fqdns)

    def __repr__(self) -> str:
        return f"RouteTable(sr={self.sr!r}, fqdns={len(self)})"


@dataclass(slots=True)
class _Candidates:
    """The endpoints of one FQDN that a policy allows, with their static ranking keys."""

    fqdn: str
    key: TreeKey
    endpoints: list[Endpoint]
    egress: list[int]
    rank: list[int]  # preference class: preferred (in order), normal, avoided
    max_latency: float
