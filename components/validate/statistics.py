"""Statistics of a cauce Dataset as TensorFlow Metadata's ``DatasetFeatureStatisticsList``.

One ``DatasetFeatureStatistics`` per split (name = the split), field for field what TFDV's
``generate_statistics`` writes for flat (one value per example) features, so TFDV, Facets
and Vertex tooling can read it:

* INT / FLOAT features: ``num_stats`` with mean, population std_dev, num_zeros, min, median,
  max and two histograms: STANDARD (10 equal-width buckets from min to max, counts spread
  from 1000 quantiles) and QUANTILES (10 buckets of equal mass);
* STRING features: ``string_stats`` with unique, the 20 top values, a rank histogram of up
  to 1000 values and avg_length (bytes);
* both: ``common_stats`` (num_non_missing, num_missing, min/max/avg/tot num values and the
  num_values histogram).

Integers, booleans, dates and timestamps are INT (timestamps as their integer epoch value
in the column's unit); floats and decimals FLOAT; strings STRING. Null and NaN are missing.
Columns of other types (lists, structs, binary) are left out and listed as skipped.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce.components.validate.accumulators import NumericAccumulator, StringAccumulator
from cauce.data import split_names, split_path
from cauce.tfdv_histograms import (
    NUM_BUCKETS,
    NUM_QUANTILES,
    equal_width_buckets,
    quantile_buckets,
)

logger = logging.getLogger(__name__)

FeatureType = statistics_pb2.FeatureNameStatistics
Histogram = statistics_pb2.Histogram

# TFDV's StatsOptions defaults.
NUM_TOP_VALUES = 20
NUM_RANK_HISTOGRAM_BUCKETS = 1000
NUM_VALUES_HISTOGRAM_BUCKETS = 10
BATCH_ROWS = 65_536


def feature_type(arrow_type: pa.DataType) -> int | None:
    """The statistics type of a column, or None when TFDV-style statistics do not apply."""
    if pa.types.is_dictionary(arrow_type):
        return feature_type(arrow_type.value_type)
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type) or pa.types.is_temporal(arrow_type):
        return FeatureType.INT
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return FeatureType.FLOAT
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return FeatureType.STRING
    return None


def _numeric_column(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_temporal(column.type):
        # Dates and timestamps have no float cast: their integer value in the column's unit.
        column = column.view(pa.int64() if column.type.bit_width == 64 else pa.int32())
    return column


# ----------------------------------------------------------------------- accumulation


def accumulate_split(dataset_dir: str | os.PathLike, split: str, columns: dict[str, int]):
    """One pass over the split's record batches; returns (num_examples, accumulators)."""
    accumulators = {
        name: StringAccumulator() if kind == FeatureType.STRING else NumericAccumulator()
        for name, kind in columns.items()
    }
    num_examples = 0
    for batch in _split_batches(dataset_dir, split):
        num_examples += batch.num_rows
        for name, accumulator in accumulators.items():
            index = batch.schema.get_field_index(name)
            if index < 0:
                continue  # a column absent from this split: the schema check reports it
            column = batch.column(index)
            accumulator.add(column if columns[name] == FeatureType.STRING else _numeric_column(column))
    return num_examples, accumulators


def _split_batches(dataset_dir: str | os.PathLike, split: str):
    """The split's record batches, one Parquet file at a time: ``ParquetFile.iter_batches``
    decodes about one batch at a time, where a dataset scan decodes whole row groups (1 M
    rows in our layout) with several files read ahead: about 3x less Arrow memory."""
    files = sorted(
        path for path in split_path(dataset_dir, split).glob("*.parquet") if not path.name.startswith((".", "_"))
    )
    for path in files:
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)


def split_columns(dataset_dir: str | os.PathLike, split: str) -> tuple[dict[str, int], dict[str, str]]:
    """(name -> statistics type) of the split's columns, and the skipped ones with their Arrow type."""
    schema = ds.dataset(split_path(dataset_dir, split), format="parquet").schema
    columns, skipped = {}, {}
    for arrow_field in schema:
        kind = feature_type(arrow_field.type)
        if kind is None:
            skipped[arrow_field.name] = str(arrow_field.type)
        else:
            columns[arrow_field.name] = kind
    return columns, skipped


# ---------------------------------------------------------------------------- protos


def _common_stats(proto: statistics_pb2.CommonStatistics, present: int, missing: int) -> None:
    proto.num_non_missing = present
    proto.num_missing = missing
    if not present:
        return
    # Flat columns: exactly one value per present example.
    proto.min_num_values = 1
    proto.max_num_values = 1
    proto.avg_num_values = 1.0
    proto.tot_num_values = present
    # TFDV's quantiles histogram of value counts: every quantile is 1, the mass spread evenly.
    proto.num_values_histogram.type = Histogram.QUANTILES
    for _ in range(NUM_VALUES_HISTOGRAM_BUCKETS):
        proto.num_values_histogram.buckets.add(
            low_value=1.0, high_value=1.0, sample_count=present / NUM_VALUES_HISTOGRAM_BUCKETS
        )


