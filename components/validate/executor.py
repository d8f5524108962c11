"""Data validation of a cauce Dataset, TFDV-style, without TFDV, TensorFlow, Beam or pandas.

1. statistics of every split (``statistics.py``), written as TFDV/TFX write them;
2. a schema inferred from the training split (``schema.py``), or a baseline schema given;
3. every other split (every split, with a baseline schema) validated against it;
4. a self-contained HTML page (``cauce.reports``' validation template).

Outputs:

* statistics: ``FeatureStats.pb`` (binary ``DatasetFeatureStatisticsList``, every split) and
  ``Split-<split>/FeatureStats.pb`` (one split each: the layout of TFX's StatisticsGen);
* schema: ``schema.pbtxt`` (text ``Schema``: the file TFX's SchemaGen writes);
* anomalies: ``Split-<split>/anomalies.pbtxt`` (text ``Anomalies``) and ``anomalies.json``;
* html: one page.

Each output is written atomically and all of them are written before the policy applies,
so a failed validation leaves complete outputs to inspect and never a partial one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import statistics_pb2

from cauce import reports
from cauce.artifacts import CauceError, atomic_dir, atomic_file, write_json
from cauce.components.validate.schema import (
    Anomaly,
    AnomalyType,
    anomalies_proto,
    infer_schema,
    parse_schema,
    schema_to_text,
    validate_statistics,
)
from cauce.components.validate.statistics import common_stats, compute_statistics, feature_stats_by_name
from cauce.data import MAX_MISSING_LABEL_FRACTION, count_missing_labels, split_names

logger = logging.getLogger(__name__)

STATISTICS_FILE = "FeatureStats.pb"
SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "anomalies.pbtxt"
ANOMALIES_JSON = "anomalies.json"
POLICIES = ("fail", "warn")


@dataclass
class ValidateResult:
    anomalies: dict[str, list[Anomaly]]  # split -> anomalies (validated splits only)
    split_rows: dict[str, int]
    schema_source: str
    details: dict = field(default_factory=dict)
    missing_labels: dict[str, int] = field(default_factory=dict)  # split -> rows without a label (with `label`)

    @property
    def anomalies_found(self) -> int:
        return sum(len(items) for items in self.anomalies.values())

    def summary(self) -> dict:
        return {
            "anomalies_found": self.anomalies_found,
            "schema_source": self.schema_source,
            "validated_splits": list(self.anomalies),
            "split_rows": self.split_rows,
            "anomalies": {split: [a.as_dict() for a in items] for split, items in self.anomalies.items()},
            "splits": self.details,
            "missing_labels": self.missing_labels,
        }


def _check_parameters(on_anomaly: str, max_string_domain_size: int, max_out_of_domain_fraction: float) -> None:
    if on_anomaly not in POLICIES:
        raise CauceError(f"on_anomaly must be one of {list(POLICIES)}, got {on_anomaly!r}")
    if isinstance(max_string_domain_size, bool) or int(max_string_domain_size) != max_string_domain_size or max_string_domain_size < 0:
        raise CauceError(f"max_string_domain_size must be an integer >= 0, got {max_string_domain_size!r}")
    if isinstance(max_out_of_domain_fraction, bool) or not 0.0 <= max_out_of_domain_fraction <= 1.0:
        raise CauceError(f"max_out_of_domain_fraction must be a number in [0, 1], got {max_out_of_domain_fraction!r}")


def read_baseline_schema(location: str):
    """A Schema from a schema artifact folder (holding schema.pbtxt), a .pbtxt file, or
    either as a ``gs://`` URI."""
    if location.startswith("gs://"):
        from google.cloud import storage

        uri = location if location.endswith(".pbtxt") else location.rstrip("/") + "/" + SCHEMA_FILE
        bucket, _, name = uri[len("gs://") :].partition("/")
        blob = storage.Client().bucket(bucket).blob(name)
        if not blob.exists():
            raise CauceError(f"baseline schema {uri} not found: expected a schema.pbtxt (the validate step's schema output)")
        return parse_schema(blob.download_as_text(), uri)
    path = Path(location)
    if path.is_dir():
        path = path / SCHEMA_FILE
    if not path.is_file():
        raise CauceError(
            f"baseline schema {path} not found: expected a schema.pbtxt file or a folder holding one "
            "(the validate step's schema output)"
        )
    return parse_schema(path.read_text(), str(path))


