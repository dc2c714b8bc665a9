"""Type stub of the PCE's compiled kernels (src/flame/sfr/_sssp.pyx, SFR-4, SFR-13)."""

import numpy as np
import numpy.typing as npt

from flame.sfr.models import Endpoint, Route
from flame.topology.model import Link, LinkState

def shortest_path_trees(
    indptr: npt.NDArray[np.int32],
    indices: npt.NDArray[np.int32],
    data: npt.NDArray[np.float64],
    sources: npt.NDArray[np.int32],
    dist: npt.NDArray[np.float64],
    pred: npt.NDArray[np.int32],
) -> None: ...
def rank_candidates(
    cost: npt.NDArray[np.float64],
    latency: npt.NDArray[np.float64],
    rank: npt.NDArray[np.int32],
    max_latency: npt.NDArray[np.float64],
    candidate_ok: npt.NDArray[np.uint8],
    row_ok: npt.NDArray[np.uint8],
    order: npt.NDArray[np.intp],
    count: npt.NDArray[np.int32],
) -> None: ...
def link_columns(
    links: list[Link],
    index: dict[str, int],
    up: LinkState,
    a: npt.NDArray[np.int32],
    b: npt.NDArray[np.int32],
    latency: npt.NDArray[np.float64],
    cost: npt.NDArray[np.float64],
    has_cost: npt.NDArray[np.uint8],
    is_up: npt.NDArray[np.uint8],
    link_class: npt.NDArray[np.int32],
) -> list[str]: ...
def table_routes(
    route: type[Route],
    order: npt.NDArray[np.intp],
    count: npt.NDArray[np.int32],
    cost: npt.NDArray[np.float64],
    latency: npt.NDArray[np.float64],
    egress: npt.NDArray[np.int32],
    endpoints: list[list[Endpoint]],
    pred: npt.NDArray[np.int32],
    egress_row: npt.NDArray[np.int32],
    source: int,
    ids: tuple[str, ...],
    addresses: list[str | None],
    paths: list[tuple[str, ...] | None],
) -> list[tuple[Route, ...]]: ...
