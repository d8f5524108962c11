"""Validate speed, memory and accuracy on a large dataset, against the whole-table baseline.

    python bench/bench_validate.py --rows 250000 1000000 2000000

The data: ``rows`` generated taxi trips written as a cauce Dataset (80 % train, 20 % eval,
extract's layout: shards of up to 1 M rows). Measured in the same run, each in a fresh forked process:

* "cauce": ``compute_statistics`` (record batches of 65 536 rows, mergeable accumulators);
* "whole table": the obvious exact way: each split read into memory at once, every numeric
  column sorted (the monitor's exact TFDV histogram) and every string column counted.

Peak memory is the process's peak RSS minus that of an idle forked process. Accuracy: the
median's rank error and the largest STANDARD-histogram bucket difference against the exact
numbers, as fractions of the present values.
"""

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _in_child(target, *args):
    """Run ``target(*args)`` in a forked process; returns (its result, seconds, peak RSS in MiB)."""
    queue = multiprocessing.get_context("fork").Queue()

    def run():
        start = time.perf_counter()
        result = target(*args)
        seconds = time.perf_counter() - start
        queue.put((result, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))

    process = multiprocessing.get_context("fork").Process(target=run)
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def _idle():
    return None


def _cauce(dataset_dir):
    from cauce.components.validate.statistics import compute_statistics, feature_stats_by_name

    statistics, _ = compute_statistics(dataset_dir)
    summary = {}
    for dataset in statistics.datasets:
        for name, feature in feature_stats_by_name(dataset).items():
            if feature.HasField("num_stats"):
                standard = feature.num_stats.histograms[0]
                summary[dataset.name, name] = (
                    feature.num_stats.median,
                    [b.sample_count for b in standard.buckets],
                    feature.num_stats.common_stats.num_non_missing,
                )
    return summary


def _whole_table(dataset_dir):
    import pyarrow as pa
    import pyarrow.compute as pc

    from cauce.components.validate.statistics import feature_type
    from cauce.data import read_split, split_names
    from cauce.tfdv_histograms import standard_histogram

    summary = {}
    for split in split_names(dataset_dir):
        table = read_split(dataset_dir, split)
        for name in table.column_names:
            column = table.column(name)
            kind = feature_type(column.type)
            if kind == 2:  # STRING: exact counts
                pc.value_counts(pc.drop_null(column))
                continue
            if pa.types.is_temporal(column.type):
                column = column.cast(pa.int64())
            values = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False))
            present = np.sort(values[~np.isnan(values)])
            histogram = standard_histogram(present)
            summary[split, name] = (present[present.size // 2], list(histogram.count), present.size, present)
    return summary


def _measure(rows: int) -> None:
    from cauce import data
    from cauce.artifacts import atomic_dir
    from cauce.demo import generate_taxi_trips

    with tempfile.TemporaryDirectory(prefix="cauce-bench-validate-") as tmp:
        dataset_dir = Path(tmp) / "dataset"
        table = generate_taxi_trips(rows, seed=3)
        cut = int(rows * 0.8)
        with atomic_dir(dataset_dir) as out:
            # The layout extract writes: shards of up to 1 M rows, one row group each.
            split_rows = {
                "train": data.write_split(out, "train", table.slice(0, cut)),
                "eval": data.write_split(out, "eval", table.slice(cut)),
            }
            data.write_schema(out, table.schema, split_rows)
        del table

        _, _, idle_rss = _in_child(_idle)
        ours, our_seconds, our_rss = _in_child(_cauce, str(dataset_dir))
        exact, exact_seconds, exact_rss = _in_child(_whole_table, str(dataset_dir))

    worst_rank, worst_bucket = 0.0, 0.0
    for key, (median, buckets, present) in ours.items():
        _, exact_buckets, exact_present, sorted_values = exact[key]
        assert present == exact_present, key
        if sorted_values[present // 2] != median:
            rank = np.searchsorted(sorted_values, median, side="left")
            worst_rank = max(worst_rank, abs(rank - present // 2) / present)
        difference = np.max(np.abs(np.array(buckets) - np.array(exact_buckets)))
        worst_bucket = max(worst_bucket, float(difference) / present)

    print(f"rows: {rows:,} ({len(ours)} numeric features over 2 splits, plus 4 string features)")
    print(f"  cauce (batches): {our_seconds:6.2f} s, peak memory {our_rss - idle_rss:7.1f} MiB above idle")
    print(f"  whole table:     {exact_seconds:6.2f} s, peak memory {exact_rss - idle_rss:7.1f} MiB above idle")
    print(f"  ratio cauce / whole table: time {our_seconds / exact_seconds:.2f}x, "
          f"memory {(our_rss - idle_rss) / (exact_rss - idle_rss):.2f}x")
    print(f"  accuracy vs exact: median rank error <= {worst_rank:.4%} of n, "
          f"STANDARD bucket error <= {worst_bucket:.4%} of n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000],
                        help="sizes to measure: memory should stay flat for cauce and grow for the whole table")
    args = parser.parse_args()
    for rows in args.rows:
        _measure(rows)


if __name__ == "__main__":
    main()