def standard_histogram(
    quantiles: np.ndarray, cumulative: np.ndarray, accumulator: NumericAccumulator
) -> statistics_pb2.Histogram:
    """TFDV's ``generate_equi_width_histogram``: 10 equal-width buckets from the finite min to
    the finite max, counts spread from the quantile buckets by overlap; infinities get a
    bucket of their own at each end."""
    result = Histogram(type=Histogram.STANDARD)
    finite_min, finite_max = accumulator.finite_min, accumulator.finite_max
    if not np.isfinite(finite_min):  # only infinite values: one bucket holding them all
        result.buckets.add(low_value=accumulator.min, high_value=accumulator.max, sample_count=float(cumulative[-1]))
        return result
    buckets = equal_width_buckets(quantiles, cumulative, finite_min, finite_max, accumulator.num_pos_inf)
    if buckets is None:
        return result  # the range overflows float64: TFDV leaves the histogram empty too
    edges, counts, num_neg_inf = buckets
    if num_neg_inf:
        result.buckets.add(low_value=-np.inf, high_value=-np.inf, sample_count=num_neg_inf)
    for lo, hi, count in zip(edges[:-1], edges[1:], counts):
        result.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=float(count))
    if accumulator.num_pos_inf:
        result.buckets.add(low_value=np.inf, high_value=np.inf, sample_count=float(accumulator.num_pos_inf))
    return result


def quantiles_histogram(quantiles: np.ndarray, cumulative: np.ndarray) -> statistics_pb2.Histogram:
    """TFDV's QUANTILES histogram: the 1000 quantiles rebinned to 10 buckets of equal mass."""
    factor = NUM_QUANTILES // NUM_BUCKETS
    low, high, weight = quantile_buckets(
        np.r_[quantiles[0], quantiles[factor::factor]], np.r_[cumulative[0], cumulative[factor::factor]]
    )
    result = Histogram(type=Histogram.QUANTILES)
    for lo, hi, count in zip(low, high, weight):
        result.buckets.add(low_value=float(lo), high_value=float(hi), sample_count=float(count))
    return result


def _numeric_feature(proto: statistics_pb2.FeatureNameStatistics, accumulator: NumericAccumulator) -> None:
    stats = proto.num_stats
    _common_stats(stats.common_stats, accumulator.count, accumulator.num_missing)
    if not accumulator.count:
        return
    stats.mean = accumulator.mean
    stats.std_dev = accumulator.std_dev
    stats.num_zeros = accumulator.num_zeros
    stats.min = accumulator.min
    stats.max = accumulator.max
    quantiles, cumulative = accumulator.quantiles.summary().quantiles_and_cumulative_counts(NUM_QUANTILES)
    stats.median = float(quantiles[NUM_QUANTILES // 2])  # TFDV's find_median of 1001 quantiles
    stats.histograms.append(standard_histogram(quantiles, cumulative, accumulator))
    stats.histograms.append(quantiles_histogram(quantiles, cumulative))


def _string_feature(proto: statistics_pb2.FeatureNameStatistics, accumulator: StringAccumulator) -> None:
    stats = proto.string_stats
    _common_stats(stats.common_stats, accumulator.count, accumulator.num_missing)
    if not accumulator.count:
        return
    stats.unique = accumulator.unique
    stats.avg_length = accumulator.total_bytes / accumulator.count
    for rank, (value, frequency) in enumerate(accumulator.top(NUM_RANK_HISTOGRAM_BUCKETS)):
        if rank < NUM_TOP_VALUES:
            stats.top_values.add(value=value, frequency=frequency)
        stats.rank_histogram.buckets.add(low_rank=rank, high_rank=rank, label=value, sample_count=frequency)


def split_statistics(
    split: str, num_examples: int, columns: dict[str, int], accumulators: dict
) -> statistics_pb2.DatasetFeatureStatistics:
    result = statistics_pb2.DatasetFeatureStatistics(name=split, num_examples=num_examples)
    for name, kind in columns.items():
        feature = result.features.add(type=kind)
        feature.path.step.append(name)
        if kind == FeatureType.STRING:
            _string_feature(feature, accumulators[name])
        else:
            _numeric_feature(feature, accumulators[name])
    return result


def compute_statistics(
    dataset_dir: str | os.PathLike, splits: list[str] | None = None
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, dict]:
    """Statistics of every split (or of ``splits``); also returns per-split details
    (columns skipped, string features whose top values are approximate)."""
    details = {}
    result = statistics_pb2.DatasetFeatureStatisticsList()
    for split in splits or split_names(dataset_dir):
        columns, skipped = split_columns(dataset_dir, split)
        if skipped:
            logger.warning("split %s: columns without TFDV statistics skipped: %s", split, skipped)
        num_examples, accumulators = accumulate_split(dataset_dir, split, columns)
        result.datasets.append(split_statistics(split, num_examples, columns, accumulators))
        details[split] = {
            "num_examples": num_examples,
            "skipped_columns": skipped,
            "approximate_top_values": sorted(
                name for name, acc in accumulators.items() if isinstance(acc, StringAccumulator) and not acc.exact
            ),
        }
    return result, details


def feature_stats_by_name(dataset: statistics_pb2.DatasetFeatureStatistics) -> dict:
    return {".".join(feature.path.step) or feature.name: feature for feature in dataset.features}


def common_stats(feature: statistics_pb2.FeatureNameStatistics) -> statistics_pb2.CommonStatistics:
    which = feature.WhichOneof("stats")
    if which == "num_stats":
        return feature.num_stats.common_stats
    if which == "string_stats":
        return feature.string_stats.common_stats
    return statistics_pb2.CommonStatistics()

