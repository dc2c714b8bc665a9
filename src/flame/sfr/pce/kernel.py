"""Whole shortest-path trees and candidate ranking: the compiled kernel `flame.sfr._sssp`
(tools/compile_pce.py) on up to two threads, else scipy and numpy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix  # type: ignore[import-untyped]
from scipy.sparse.csgraph import dijkstra  # type: ignore[import-untyped]

from flame.sfr.graph import BoolArray, FloatArray, IntArray

ROUND_DIGITS = 9  # costs and latencies are compared and reported to 1e-9 (ms, cost units)

# -- whole shortest-path trees: the compiled kernel, else scipy ------------------------------

Kernel = Callable[[IntArray, IntArray, FloatArray, IntArray, FloatArray, IntArray], None]
Ranker = Callable[
    [
        FloatArray,
        FloatArray,
        IntArray,
        FloatArray,
        npt.NDArray[np.uint8],
        npt.NDArray[np.uint8],
        npt.NDArray[np.intp],
        IntArray,
    ],
    None,
]


def _load_kernel() -> Kernel | None:
    """The compiled multi-source Dijkstra (tools/compile_pce.py), or None when not built."""
    try:
        from flame.sfr._sssp import shortest_path_trees  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return None
    return shortest_path_trees


def _load_ranker() -> Ranker | None:
    """The compiled ranking of candidates (same module), or None: numpy sorts then."""
    try:
        from flame.sfr._sssp import rank_candidates  # noqa: PLC0415 - optional, compiled
    except ImportError:
        return None
    return rank_candidates


_KERNEL = _load_kernel()
_RANKER = _load_ranker()
# The kernels release the GIL: two threads share the sources (rows to rank), `_split`. Below
# this much work (sources x (nodes + CSR slots); candidates to rank) a second thread costs more
# than it saves: on the benchmark's graph (22,500 per source) 2 trees took 0.36 ms on one
# thread, 0.64 ms on two; 4 trees 0.74 ms and 0.62 ms; 303 trees 62 ms and 32 ms (heap).
_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
SPLIT_WORK = 100_000
SPLIT_PARTS = 12  # at most; each part costs one kernel call (its checks: O(nodes + slots))
_POOL = (  # its one worker thread starts on first use
    ThreadPoolExecutor(max_workers=_THREADS - 1, thread_name_prefix="pce-sssp")
    if _KERNEL is not None and _THREADS > 1
    else None
)


def shortest_paths_compiled() -> bool:
    """Are whole shortest-path trees computed by the compiled kernel (else by scipy)?"""
    return _KERNEL is not None


def shortest_paths_status() -> str:
    """One line for the start-up log: which Dijkstra the PCE uses, and a stale build."""
    if _KERNEL is None:
        return (
            "shortest paths: scipy's Dijkstra (run `make build` to compile the PCE's kernel "
            "with Cython)"
        )
    threads = f"{_THREADS} threads" if _THREADS > 1 else "1 thread"
    import flame.sfr._sssp as module  # noqa: PLC0415 - loaded already

    built = Path(module.__file__ or "")
    source = built.parent / "_sssp.pyx"
    if source.exists() and built.exists() and source.stat().st_mtime > built.stat().st_mtime:
        return (
            f"shortest paths: compiled kernel ({threads}) older than its source {source.name}; "
            "run `make build` to recompile"
        )
    return f"shortest paths: compiled kernel (Cython, {threads})"


def _shortest_path_trees(matrix: csr_matrix, sources: IntArray) -> tuple[FloatArray, IntArray]:
    """Dist and pred [len(sources), n] of the trees from these sources (scipy's conventions:
    inf and NO_NODE for unreachable nodes, NO_NODE for the roots' predecessors)."""
    sources = np.ascontiguousarray(sources, dtype=np.int32)
    if _KERNEL is None:
        dist, pred = dijkstra(matrix, directed=True, indices=sources, return_predecessors=True)
        return dist, pred.astype(np.int32, copy=False)
    n, k, kernel = matrix.shape[0], len(sources), _KERNEL
    indptr = np.ascontiguousarray(matrix.indptr, dtype=np.int32)
    indices = np.ascontiguousarray(matrix.indices, dtype=np.int32)
    data = np.ascontiguousarray(matrix.data, dtype=np.float64)
    dist = np.empty((k, n))
    pred = np.empty((k, n), dtype=np.int32)
    _split(
        k,
        k * (n + len(indices)),
        lambda part: kernel(indptr, indices, data, sources[part], dist[part], pred[part]),
    )
    return dist, pred


def _split(rows: int, work: int, run: Callable[[slice], None]) -> None:
    """run(rows) for a compiled kernel (GIL released): on two threads when the work is worth a
    second thread (`SPLIT_WORK`), else at once.

    In `SPLIT_PARTS` parts that this thread and the pool's take in turn rather than in halves:
    when another process takes a core for a while, the other thread does more of the parts.
    """
    if _POOL is None or rows < 2 or work < SPLIT_WORK:
        run(slice(0, rows))
        return
    size = -(-rows // min(SPLIT_PARTS, rows))  # rows per part, rounded up
    parts = iter([slice(start, start + size) for start in range(0, rows, size)])

    def drain() -> None:
        for part in parts:  # shared by both threads: next() on it is atomic under the GIL
            run(part)

    other = _POOL.submit(drain)
    drain()
    other.result()


def _below(pred: IntArray, flags: BoolArray) -> BoolArray:
    """Nodes with a flagged node on their tree path to the root (themselves included).

    Pointer doubling over one predecessor row: log2(depth) numpy steps.
    """
    up = np.where(pred >= 0, pred, np.arange(len(pred)))  # roots and unreached: themselves
    out = flags.copy()
    while True:
        spread = out | out[up]
        step = up[up]
        if (step == up).all() and (spread == out).all():
            return out
        out, up = spread, step