def _write_outputs(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    schema,
    result: ValidateResult,
    statistics_dir: str,
    schema_dir: str,
    anomalies_dir: str,
    html_path: str,
) -> None:
    with atomic_dir(statistics_dir) as out:
        (out / STATISTICS_FILE).write_bytes(statistics.SerializeToString())
        for dataset in statistics.datasets:
            one = statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])
            (out / f"Split-{dataset.name}").mkdir()
            (out / f"Split-{dataset.name}" / STATISTICS_FILE).write_bytes(one.SerializeToString())
    with atomic_dir(schema_dir) as out:
        (out / SCHEMA_FILE).write_text(schema_to_text(schema))
    with atomic_dir(anomalies_dir) as out:
        for split, items in result.anomalies.items():
            (out / f"Split-{split}").mkdir()
            proto = anomalies_proto(items, schema, result.split_rows[split])
            (out / f"Split-{split}" / ANOMALIES_FILE).write_text(text_format.MessageToString(proto))
        write_json(out / ANOMALIES_JSON, result.summary())
    with atomic_file(html_path) as handle:
        handle.write(render_html(statistics, result.anomalies, result.schema_source))


# How many values a string feature's chart shows (its most frequent).
CHART_VALUES = 10


def render_html(
    statistics: statistics_pb2.DatasetFeatureStatisticsList,
    anomalies: dict[str, list[Anomaly]],
    schema_source: str,
) -> str:
    """The page: a summary of anomalies, then per split a table of every feature."""
    splits = []
    for dataset in statistics.datasets:
        split_anomalies = anomalies.get(dataset.name, [])
        features = feature_stats_by_name(dataset)
        splits.append(
            {
                "name": dataset.name,
                "examples": dataset.num_examples,
                "features": [
                    _feature_view(name, feature, dataset.num_examples, [a for a in split_anomalies if a.feature == name])
                    for name, feature in features.items()
                ],
                "absent": [a for a in split_anomalies if a.feature not in features],  # columns the split lacks
            }
        )
    return reports.render(
        "validation",
        schema_source=schema_source,
        validated_splits=", ".join(anomalies),
        anomalies=[(split, item) for split, items in anomalies.items() for item in items],
        splits=splits,
    )


def _feature_view(name: str, feature: statistics_pb2.FeatureNameStatistics, examples: int, problems) -> dict:
    common = common_stats(feature)
    numeric = feature.WhichOneof("stats") == "num_stats"
    labels, counts = [], []
    if numeric:
        stats = feature.num_stats
        standard = [h for h in stats.histograms if h.type == statistics_pb2.Histogram.STANDARD and h.buckets]
        if standard:
            labels = [f"{b.low_value:.4g}–{b.high_value:.4g}" for b in standard[0].buckets]
            counts = [b.sample_count for b in standard[0].buckets]
    else:
        stats = feature.string_stats
        labels = [v.value for v in stats.top_values[:CHART_VALUES]]
        counts = [v.frequency for v in stats.top_values[:CHART_VALUES]]
    return {
        "name": name,
        "type": statistics_pb2.FeatureNameStatistics.Type.Name(feature.type),
        "present": common.num_non_missing,
        "missing": common.num_missing / examples if examples else 0.0,
        "numeric": numeric,
        "stats": stats,
        "chart_labels": labels,
        "chart_counts": counts,
        "problems": problems,
    }


def _label_not_required(schema, label: str) -> None:
    """The label may be missing in some rows (they are left out, by the missing-label
    rule), so an inferred schema does not require it everywhere."""
    for feature in schema.feature:
        if feature.name == label and feature.presence.min_fraction >= 1.0:
            feature.presence.ClearField("min_fraction")
            feature.value_count.min = 1  # value_count and shape are one oneof: this clears the shape
            feature.value_count.max = 1


def _missing_label_anomaly(label: str, missing: int, rows: int, max_fraction: float) -> Anomaly | None:
    """An anomaly when more than ``max_fraction`` of a split's rows lack a label."""
    if not rows or missing / rows <= max_fraction:
        return None
    return Anomaly(
        label, AnomalyType.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Label missing in too many examples",
        f"The label is missing in {missing} of {rows} examples ({missing / rows:.2%}); at most "
        f"{max_fraction:.2%} may lack it (max_missing_label_fraction). Rows without a label are left out of "
        "training and evaluation.",
    )


