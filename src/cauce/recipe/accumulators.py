"""The mergeable accumulators of fitted steps: moments, value counts and a quantile
sketch. Each gives the same result whatever the order its batches arrive in (integer
counts, sorted value sets, ``math.fsum`` over per-batch partial sums), so Beam can
compute them as a CombineGlobally over record batches.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError


@dataclass
class Moments:
    """count / sum / sum of squares / min / max. Sums are kept per batch and added
    with ``math.fsum`` (exactly rounded): the result does not depend on the order."""

    count: int = 0
    sums: list = field(default_factory=list)
    squares: list = field(default_factory=list)
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if x.size:
            self.count += int(x.size)
            self.sums.append(float(x.sum()))
            # Not np.dot: BLAS splits a long dot product over its threads, so the sum
            # would depend on the machine's thread count, and waking those threads
            # took ~7 ms per call on a busy 2-core machine (numpy's sum is pairwise, single-threaded).
            self.squares.append(float(np.sum(x * x)))
            self.minimum = min(self.minimum, float(x.min()))
            self.maximum = max(self.maximum, float(x.max()))

    def merge(self, other: Moments) -> None:
        self.count += other.count
        self.sums += other.sums
        self.squares += other.squares
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def result(self, name: str) -> dict:
        if self.count == 0:
            raise CauceError(f"numeric feature {name!r} has no values in the training data (all missing)")
        mean = math.fsum(self.sums) / self.count
        variance = max(math.fsum(self.squares) / self.count - mean * mean, 0.0)
        std = math.sqrt(variance) or 1.0  # a constant feature encodes to 0, not NaN
        return {"mean": mean, "std": std, "min": self.minimum, "max": self.maximum, "count": self.count}


@dataclass
class ValueCounts:
    """Exact counts per value (as strings for vocabularies, as-is for a mode)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, column) -> None:
        if pa.types.is_dictionary(column.type):  # count the codes; strings only per distinct value
            codes = column.indices.filter(column.is_valid()) if column.null_count else column.indices
            counts = np.bincount(codes.to_numpy(), minlength=len(column.dictionary))
            for value, count in zip(column.dictionary.to_pylist(), counts.tolist()):
                if count and value is not None:
                    self.counts[value] += count
            return
        for item in pc.value_counts(column).to_pylist():
            value = item["values"]
            if value is not None and value == value:  # NaN is missing, not a value
                self.counts[value] += item["counts"]

    def merge(self, other: ValueCounts) -> None:
        self.counts.update(other.counts)

    def ranked(self, min_frequency: int = 1) -> list:
        """By count, then value: the order never depends on batch order."""
        items = [kv for kv in self.counts.items() if kv[1] >= min_frequency]
        return [value for value, _ in sorted(items, key=lambda kv: (-kv[1], _sort_key(kv[0])))]


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


_SKETCH_BITS = 12  # mantissa bits of a bucket key: a bucket spans at most 2**-11 (0.05 %) relative


@dataclass
class QuantileSketch:
    """Mergeable quantiles. ``exact`` keeps every value. Otherwise values are grouped
    by their value rounded to 12 mantissa bits (a relative-error sketch in the
    manner of DDSketch), keeping per group the count and the smallest actual
    value: bounded size, quantiles within 0.05 % (relative) and always a value that occurs
    in the data. Counts add and minimums take the minimum, so merging in any order
    gives the same sketch."""

    exact: bool = False
    parts: list = field(default_factory=list)  # exact: sorted arrays; approximate: (keys, counts, minimums)
    count: int = 0

    def add(self, x: np.ndarray) -> None:
        x = np.sort(x[~np.isnan(x)])
        if not x.size:
            return
        self.count += int(x.size)
        if self.exact:
            self.parts.append(x)
            return
        mantissa, exponent = np.frexp(x)
        keys = np.ldexp(np.round(mantissa * (1 << _SKETCH_BITS)) / (1 << _SKETCH_BITS), exponent)
        keys, first, counts = np.unique(keys, return_index=True, return_counts=True)  # x sorted: first = smallest
        self.parts.append((keys, counts, x[first]))
        if len(self.parts) > 8:  # keep the accumulator compact between merges
            self.parts = [self._compacted()]

    def _compacted(self):
        keys = np.concatenate([p[0] for p in self.parts])
        counts = np.concatenate([p[1] for p in self.parts])
        minimums = np.concatenate([p[2] for p in self.parts])
        order = np.lexsort((minimums, keys))
        keys, counts, minimums = keys[order], counts[order], minimums[order]
        unique, first = np.unique(keys, return_index=True)
        return unique, np.add.reduceat(counts, first), minimums[first]

    def merge(self, other: QuantileSketch) -> None:
        self.count += other.count
        self.parts += other.parts
        if not self.exact and len(self.parts) > 8:
            self.parts = [self._compacted()]

    def quantiles(self, fractions: list[float]) -> list[float]:
        """The smallest value whose cumulative share reaches each fraction (inverted CDF)."""
        if self.count == 0:
            return []
        if self.exact:
            values = np.sort(np.concatenate(self.parts))
            counts = np.ones(len(values), dtype=np.int64)
        else:
            _, counts, values = self._compacted()
        cumulative = np.cumsum(counts)
        targets = np.ceil(np.asarray(fractions) * self.count - 1e-9).clip(1, self.count)
        return [float(values[i]) for i in np.searchsorted(cumulative, targets, side="left")]
