"""TFDV's numeric histograms and Jensen-Shannon divergence, in numpy.

Shared by ``monitor`` (drift and skew, as TFDV and Vertex AI Model Monitoring
report them) and ``validate`` (the STANDARD histograms of its statistics), so
both draw the same histogram for the same values. TFDV's construction
(docs/architecture.md, "Measured facts"): 1000 quantiles, 10 equal-width buckets from the data's own min
to max, counts spread by overlap; histograms aligned on the union of edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# TFDV's defaults: BasicStatsGenerator reads 100 * num_quantiles_histogram_buckets (10)
# quantiles and builds a STANDARD histogram of num_histogram_buckets (10) buckets.
NUM_QUANTILES = 1000
NUM_BUCKETS = 10

@dataclass(frozen=True)
class StandardHistogram:
    """TFDV's STANDARD histogram, split the way its ``AlignHistograms`` splits it."""

    low: np.ndarray  # buckets with low < high, ascending and contiguous
    high: np.ndarray
    count: np.ndarray
    point_values: np.ndarray  # zero-width buckets (a constant feature)
    point_counts: np.ndarray
    infinite_count: float  # the -inf and +inf buckets together


@dataclass(frozen=True)
class AlignedDistributions:
    """Both histograms on common buckets, each normalized to sum to 1."""

    baseline: np.ndarray
    current: np.ndarray
    buckets: list[dict]  # one description per position, for the report's charts


def present_sorted(values) -> np.ndarray:
    """The non-missing values, ascending; None and NaN are missing."""
    array = np.asarray(values, dtype=np.float64).ravel()
    present = array[~np.isnan(array)]
    present.sort()
    return present


def quantiles_and_cumulative_counts(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What TFDV reads from its sketch: ``QuantilesSketch.GetQuantilesAndCumulativeWeights(1000)``.

    TFDV feeds every value to tfx-bsl's ``QuantilesSketch(eps=0.01)`` (the weighted
    quantiles summary of TF boosted trees) and asks for 1000 quantiles. For k = 0..1000 the
    summary answers with the value of 0-based rank floor(k * n / 1000) (clamped to n - 1,
    so k = 0 is the min and k = 1000 the max) and, as cumulative weight, the number of
    values <= that value. We compute exactly that from a sort: the sketch's eps -> 0 limit.
    While the sketch's buffer holds every distinct value it is exact, and these are TFDV's
    quantiles exactly: small data sets (a few thousand values) and any feature with few
    distinct values (integers, codes). On large continuous data the sketch compresses, and its ranks may be off by up
    to eps * n (1 %); in practice they are off by about 0.02 % of n, which moves the
    divergence by about 1e-4 or less.
    """
    n = sorted_values.size
    ranks = np.minimum(np.arange(NUM_QUANTILES + 1, dtype=np.int64) * n // NUM_QUANTILES, n - 1)
    quantiles = sorted_values[ranks]
    cumulative = np.searchsorted(sorted_values, quantiles, side="right").astype(np.float64)
    return quantiles, cumulative


def strip_infinities(
    quantiles: np.ndarray, cumulative: np.ndarray, finite_max: float, num_pos_inf: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """TFDV's ``strip_infinities``: drop quantiles at +-inf before bucketing the rest."""
    num_neg_inf_quantiles = int(np.searchsorted(quantiles, -np.inf, side="right"))
    num_neg_inf = 0.0
    if num_neg_inf_quantiles:
        num_neg_inf = cumulative[num_neg_inf_quantiles - 1]
        quantiles = quantiles[num_neg_inf_quantiles:]
        cumulative = cumulative[num_neg_inf_quantiles:] - num_neg_inf
    if num_pos_inf:
        first_pos_inf = int(np.searchsorted(quantiles, np.inf, side="left"))
        finite_count = cumulative[-1] - num_pos_inf
        quantiles = np.append(quantiles[:first_pos_inf], finite_max)
        cumulative = np.append(cumulative[:first_pos_inf], finite_count)
    return quantiles, cumulative, float(num_neg_inf)


