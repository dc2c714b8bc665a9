"""Type stub of the compiled shortest-path kernel (src/flame/sfr/_sssp.pyx, SFR-4, SFR-13)."""

import numpy as np
import numpy.typing as npt

def shortest_path_trees(
    indptr: npt.NDArray[np.int32],
    indices: npt.NDArray[np.int32],
    data: npt.NDArray[np.float64],
    sources: npt.NDArray[np.int32],
    dist: npt.NDArray[np.float64],
    pred: npt.NDArray[np.int32],
) -> None: ...