def run_validate(
    dataset_dir: str | os.PathLike,
    statistics_dir: str,
    schema_dir: str,
    anomalies_dir: str,
    html_path: str,
    schema_split: str = "train",
    baseline_schema: str = "",
    on_anomaly: str = "fail",
    max_string_domain_size: int = 100,
    max_out_of_domain_fraction: float = 0.0,
    label: str = "",
    max_missing_label_fraction: float = MAX_MISSING_LABEL_FRACTION,
    runner: str = "",
    pipeline_options: dict | None = None,
    work_uri: str = "",
    dataset_uri: str = "",
) -> ValidateResult:
    """Compute statistics, infer (or read) the schema, validate, write every output, then
    apply the policy: "fail" raises a CauceError listing the anomalies, "warn" logs them.

    Args:
        dataset_dir: a cauce Dataset (``<split>/part-*.parquet`` + ``_schema.json``).
        schema_split: the split the schema is inferred from (ignored with a baseline schema).
        baseline_schema: empty to infer; otherwise a schema.pbtxt file or a folder holding
            one (a previous run's schema artifact), local or ``gs://``. Every split is then
            validated against it, and it is the schema output.
        max_string_domain_size: a string feature with at most this many distinct training
            values gets a domain (TFDV's default: 100).
        max_out_of_domain_fraction: share of a split's present values that may fall outside
            a feature's domain before it is an anomaly (0: any unseen value is one, as TFDV).
            A baseline schema's own ``distribution_constraints`` take precedence.
        runner: empty computes the statistics in this process; "DirectRunner" (Beam's
            FnApiRunner) or "DataflowRunner" (``pipeline_options`` from
            ``cauce.beam_pipelines.runner_options``) computes the same statistics with the Beam
            combiner (beam_statistics.py), writing its partial results under ``work_uri``
            (gs:// on Dataflow) and reading the Dataset at ``dataset_uri`` (as the workers see
            it; empty = dataset_dir).
        label: the label column, if any: its missing rows (``cauce.data.missing_label_mask``:
            null or NaN) are counted in every split, the schema split included; the rows
            transform, train and evaluate leave out.
        max_missing_label_fraction: share of a split's rows that may lack a label before it
            is an anomaly (default 0.1). An inferred schema does not require the label
            everywhere: this bound is the label's presence rule.
    """
    _check_parameters(on_anomaly, max_string_domain_size, max_out_of_domain_fraction)
    if isinstance(max_missing_label_fraction, bool) or not 0.0 <= max_missing_label_fraction <= 1.0:
        raise CauceError(f"max_missing_label_fraction must be a number in [0, 1], got {max_missing_label_fraction!r}")
    splits = split_names(dataset_dir)
    if not splits:
        raise CauceError(f"dataset {dataset_dir} has no splits: expected folders like train/ and eval/")
    if not baseline_schema and schema_split not in splits:
        raise CauceError(
            f"schema_split {schema_split!r} not found in dataset {dataset_dir}; available splits: {splits}. "
            "Name the training split or pass a baseline schema"
        )
    schema = read_baseline_schema(baseline_schema) if baseline_schema else None

    if runner:
        from cauce.components.validate.beam_statistics import statistics_and_details_beam

        statistics, details = statistics_and_details_beam(
            dataset_dir, work_uri, splits, runner, pipeline_options, dataset_uri
        )
    else:
        statistics, details = compute_statistics(dataset_dir, splits)
    by_split = {dataset.name: dataset for dataset in statistics.datasets}
    if schema is None:
        schema = infer_schema(by_split[schema_split], int(max_string_domain_size), max_out_of_domain_fraction)
        if label:
            _label_not_required(schema, label)
        schema_source = f"inferred from split {schema_split!r}"
        validated = [split for split in splits if split != schema_split]
    else:
        schema_source = f"baseline {baseline_schema}"
        validated = splits
    anomalies = {
        split: validate_statistics(by_split[split], schema, max_out_of_domain_fraction) for split in validated
    }
    split_rows = {split: details[split]["num_examples"] for split in splits}
    missing_labels = {}
    if label:
        missing_labels = {split: count_missing_labels(dataset_dir, split, label) for split in splits}
        for split in splits:
            found = _missing_label_anomaly(label, missing_labels[split], split_rows[split], max_missing_label_fraction)
            if found:
                anomalies.setdefault(split, []).append(found)
    result = ValidateResult(
        anomalies=anomalies,
        split_rows=split_rows,
        schema_source=schema_source,
        details=details,
        missing_labels=missing_labels,
    )
    _write_outputs(statistics, schema, result, statistics_dir, schema_dir, anomalies_dir, html_path)

    if result.anomalies_found:
        listing = "\n".join(
            f"  {split} / {a.feature}: {a.kind_name}: {a.description}"
            for split, items in anomalies.items()
            for a in items
        )
        # The first line names every anomaly briefly (UIs and logs often show only it).
        brief = "; ".join(f"{split}/{a.feature}: {a.kind_name}" for split, items in anomalies.items() for a in items)
        message = f"data validation found {result.anomalies_found} anomalies ({schema_source}): {brief}\n{listing}"
        if on_anomaly == "fail":
            raise CauceError(message + "\nThe statistics, schema, anomalies and HTML outputs were written for inspection.")
        logger.warning("%s", message)
    return result