def quantile_buckets(
    quantiles: np.ndarray, cumulative: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TFDV's QUANTILES histogram (``_get_bin_weights``): buckets between consecutive quantiles.

    A heavily repeated value repeats as a quantile; the buckets that end on it share their
    weight evenly (so part of the mass below a repeated value is treated as a point mass on
    it), and the count of the minimum goes to the leading buckets equal to the first.
    """
    low, high = quantiles[:-1], quantiles[1:]
    weight = np.diff(cumulative)
    if weight.size == 0:
        return low, high, weight
    run_starts = np.flatnonzero(np.r_[True, high[1:] != high[:-1]])
    run_sizes = np.diff(np.r_[run_starts, high.size])
    weight = np.repeat(np.add.reduceat(weight, run_starts) / run_sizes, run_sizes)
    differs_from_first = (low != low[0]) | (high != high[0])
    leading = int(np.argmax(differs_from_first)) if differs_from_first.any() else low.size
    weight[:leading] += cumulative[0] / leading
    return low, high, weight


def spread_over_intervals(
    low: np.ndarray, high: np.ndarray, weight: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """Counts of the intervals between ``edges``, assuming uniform mass inside each bucket.

    Equivalent to TFDV's bucket-by-bucket ``_overlap`` loop: the buckets with width tile
    their range without gaps, so their mass below any x is a piecewise-linear function
    evaluated once per edge; a zero-width bucket at v falls in the interval (e_i, e_i+1]
    holding it, or in the first interval when v is the minimum.
    """
    counts = np.zeros(edges.size - 1)
    has_width = low < high
    if has_width.any():
        knots = np.r_[low[has_width][0], high[has_width]]
        mass_below = np.r_[0.0, np.cumsum(weight[has_width])]
        counts += np.diff(np.interp(edges, knots, mass_below))
    point_interval = np.maximum(np.searchsorted(edges, low[~has_width], side="left") - 1, 0)
    counts += np.bincount(point_interval, weights=weight[~has_width], minlength=counts.size)
    return counts


def equal_width_buckets(
    quantiles: np.ndarray, cumulative: np.ndarray, finite_min: float, finite_max: float, num_pos_inf: float
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """TFDV's ``generate_equi_width_histogram`` over the finite values: the edges of
    NUM_BUCKETS equal-width buckets from ``finite_min`` to ``finite_max`` (one zero-width
    bucket for a constant), the counts spread into them from the quantile intervals by
    overlap, and the number of -inf values. None when the range overflows float64 (TFDV
    then leaves the histogram empty)."""
    quantiles, cumulative, num_neg_inf = strip_infinities(quantiles, cumulative, finite_max, num_pos_inf)
    low, high, weight = quantile_buckets(quantiles, cumulative)
    if finite_min == finite_max:
        edges = np.array([finite_min, finite_max])
    else:
        edges = np.linspace(finite_min, finite_max, NUM_BUCKETS + 1)
        if not np.isfinite(edges).all():
            return None
    return edges, spread_over_intervals(low, high, weight, edges), num_neg_inf


def standard_histogram(sorted_values: np.ndarray) -> StandardHistogram | None:
    """TFDV's STANDARD histogram of present values, or None when it has none (or cannot have one)."""
    n = sorted_values.size
    if n == 0:
        return None
    first_finite = int(np.searchsorted(sorted_values, -np.inf, side="right"))
    end_finite = int(np.searchsorted(sorted_values, np.inf, side="left"))
    if first_finite == end_finite:
        return standard_histogram_of(np.empty(0), np.empty(0), math.inf, -math.inf, 0, n)
    quantiles, cumulative = quantiles_and_cumulative_counts(sorted_values)
    return standard_histogram_of(
        quantiles, cumulative, sorted_values[first_finite], sorted_values[end_finite - 1], n - end_finite, n
    )


def standard_histogram_of(
    quantiles: np.ndarray, cumulative: np.ndarray, finite_min: float, finite_max: float, num_pos_inf: int, n: int
) -> StandardHistogram | None:
    """The STANDARD histogram from what a sketch of the values keeps: the 1001 quantiles and
    cumulative counts (``quantiles_and_cumulative_counts``), the finite minimum and maximum
    (``finite_min > finite_max`` when every value is infinite), the number of +inf values and
    of present values ``n``. Exact quantiles give exactly ``standard_histogram``'s answer; the
    monitor's Beam combiner (components/monitor/beam_histograms.py) builds it this way."""
    empty = np.empty(0)
    if n == 0:
        return None
    if finite_min > finite_max:
        # Only infinities: TFDV keeps a single bucket with infinite bounds.
        return StandardHistogram(empty, empty, empty, empty, empty, float(n))
    buckets = equal_width_buckets(quantiles, cumulative, finite_min, finite_max, num_pos_inf)
    if buckets is None:
        return None
    edges, counts, num_neg_inf = buckets
    interval_low, interval_high = edges[:-1], edges[1:]
    has_width = interval_low < interval_high
    return StandardHistogram(
        low=interval_low[has_width],
        high=interval_high[has_width],
        count=counts[has_width],
        point_values=interval_low[~has_width],
        point_counts=counts[~has_width],
        infinite_count=num_neg_inf + num_pos_inf,
    )


def _rebucket(histogram: StandardHistogram, grid: np.ndarray) -> np.ndarray:
    """Counts on the cells of ``grid`` (which holds every edge of ``histogram``), split by width."""
    cell_low, cell_high = grid[:-1], grid[1:]
    if histogram.high.size == 0 or cell_low.size == 0:
        return np.zeros(cell_low.size)
    owner = np.minimum(np.searchsorted(histogram.high, cell_high, side="left"), histogram.high.size - 1)
    inside = (histogram.low[owner] <= cell_low) & (cell_high <= histogram.high[owner])
    share = (cell_high - cell_low) / (histogram.high[owner] - histogram.low[owner])
    return np.where(inside, share * histogram.count[owner], 0.0)


def _counts_at(values: np.ndarray, at_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of ``counts`` per value of ``values`` (0 where absent)."""
    return np.bincount(np.searchsorted(values, at_values), weights=counts, minlength=values.size)


def align_histograms(baseline: StandardHistogram, current: StandardHistogram) -> AlignedDistributions | None:
    """TFDV's ``AlignHistograms`` + ``NormalizeHistogram``; None if a side has no mass."""
    grid = np.union1d(np.r_[baseline.low, baseline.high], np.r_[current.low, current.high])
    points = np.union1d(baseline.point_values, current.point_values)
    baseline_counts = [
        _rebucket(baseline, grid),
        _counts_at(points, baseline.point_values, baseline.point_counts),
    ]
    current_counts = [
        _rebucket(current, grid),
        _counts_at(points, current.point_values, current.point_counts),
    ]
    buckets = [{"kind": "range", "low": float(lo), "high": float(hi)} for lo, hi in zip(grid[:-1], grid[1:])]
    buckets += [{"kind": "point", "value": float(v)} for v in points]
    # Infinite values never match across sides: TFDV gives each side's a bucket of its own.
    if baseline.infinite_count:
        baseline_counts.append(np.array([baseline.infinite_count]))
        current_counts.append(np.zeros(1))
        buckets.append({"kind": "infinite", "side": "baseline"})
    if current.infinite_count:
        baseline_counts.append(np.zeros(1))
        current_counts.append(np.array([current.infinite_count]))
        buckets.append({"kind": "infinite", "side": "current"})
    p, q = np.concatenate(baseline_counts), np.concatenate(current_counts)
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return None
    return AlignedDistributions(p / p_total, q / q_total, buckets)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD = (KL(P||M) + KL(Q||M)) / 2 with M = (P + Q) / 2, log base 2, empty buckets skipped."""
    m = (p + q) / 2

    def kl_to_m(distribution: np.ndarray) -> float:
        used = distribution > 0
        return float(np.sum(distribution[used] * np.log2(distribution[used] / m[used])))

    return (kl_to_m(p) + kl_to_m(q)) / 2


def numeric_comparison(baseline, current) -> AlignedDistributions | None:
    baseline_histogram = standard_histogram(present_sorted(baseline))
    current_histogram = standard_histogram(present_sorted(current))
    if baseline_histogram is None or current_histogram is None:
        return None
    return align_histograms(baseline_histogram, current_histogram)


def jensen_shannon_numeric(baseline: np.ndarray, current: np.ndarray) -> float:
    """Approximate Jensen-Shannon divergence (0..1) between two samples, as TFDV computes it.

    None and NaN are missing and left out. Returns NaN when it cannot be computed: a side
    without present values, or values whose range overflows float64.
    """
    aligned = numeric_comparison(baseline, current)
    if aligned is None:
        return math.nan
    return jensen_shannon(aligned.baseline, aligned.current)
