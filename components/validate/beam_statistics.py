"""validate's statistics as a Beam combiner: the same accumulators, on any runner.

``SplitStatisticsFn`` is a ``beam.CombineFn`` over Arrow record batches whose accumulator
is exactly what the in-process path builds (``accumulate_split``): a row count and one
``NumericAccumulator`` / ``StringAccumulator`` per column (components/validate/accumulators.py,
TFDV's definitions). Their ``merge`` is associative and commutative, so Beam may combine
partial results from any number of workers in any order; counts, sums, min/max, missing
values and string frequencies come out identical to the in-process pass, and quantiles
(median, histograms) are exact while a feature has at most ``SUMMARY_SIZE`` distinct
values and within the summary's rank bound beyond it (see accumulators.py).

``compute_statistics_beam`` runs it on the FnApiRunner locally or on Dataflow, with the
options ``cauce.beam_pipelines.run_pipeline`` takes (the launch, the wait, the job's error
and the cancellation on SIGTERM are transform's). Each split's statistics are written by
the pipeline as a serialized ``DatasetFeatureStatistics`` under ``work_uri`` (gs:// on
Dataflow) and read back here.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam
from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce.data import split_names

from .accumulators import NumericAccumulator, StringAccumulator
from .statistics import FeatureType, _numeric_column, split_columns, split_statistics


class SplitStatisticsFn(beam.CombineFn):
    """Record batches of one split -> (num_examples, {column: accumulator})."""

    def __init__(self, columns: dict[str, int]):
        self._columns = dict(columns)

    def create_accumulator(self):
        return [0, {
            name: StringAccumulator() if kind == FeatureType.STRING else NumericAccumulator()
            for name, kind in self._columns.items()
        }]

    def add_input(self, accumulator, batch):
        accumulator[0] += batch.num_rows
        for name, column_accumulator in accumulator[1].items():
            index = batch.schema.get_field_index(name)
            if index < 0:
                continue  # a column absent from this batch: the schema check reports it
            column = batch.column(index)
            column_accumulator.add(column if self._columns[name] == FeatureType.STRING else _numeric_column(column))
        return accumulator

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            merged[0] += other[0]
            for name, column_accumulator in merged[1].items():
                column_accumulator.merge(other[1][name])
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _write_statistics(split: str, columns: dict[str, int], work_uri: str):
    def write(accumulator) -> str:
        from apache_beam.io.filesystems import FileSystems

        num_examples, accumulators = accumulator
        path = f"{work_uri.rstrip('/')}/{split}.pb"
        with FileSystems.create(path) as handle:
            handle.write(split_statistics(split, num_examples, columns, accumulators).SerializeToString())
        approximate = sorted(
            name for name, acc in accumulators.items() if isinstance(acc, StringAccumulator) and not acc.exact
        )
        with FileSystems.create(f"{work_uri.rstrip('/')}/{split}.json") as handle:
            handle.write(json.dumps({"approximate_top_values": approximate}).encode())
        return path

    return write


def statistics_and_details_beam(
    dataset_dir: str,
    work_uri: str,
    splits: list[str] | None = None,
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    dataset_uri: str = "",
) -> tuple[statistics_pb2.DatasetFeatureStatisticsList, dict]:
    """What ``statistics.compute_statistics`` returns (the statistics and per-split details),
    computed by the Beam pipeline. An empty ``work_uri`` is a temporary folder (the
    DirectRunner only: Dataflow's workers need gs://)."""
    import tempfile

    from apache_beam.io.filesystems import FileSystems

    from cauce.artifacts import CauceError

    wanted = list(splits or split_names(dataset_dir))
    with tempfile.TemporaryDirectory(prefix="cauce-validate-") as temporary:
        if not work_uri:
            if runner != "DirectRunner":
                raise CauceError(f"runner={runner} needs a work_uri its workers can write (gs://)")
            work_uri = temporary
        result = compute_statistics_beam(dataset_dir, work_uri, wanted, runner, pipeline_options, dataset_uri)
        details = {}
        for dataset in result.datasets:
            with FileSystems.open(f"{work_uri.rstrip('/')}/{dataset.name}.json") as handle:
                approximate = json.loads(handle.read())["approximate_top_values"]
            details[dataset.name] = {
                "num_examples": dataset.num_examples,
                "skipped_columns": split_columns(dataset_dir, dataset.name)[1],
                "approximate_top_values": approximate,
            }
    return result, details


def compute_statistics_beam(
    dataset_dir: str,
    work_uri: str,
    splits: list[str] | None = None,
    runner: str = "DirectRunner",
    pipeline_options: dict | None = None,
    dataset_uri: str = "",
) -> statistics_pb2.DatasetFeatureStatisticsList:
    """The statistics ``compute_statistics`` gives, computed by a Beam pipeline.

    ``dataset_dir`` is read here for the splits and their columns; the workers read
    ``dataset_uri`` (the same Dataset as they see it: gs:// on Dataflow; empty = dataset_dir).
    ``work_uri`` is a folder the pipeline writes one ``<split>.pb`` into (gs:// on Dataflow).
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.parquetio import ReadFromParquetBatched

    from cauce.beam_pipelines import run_pipeline

    read_root = (dataset_uri or os.fspath(dataset_dir)).rstrip("/")
    wanted = list(splits or split_names(dataset_dir))
    columns = {split: split_columns(dataset_dir, split)[0] for split in wanted}

    def build(pipeline):
        for split in wanted:
            _ = (
                pipeline
                | f"Read {split}" >> ReadFromParquetBatched(f"{read_root}/{split}/*.parquet", columns=list(columns[split]))
                | f"Statistics {split}" >> beam.CombineGlobally(SplitStatisticsFn(columns[split]))
                | f"Write {split}" >> beam.Map(_write_statistics(split, columns[split], work_uri))
            )

    run_pipeline(build, runner, pipeline_options)
    result = statistics_pb2.DatasetFeatureStatisticsList()
    for split in wanted:
        with FileSystems.open(f"{work_uri.rstrip('/')}/{split}.pb") as handle:
            result.datasets.add().ParseFromString(handle.read())
    return result
