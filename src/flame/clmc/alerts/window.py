"""One alert window's running aggregate, fed by column slices (numpy), never by re-querying.

Mean, sum, count, min, max, first, last, spread and stddev keep O(1) state; median, mode and
percentile_N keep the window's values (one window, bounded by the data rate).
"""

from __future__ import annotations

import math
import re

import numpy as np
import numpy.typing as npt

__all__ = ["Window", "needs_values"]

_PERCENTILE = re.compile(r"^percentile_(\d{1,2})$")
_KEEPS_VALUES = ("median", "mode")


def needs_values(aggregation: str) -> bool:
    return aggregation in _KEEPS_VALUES or _PERCENTILE.match(aggregation) is not None


class Window:
    """Points of one rule between `start_ns` (inclusive) and `end_ns` (exclusive)."""

    __slots__ = (
        "count",
        "end_ns",
        "first",
        "first_t",
        "keep",
        "last",
        "last_t",
        "m2",
        "maximum",
        "mean",
        "minimum",
        "start_ns",
        "total",
        "values",
    )

    def __init__(self, start_ns: int, end_ns: int, *, keep_values: bool) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.count = 0
        self.total = 0.0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean (Chan et al.: stable to merge)
        self.minimum = math.inf
        self.maximum = -math.inf
        self.first = math.nan
        self.first_t = 0
        self.last = math.nan
        self.last_t = 0
        self.keep = keep_values
        self.values: list[npt.NDArray[np.float64]] = []

    def add(self, times: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
        """Fold a slice in; `times` and `values` are the same length, NaNs already removed."""
        n = len(values)
        if n == 0:
            return
        before = self.count
        self.count += n
        self.total += float(values.sum())
        slice_mean = float(values.mean())
        slice_m2 = float(np.square(values - slice_mean).sum())
        delta = slice_mean - self.mean
        self.mean += delta * n / self.count
        self.m2 += slice_m2 + delta * delta * before * n / self.count
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        i_first, i_last = int(times.argmin()), int(times.argmax())
        if self.count == n or int(times[i_first]) < self.first_t:
            self.first, self.first_t = float(values[i_first]), int(times[i_first])
        if self.count == n or int(times[i_last]) >= self.last_t:
            self.last, self.last_t = float(values[i_last]), int(times[i_last])
        if self.keep:
            self.values.append(values.copy())

    def aggregate(self, aggregation: str) -> float | None:
        """The window's aggregate, or None when it has no point (count is 0 then)."""
        if aggregation == "count":
            return float(self.count)
        if self.count == 0:
            return None
        if aggregation == "mean":
            return self.total / self.count
        if aggregation == "sum":
            return self.total
        if aggregation == "min":
            return self.minimum
        if aggregation == "max":
            return self.maximum
        if aggregation == "first":
            return self.first
        if aggregation == "last":
            return self.last
        if aggregation == "spread":
            return self.maximum - self.minimum
        if aggregation == "stddev":
            if self.count < 2:
                return None  # as InfluxDB: a single point has no sample deviation
            return math.sqrt(max(0.0, self.m2 / (self.count - 1)))
        values = np.concatenate(self.values)
        if aggregation == "median":
            return float(np.median(values))
        if aggregation == "mode":
            uniques, counts = np.unique(values, return_counts=True)
            return float(uniques[int(counts.argmax())])  # ties: the smallest, as InfluxDB
        match = _PERCENTILE.match(aggregation)
        if match is None:
            raise ValueError(f"unknown aggregation {aggregation!r}")
        # Nearest rank, as InfluxDB's percentile().
        ordered = np.sort(values)
        rank = max(1, math.ceil(int(match.group(1)) / 100 * len(ordered)))
        return float(ordered[rank - 1])
