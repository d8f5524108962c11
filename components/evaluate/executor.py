"""Evaluate a binary classifier on a dataset split with TensorFlow Model Analysis.

The model scores the split here, in plain Python, through the same fitted
transform serving uses; TFMA then runs model-agnostic on (label, prediction,
slice features): it computes the overall and per-slice metrics, and its own
validator decides the blessing from the thresholds. This module only shapes
TFMA's output into ``evaluation.json`` and a readable ``report.html``.

TensorFlow Model Analysis (and with it TensorFlow and Beam) is imported inside
:func:`_run_tfma` only, so importing this module stays cheap.
"""

from __future__ import annotations

import html
import math
import os
from numbers import Real
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce import model as cauce_model
from cauce.artifacts import CauceError, atomic_dir, write_json
from cauce.data import read_split

TFMA_DIR = "tfma"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"

# The scalar metrics computed on every slice: TFMA metric class -> the name TFMA
# reports it under (the name thresholds use). All are TFMA-native metrics, so no
# Keras metric wrapper is involved.
SCALAR_METRICS = {
    "ExampleCount": "example_count",
    "AUC": "auc",
    "AUCPrecisionRecall": "auc_precision_recall",
    "BinaryAccuracy": "binary_accuracy",
    "Precision": "precision",
    "Recall": "recall",
    "BinaryCrossEntropy": "binary_crossentropy",
}
# The same for the other tasks the trainers support.
TASK_METRICS = {
    "binary": SCALAR_METRICS,
    "multiclass": {
        "ExampleCount": "example_count",
        "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
        "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    },
    "regression": {
        "ExampleCount": "example_count",
        "MeanSquaredError": "mean_squared_error",
        "MeanAbsoluteError": "mean_absolute_error",
    },
}
DECISION_THRESHOLD = 0.5  # the cut-off of accuracy, precision, recall and the confusion matrix
ROC_THRESHOLDS = 100  # ConfusionMatrixPlot cuts at -1e-6, 0, 1/100, ..., 1: 102 ROC points
CALIBRATION_BUCKETS = 10
BEAM_BATCH_ROWS = 50_000  # rows per Arrow record batch handed to TFMA

# The name the prediction column takes in the table TFMA reads; chosen so it
# cannot collide with a real column.
PREDICTION_KEY = "__cauce_prediction__"
CHAMPION_PREDICTION_KEY = "__cauce_champion_prediction__"
CANDIDATE, CHAMPION = "candidate", "champion"
WEIGHT_KEY = "__cauce_example_weight__"
TFMA_HISTOGRAM_BUCKETS = 10_000  # calibration_histogram.DEFAULT_NUM_BUCKETS
# Metrics where a smaller value is better: a challenger must be *below* the champion.
LOWER_IS_BETTER = {
    "binary_crossentropy",
    "sparse_categorical_crossentropy",
    "mean_squared_error",
    "mean_absolute_error",
    "root_mean_squared_error",
}
MISSING_SLICE_VALUE = "<missing>"
_BOUND_NAMES = ("lower_bound", "upper_bound")


def run_evaluate(
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "eval",
    slice_features: list[str] | tuple[str, ...] = (),
    thresholds: dict | None = None,
    champion_model_dir: str | os.PathLike = "",
    change_thresholds: dict | None = None,
    slice_thresholds: dict | None = None,
) -> dict:
    """Evaluate the model in ``model_dir`` on ``split`` of the raw dataset in ``dataset_dir``.

    With ``champion_model_dir`` (the registry's current champion), both models are
    scored on the same rows in one TFMA run, and ``change_thresholds`` (metric ->
    margin, e.g. ``{"auc": 0.005}``) require the candidate to beat the champion by
    at least the margin on the overall slice *and on every slice*.
    ``slice_thresholds`` (same form as ``thresholds``) bound every slice of every
    slicing, so a model that is good on average but bad for one group is not
    blessed. ``slice_features`` entries are columns or crosses (``"a,b"``). For a loss
    (``binary_crossentropy``) "beat" means lower. TFMA 0.52 applies its own change
    thresholds only with an EvalSharedModel baseline, not model-agnostically, so
    the margins are checked here, on TFMA's numbers for both models.

    ``thresholds`` maps a metric name (see ``SCALAR_METRICS``) to a lower bound,
    or to ``{"lower_bound": x, "upper_bound": y}`` (either key may be left out;
    an upper bound is what a loss such as ``binary_crossentropy`` needs). They
    apply to the overall slice; the model is blessed when TFMA's validation of
    them passes; with no thresholds TFMA does not bless.

    Writes ``output_dir`` atomically: ``tfma/`` (TFMA's eval config, metrics,
    plots and validation result), ``evaluation.json`` and ``report.html``.
    Returns the summary: ``blessed``, ``metrics``, ``slices``,
    ``confusion_matrix``, ``roc``, ``calibration``, ``thresholds``, ``reasons``.
    """
    slicings = parse_slicings(slice_features)
    slice_features = sorted({name for slicing in slicings for name in slicing})
    model = cauce_model.load(model_dir)
    task = model.task
    bounds = normalize_thresholds(thresholds, task)
    slice_bounds = normalize_thresholds(slice_thresholds, task)
    margins = normalize_change_thresholds(change_thresholds, task)
    table = read_split(dataset_dir, split)
    labels = _labels(table, model, split)
    _check_slice_features(table, slice_features, model.label, split)

    columns = {model.label: labels, PREDICTION_KEY: _predictions(model.predict_scores(table), task)}
    for feature in slice_features:
        column = pc.cast(table.column(feature), pa.string())
        columns[feature] = pc.fill_null(column, MISSING_SLICE_VALUE)
    champion = None
    if champion_model_dir:
        champion = cauce_model.load(cauce_model.fetch_model_dir(str(champion_model_dir)))
        if (champion.label, champion.task, champion.classes) != (model.label, task, model.classes):
            raise CauceError(
                f"the champion at {champion_model_dir} predicts {champion.label!r} ({champion.task}), the candidate "
                f"{model.label!r} ({task}): they cannot be compared"
            )
        columns[CHAMPION_PREDICTION_KEY] = _predictions(champion.predict_scores(table), task)
    eval_table = pa.table(columns)
    if task == "binary":
        eval_table = aggregate_for_tfma(eval_table, [model.label, *slice_features])
    else:  # the histogram argument of aggregate_for_tfma holds for binary scores only
        eval_table = eval_table.append_column(WEIGHT_KEY, pa.array(np.ones(eval_table.num_rows)))
    rows = table.num_rows

    with atomic_dir(output_dir) as out:
        summary = _run_tfma(
            eval_table, model.label, slicings, bounds, out / TFMA_DIR, champion is not None, slice_bounds, task,
            model.classes,
        )
        summary["slice_thresholds"] = slice_bounds
        summary["change_thresholds"] = margins
        if champion is not None:
            comparisons = compare_with_champion(summary, margins)
            summary["champion"]["comparisons"] = comparisons
            summary["champion"]["model_dir"] = str(champion_model_dir)
            failed = [c for c in comparisons if not c["passed"]]
            summary["reasons"] += [c["reason"] for c in failed]
            summary["blessed"] = summary["blessed"] and not failed
        summary.update(
            task=task, split=split, rows=rows, tfma_examples=eval_table.num_rows, label=model.label, model=model.metadata
        )
        write_json(out / EVALUATION_FILE, summary)
        (out / REPORT_FILE).write_text(render_report(summary))
    return summary


def normalize_thresholds(thresholds: dict | None, task: str = "binary") -> dict[str, dict[str, float]]:
    """Turn ``{"auc": 0.6, "binary_crossentropy": {"upper_bound": 0.5}}`` into
    ``{metric: {"lower_bound"?: float, "upper_bound"?: float}}``, or raise naming the bad entry."""
    normalized = {}
    for name, bound in (thresholds or {}).items():
        if name not in TASK_METRICS[task].values():
            raise CauceError(
                f"thresholds: unknown metric {name!r} for a {task} model; "
                f"valid metric names: {sorted(TASK_METRICS[task].values())}"
            )
        if isinstance(bound, dict):
            unknown = sorted(set(bound) - set(_BOUND_NAMES))
            if unknown or not bound:
                raise CauceError(
                    f"thresholds[{name!r}] = {bound!r}: expected a number (lower bound) or a mapping "
                    f"with {' and/or '.join(_BOUND_NAMES)}"
                )
            entry = dict(bound)
        else:
            entry = {"lower_bound": bound}
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value):
                raise CauceError(f"thresholds[{name!r}] {key} must be a number, got {value!r}")
            entry[key] = float(value)
        normalized[name] = entry
    return normalized


def aggregate_for_tfma(eval_table: pa.Table, group_columns: list[str]) -> pa.Table:
    """Collapse rows TFMA cannot tell apart into one weighted example each.

    TFMA computes every metric we ask for except log loss from its calibration
    histogram (10 000 buckets of the prediction: bucket = int(p * 10000) + 1) or
    from the side of the 0.5 cut-off a prediction falls on (0.5 is a bucket edge).
    Rows with the same label, slice values and bucket therefore count the same;
    one example per group, with the group's mean prediction (which stays in the
    bucket, so TFMA's histogram sums are unchanged) and its size as example
    weight, gives TFMA's numbers exactly. Log loss moves by the curvature of
    log(p) inside a 1e-4-wide bucket: below 1e-8 relative (bench/bench_evaluate.py
    checks every metric against a plain TFMA run). TFMA's cost is per example and
    slice, so this is where the time goes down.

    When the groups would not be much fewer than the rows (e.g. a champion's
    predictions split every group again), the rows are kept, each with weight 1.
    """
    prediction_columns = [name for name in (PREDICTION_KEY, CHAMPION_PREDICTION_KEY) if name in eval_table.column_names]
    weights = pa.array(np.ones(eval_table.num_rows), pa.float64())
    if eval_table.num_rows < 1000:
        return eval_table.append_column(WEIGHT_KEY, weights)
    keyed = eval_table
    for name in prediction_columns:
        scores = keyed.column(name).to_numpy()
        bucket = np.clip(scores * TFMA_HISTOGRAM_BUCKETS + 1, 0, TFMA_HISTOGRAM_BUCKETS + 1).astype(np.int64)
        keyed = keyed.append_column(f"{name}__bucket", pa.array(bucket))
    keys = group_columns + [f"{name}__bucket" for name in prediction_columns]
    grouped = keyed.group_by(keys, use_threads=False).aggregate(
        [(name, kind) for name in prediction_columns for kind in ("mean", "min", "max")]
        + [(prediction_columns[0], "count")]
    )
    if grouped.num_rows > eval_table.num_rows // 2:
        return eval_table.append_column(WEIGHT_KEY, weights)
    columns = {name: grouped.column(name) for name in group_columns}
    for name in prediction_columns:
        # A computed mean can land a rounding error outside the group (n equal
        # values on a bucket edge): clamp it to the group's own extremes, which
        # are real members of the bucket.
        columns[name] = pc.min_element_wise(
            pc.max_element_wise(grouped.column(f"{name}_mean"), grouped.column(f"{name}_min")),
            grouped.column(f"{name}_max"),
        )
    columns[WEIGHT_KEY] = pc.cast(grouped.column(f"{prediction_columns[0]}_count"), pa.float64())
    return pa.table(columns)


def normalize_change_thresholds(change_thresholds: dict | None, task: str = "binary") -> dict[str, float]:
    """``{"auc": 0.005}`` -> margins by metric, or raise naming the bad entry."""
    margins = {}
    for name, margin in (change_thresholds or {}).items():
        comparable = set(TASK_METRICS[task].values()) - {"example_count"}
        if task == "regression":
            comparable.add("root_mean_squared_error")
        if name not in comparable:
            valid = sorted(comparable)
            raise CauceError(f"change_thresholds: unknown metric {name!r}; valid metric names: {valid}")
        if isinstance(margin, bool) or not isinstance(margin, Real) or math.isnan(margin):
            raise CauceError(f"change_thresholds[{name!r}] must be a number (the margin), got {margin!r}")
        margins[name] = float(margin)
    return margins


def compare_with_champion(summary: dict, margins: dict[str, float]) -> list[dict]:
    """One check per (slice, metric): does the candidate beat the champion by the margin?

    A slice where either model's metric is undefined (e.g. AUC of a one-class
    slice) is reported but cannot fail the comparison.
    """
    champion_slices = {(s["feature"], s["value"]): s["metrics"] for s in summary["champion"]["slices"]}
    places = [("overall", summary["metrics"], summary["champion"]["metrics"])]
    for entry in summary["slices"]:
        key = (entry["feature"], entry["value"])
        places.append((f"slice {key[0]}={key[1]}", entry["metrics"], champion_slices.get(key, {})))
    checks = []
    for where, candidate, champion in places:
        for name, margin in margins.items():
            ours, theirs = candidate.get(name), champion.get(name)
            if ours is None or theirs is None:
                checks.append({"where": where, "metric": name, "candidate": ours, "champion": theirs,
                               "margin": margin, "passed": True, "reason": f"{name} ({where}): undefined, not compared"})
                continue
            gain = theirs - ours if name in LOWER_IS_BETTER else ours - theirs
            passed = gain >= margin
            wording = "lower" if name in LOWER_IS_BETTER else "higher"
            checks.append({
                "where": where, "metric": name, "candidate": ours, "champion": theirs, "margin": margin,
                "passed": passed,
                "reason": f"{name} ({where}) = {ours:.4f} vs champion {theirs:.4f}: "
                          f"must be {wording} by at least {margin:g}",
            })
    return checks


def _labels(table: pa.Table, model, split: str) -> pa.Array:
    """The label column in the form TFMA reads for the model's task."""
    if model.task == "binary":
        return _binary_labels(table, model.label, split)
    if model.label not in table.column_names:
        raise CauceError(
            f"label column {model.label!r} (the model's label) not found in split {split!r}; "
            f"columns present: {table.column_names}"
        )
    if table.num_rows == 0:
        raise CauceError(f"split {split!r} is empty: there is nothing to evaluate")
    column = table.column(model.label)
    if column.null_count:
        raise CauceError(f"label column {model.label!r} has {column.null_count} missing value(s) in split {split!r}")
    if model.task == "regression":
        try:
            return pc.cast(column, pa.float64()).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise CauceError(f"label column {model.label!r} has type {column.type}; a regression label must be numeric") from None
    # multiclass: TFMA reads the class index, in the order of the model's classes
    index = {str(value): i for i, value in enumerate(model.classes)}
    values = [str(value) for value in column.to_pylist()]
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise CauceError(
            f"label column {model.label!r} holds class(es) {unknown[:5]} the model was not trained on; "
            f"its classes: {model.classes}"
        )
    return pa.array([index[value] for value in values], pa.int64())


def _predictions(outputs: np.ndarray, task: str) -> pa.Array:
    if task == "multiclass":  # one probability list per row
        return pa.array(list(outputs.astype(np.float64)), pa.list_(pa.float64()))
    return pa.array(outputs, pa.float64())


def _binary_labels(table: pa.Table, label: str, split: str) -> pa.Array:
    """Return the label column as int64 0/1, or raise saying what is wrong with it."""
    if label not in table.column_names:
        raise CauceError(
            f"label column {label!r} (the model's label) not found in split {split!r}; "
            f"columns present: {table.column_names}"
        )
    if table.num_rows == 0:
        raise CauceError(f"split {split!r} is empty: there is nothing to evaluate")
    column = table.column(label)
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
    ):
        raise CauceError(f"label column {label!r} has type {column.type}; expected binary 0/1 numbers")
    if column.null_count:
        raise CauceError(
            f"label column {label!r} has {column.null_count} missing value(s); expected 0 or 1 in every row"
        )
    values = pc.cast(column, pa.float64()).to_numpy()
    present = np.unique(values)
    unexpected = np.setdiff1d(present, [0.0, 1.0])
    if unexpected.size:
        raise CauceError(
            f"label column {label!r} is not binary: it holds {unexpected[:5].tolist()}; expected only 0 and 1"
        )
    if present.size < 2:
        raise CauceError(
            f"label column {label!r} holds only the class {int(present[0])} in split {split!r}; "
            "evaluating a classifier (AUC, precision, recall) needs examples of both classes"
        )
    return pa.array(values.astype(np.int64))


def parse_slicings(slice_features) -> list[tuple[str, ...]]:
    """``["payment_type", "payment_type,company", ["company", "pickup_hour"]]`` ->
    one slicing per entry: a single feature, or a cross of several."""
    slicings = []
    for entry in slice_features or []:
        names = entry.split(",") if isinstance(entry, str) else list(entry)
        names = tuple(name.strip() for name in names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise CauceError(f"slice_features entry {entry!r}: expected a column name or a cross like 'a,b'")
        if len(set(names)) != len(names):
            raise CauceError(f"slice_features entry {entry!r} names a column twice")
        slicings.append(names)
    return slicings


def _check_slice_features(table: pa.Table, slice_features: list[str], label: str, split: str) -> None:
    missing = [name for name in slice_features if name not in table.column_names]
    if missing:
        raise CauceError(
            f"slice feature(s) {missing} not found in split {split!r}; columns present: {table.column_names}"
        )
    if label in slice_features:
        raise CauceError(f"slice_features: {label!r} is the label; slice by feature columns only")


def _run_tfma(
    eval_table: pa.Table,
    label: str,
    slicings: list[tuple[str, ...]],
    bounds: dict,
    tfma_dir: Path,
    with_champion: bool = False,
    slice_bounds: dict | None = None,
    task: str = "binary",
    classes: list | None = None,
) -> dict:
    """Run TFMA over ``eval_table`` into ``tfma_dir`` and summarize what it wrote."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tfx_bsl.arrow import table_util

    eval_config = build_eval_config(label, slicings, bounds, with_champion, slice_bounds, task)
    # TFMA reads Arrow record batches whose columns are lists (one list per
    # example); plain columns give no error but no metrics either.
    batches = [
        table_util.CanonicalizeRecordBatch(b) for b in eval_table.to_batches(max_chunksize=BEAM_BATCH_ROWS)
    ]
    from cauce.beam_pipelines import make_pipeline

    with make_pipeline("DirectRunner") as pipeline:
        _ = (
            pipeline
            | "EvalBatches" >> beam.Create(batches, reshuffle=False)
            | "TFMA"
            >> tfma.ExtractEvaluateAndWriteResults(eval_config=eval_config, output_path=str(tfma_dir))
        )

    slices: dict = {}
    champion_slices: dict = {}
    for metrics_for_slice in tfma.load_metrics(str(tfma_dir)):
        key = _slice_of(metrics_for_slice.slice_key)
        for item in metrics_for_slice.metric_keys_and_values:
            target = champion_slices if item.key.model_name == CHAMPION else slices
            target.setdefault(key, {})[item.key.name] = item.value
    # TFMA's writer merges every plot of a slice into one PlotData under a
    # nameless key, so the plots are told apart by field, not by name.
    overall_plots = None
    if task == "binary":
        (overall_plots,) = (
            plots_for_slice.plot_keys_and_values[0].value
            for plots_for_slice in tfma.load_plots(str(tfma_dir))
            if not plots_for_slice.slice_key.single_slice_keys
        )
    validation = tfma.load_validation_result(str(tfma_dir))
    overall = slices.pop(None)
    champion = None
    if with_champion:
        champion_overall = champion_slices.pop(None)
        champion = {
            "metrics": _scalars(champion_overall, task),
            "slices": [
                {"feature": feature, "value": value, "metrics": _scalars(values, task)}
                for (feature, value), values in sorted(champion_slices.items())
            ],
        }

    return {
        "champion": champion,
        "blessed": bool(validation.validation_ok),
        "metrics": _scalars(overall, task),
        "slices": [
            {"feature": feature, "value": value, "metrics": _scalars(values, task)}
            for (feature, value), values in sorted(slices.items())
        ],
        "thresholds": bounds,
        "reasons": _failure_reasons(validation),
        "confusion_matrix": (
            _confusion_matrix(overall["confusion_matrix_at_thresholds"])
            if task == "binary"
            else _multiclass_confusion_matrix(overall["multi_class_confusion_matrix_at_thresholds"], classes or [])
            if task == "multiclass"
            else None
        ),
        "roc": _roc_points(overall_plots.confusion_matrix_at_thresholds) if overall_plots else None,
        "calibration": _calibration_buckets(overall_plots.calibration_histogram_buckets) if overall_plots else None,
        "tfma_output": TFMA_DIR,
    }


def build_eval_config(
    label: str,
    slicings: list[tuple[str, ...]],
    bounds: dict,
    with_champion: bool = False,
    slice_bounds: dict | None = None,
    task: str = "binary",
):
    """The TFMA EvalConfig: overall + one slicing per feature, our metrics, thresholds on the overall slice.

    With a champion, a second model-agnostic model spec reads the champion's
    predictions; its metrics spec carries no thresholds (only the candidate must
    pass them), and the plots are computed for the candidate only.
    """
    from tensorflow_model_analysis.proto import config_pb2

    slicings = parse_slicings(slicings)
    overall = config_pb2.SlicingSpec()
    slice_specs = [config_pb2.SlicingSpec(feature_keys=list(names)) for names in slicings]
    candidate_spec = config_pb2.MetricsSpec(
        metrics=_metric_configs(bounds, overall, slice_bounds or {}, slice_specs, task), model_names=[CANDIDATE]
    )
    model_specs = [
        config_pb2.ModelSpec(
            name=CANDIDATE, label_key=label, prediction_key=PREDICTION_KEY, example_weight_key=WEIGHT_KEY
        )
    ]
    metrics_specs = [candidate_spec]
    if with_champion:
        model_specs.append(
            config_pb2.ModelSpec(
                name=CHAMPION, label_key=label, prediction_key=CHAMPION_PREDICTION_KEY, example_weight_key=WEIGHT_KEY
            )
        )
        champion_metrics = [config_pb2.MetricConfig(class_name=class_name) for class_name in TASK_METRICS[task]]
        if task == "binary":  # _scalars reads it to tell undefined AUCs apart
            champion_metrics.append(
                config_pb2.MetricConfig(
                    class_name="ConfusionMatrixAtThresholds", config=f'"thresholds": [{DECISION_THRESHOLD}]'
                )
            )
        metrics_specs.append(config_pb2.MetricsSpec(metrics=champion_metrics, model_names=[CHAMPION]))
    for spec in metrics_specs:  # every example carries a weight (see aggregate_for_tfma)
        spec.example_weights.weighted = True
        spec.example_weights.unweighted = False
    return config_pb2.EvalConfig(
        model_specs=model_specs,
        slicing_specs=[overall, *slice_specs],
        metrics_specs=metrics_specs,
    )


def _metric_configs(bounds: dict, overall, slice_bounds: dict, slice_specs: list, task: str = "binary"):
    from tensorflow_model_analysis.proto import config_pb2

    metrics = []
    for class_name, name in TASK_METRICS[task].items():
        metric = config_pb2.MetricConfig(class_name=class_name)
        if name in slice_bounds and slice_specs:
            value_threshold = config_pb2.GenericValueThreshold()
            for key, value in slice_bounds[name].items():
                getattr(value_threshold, key).value = value
            metric.per_slice_thresholds.add(
                slicing_specs=slice_specs, threshold=config_pb2.MetricThreshold(value_threshold=value_threshold)
            )
        if name in bounds:
            value_threshold = config_pb2.GenericValueThreshold()
            for key, value in bounds[name].items():
                getattr(value_threshold, key).value = value
            # A MetricConfig.threshold would apply to every slice; this one
            # applies to the overall slice only.
            metric.per_slice_thresholds.add(
                slicing_specs=[overall],
                threshold=config_pb2.MetricThreshold(value_threshold=value_threshold),
            )
        metrics.append(metric)
    if task == "multiclass":
        metrics.append(config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixAtThresholds", config='"thresholds": [0.0]'))
    if task != "binary":
        return metrics
    metrics += [
        config_pb2.MetricConfig(
            class_name="ConfusionMatrixAtThresholds", config=f'"thresholds": [{DECISION_THRESHOLD}]'
        ),
        config_pb2.MetricConfig(
            class_name="ConfusionMatrixPlot", config=f'"num_thresholds": {ROC_THRESHOLDS}'
        ),
        config_pb2.MetricConfig(class_name="CalibrationPlot", config=f'"num_buckets": {CALIBRATION_BUCKETS}'),
    ]
    return metrics


def _slice_of(slice_key) -> tuple[str, str] | None:
    """``None`` for the overall slice, else ``(feature, value)``; a cross joins its
    columns and values with commas: ``("payment_type,company", "Cash,Flash Cab")``."""
    if not slice_key.single_slice_keys:
        return None
    columns, values = [], []
    for single in slice_key.single_slice_keys:
        raw = getattr(single, single.WhichOneof("kind"))
        columns.append(single.column)
        values.append(raw.decode() if isinstance(raw, bytes) else str(raw))
    return ",".join(columns), ",".join(values)


def _scalars(values: dict, task: str = "binary") -> dict[str, float | None]:
    """The scalar metrics of one slice, with None where a metric is undefined.

    TFMA reports NaN for some undefined metrics (precision without predicted
    positives) but 0 for the AUCs of a slice holding one class only; the
    slice's own confusion matrix tells those apart.
    """
    scalars = {}
    for name in TASK_METRICS[task].values():
        value = values[name].double_value.value
        scalars[name] = value if math.isfinite(value) else None
    if task == "regression" and scalars["mean_squared_error"] is not None:
        scalars["root_mean_squared_error"] = math.sqrt(scalars["mean_squared_error"])
    if task != "binary":
        return scalars
    counts = _confusion_matrix(values["confusion_matrix_at_thresholds"])
    positives = counts["true_positives"] + counts["false_negatives"]
    negatives = counts["true_negatives"] + counts["false_positives"]
    if positives == 0 or negatives == 0:
        scalars["auc"] = None
    if positives == 0:
        scalars["auc_precision_recall"] = None
    return scalars


def _failure_reasons(validation) -> list[str]:
    """One sentence per threshold TFMA's validator failed."""
    if validation.missing_thresholds:
        return ["no thresholds were set: TFMA blesses a model only by checking it against thresholds"]
    reasons = []
    for per_slice in validation.metric_validations_per_slice:
        where = (
            "overall"
            if not per_slice.slice_key.single_slice_keys
            else "slice " + "=".join(_slice_of(per_slice.slice_key))
        )
        for failure in per_slice.failures:
            name = failure.metric_key.name
            bound = failure.metric_threshold.value_threshold
            if not failure.HasField("metric_value"):
                reasons.append(f"{name} ({where}): {failure.message or 'not computed'}")
                continue
            value = failure.metric_value.double_value.value
            limits = []
            if bound.HasField("lower_bound"):
                limits.append(f">= {bound.lower_bound.value:g}")
            if bound.HasField("upper_bound"):
                limits.append(f"<= {bound.upper_bound.value:g}")
            reasons.append(f"{name} ({where}) = {value:.4f}, required {' and '.join(limits)}")
    return reasons


def _confusion_matrix(metric) -> dict:
    (matrix,) = metric.confusion_matrix_at_thresholds.matrices
    tn, fp = int(matrix.true_negatives), int(matrix.false_positives)
    fn, tp = int(matrix.false_negatives), int(matrix.true_positives)
    return {
        "threshold": matrix.threshold,
        "labels": ["0", "1"],
        # rows: actual class, columns: predicted class (the layout KFP's ClassificationMetrics expects)
        "matrix": [[tn, fp], [fn, tp]],
        "true_negatives": tn,
        "false_positives": fp,
        "false_negatives": fn,
        "true_positives": tp,
    }


def _multiclass_confusion_matrix(metric, classes: list) -> dict:
    """k x k counts (rows: actual class, columns: predicted class = the argmax)."""
    (matrix,) = metric.multi_class_confusion_matrix_at_thresholds.matrices
    size = len(classes)
    counts = [[0] * size for _ in range(size)]
    for entry in matrix.entries:
        if 0 <= entry.actual_class_id < size and 0 <= entry.predicted_class_id < size:
            counts[entry.actual_class_id][entry.predicted_class_id] = int(entry.num_weighted_examples)
    return {"labels": [str(c) for c in classes], "matrix": counts}


def _roc_points(matrices) -> dict:
    """ROC points from TFMA's confusion matrix plot, in order of increasing false positive rate."""
    points = sorted(
        ((m.false_positive_rate, m.recall, m.threshold) for m in matrices.matrices),
        key=lambda point: (point[0], point[1]),
    )
    return {
        "fpr": [round(p[0], 6) for p in points],
        "tpr": [round(p[1], 6) for p in points],
        "threshold": [round(p[2], 6) for p in points],
    }


def _calibration_buckets(histogram) -> list[dict]:
    """Reliability table: mean score against the observed positive rate per score bucket."""
    buckets = []
    for bucket in histogram.buckets:
        count = bucket.num_weighted_examples.value
        if count <= 0:
            continue  # includes TFMA's edge buckets (-inf, 0) and [1, inf), empty for probabilities
        buckets.append(
            {
                # clamp the edge buckets' infinite bounds, which JSON cannot hold
                "lower": round(max(bucket.lower_threshold_inclusive, 0.0), 6),
                "upper": round(min(bucket.upper_threshold_exclusive, 1.0), 6),
                "count": int(count),
                "mean_score": bucket.total_weighted_refined_prediction.value / count,
                "positive_rate": bucket.total_weighted_label.value / count,
            }
        )
    return buckets


# ---- report ------------------------------------------------------------------

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
.verdict { padding: .8em 1.2em; border-radius: 6px; font-size: 1.2em; font-weight: 600; }
.blessed { background: #e3f6e8; border: 1px solid #2e8b57; }
.rejected { background: #fde8e8; border: 1px solid #c0392b; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #d0d0d5; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f6; } .pass { color: #2e8b57; } .fail { color: #c0392b; font-weight: 600; }
.note { color: #666; }
"""


def render_report(summary: dict) -> str:
    """A self-contained HTML page (no scripts, no external assets) of one evaluation."""
    blessed = summary["blessed"]
    verdict = (
        "Blessed: every threshold passed" if blessed else "Not blessed: " + "; ".join(summary["reasons"])
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Model evaluation</title><style>" + _STYLE + "</style></head><body>",
        "<h1>Model evaluation</h1>",
        f"<div class='verdict {'blessed' if blessed else 'rejected'}'>{html.escape(verdict)}</div>",
        f"<p class='note'>Label <b>{html.escape(summary['label'])}</b> "
        f"({html.escape(summary.get('task', 'binary'))}), split "
        f"<b>{html.escape(summary['split'])}</b>, {summary['rows']:,} rows. Computed by TensorFlow Model "
        "Analysis" + (
            f"; accuracy, precision, recall and the confusion matrix use the cut-off "
            f"{summary['confusion_matrix']['threshold']:g}." if summary.get("roc") else "."
        ) + "</p>",
        "<h2>Overall metrics</h2>",
        _overall_table(summary["metrics"], summary["thresholds"]),
    ]
    if summary.get("confusion_matrix"):
        parts += ["<h2>Confusion matrix</h2>", _confusion_table(summary["confusion_matrix"])]
    if summary.get("roc"):
        parts += [
            "<h2>ROC curve</h2>",
            _roc_svg(summary["roc"], summary["metrics"]["auc"]),
            "<h2>Calibration</h2>",
            _calibration_table(summary["calibration"]),
        ]
    if summary.get("champion"):
        parts += ["<h2>Challenger vs champion</h2>", _comparison_table(summary["champion"]["comparisons"])]
    if summary["slices"]:
        parts += ["<h2>Metrics per slice</h2>", _slices_table(summary["slices"])]
    parts.append("</body></html>")
    return "\n".join(parts)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _passes(value: float | None, bound: dict) -> bool:
    if value is None:
        return False
    return value >= bound.get("lower_bound", -math.inf) and value <= bound.get("upper_bound", math.inf)


def _overall_table(metrics: dict, thresholds: dict) -> str:
    rows = []
    for name, value in metrics.items():
        bound = thresholds.get(name)
        if bound is None:
            required = status = ""
        else:
            required = " and ".join(
                f"{'≥' if key == 'lower_bound' else '≤'} {limit:g}" for key, limit in bound.items()
            )
            status = (
                "<span class='pass'>pass</span>"
                if _passes(value, bound)
                else "<span class='fail'>fail</span>"
            )
        rows.append(f"<tr><td>{name}</td><td>{_number(value)}</td><td>{required}</td><td>{status}</td></tr>")
    return (
        "<table><tr><th>metric</th><th>value</th><th>threshold</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _confusion_table(confusion: dict) -> str:
    labels = [html.escape(label) for label in confusion["labels"]]
    header = "<tr><th></th>" + "".join(f"<th>predicted {label}</th>" for label in labels) + "</tr>"
    rows = "".join(
        f"<tr><td>actual {label}</td>" + "".join(f"<td>{count:,}</td>" for count in row) + "</tr>"
        for label, row in zip(labels, confusion["matrix"])
    )
    return "<table>" + header + rows + "</table>"


def _roc_svg(roc: dict, auc: float | None, size: int = 320, margin: int = 40) -> str:
    def x(fpr: float) -> float:
        return margin + fpr * size

    def y(tpr: float) -> float:
        return margin + (1 - tpr) * size

    curve = " ".join(f"{x(f):.1f},{y(t):.1f}" for f, t in zip(roc["fpr"], roc["tpr"]))
    ticks = "".join(
        f"<text x='{x(v):.0f}' y='{margin + size + 16}' text-anchor='middle'>{v:g}</text>"
        f"<text x='{margin - 6}' y='{y(v) + 4:.0f}' text-anchor='end'>{v:g}</text>"
        for v in (0, 0.25, 0.5, 0.75, 1)
    )
    full = size + 2 * margin
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{full}' height='{full}' font-size='11' "
        f"role='img' aria-label='ROC curve, AUC {_number(auc)}'>"
        f"<rect x='{margin}' y='{margin}' width='{size}' height='{size}' fill='none' stroke='#999'/>"
        f"<line x1='{x(0)}' y1='{y(0)}' x2='{x(1)}' y2='{y(1)}' stroke='#bbb' stroke-dasharray='4 4'/>"
        f"<polyline points='{curve}' fill='none' stroke='#1f6feb' stroke-width='2'/>"
        f"{ticks}"
        f"<text x='{x(0.5)}' y='{full - 4}' text-anchor='middle'>false positive rate</text>"
        f"<text transform='translate(12 {y(0.5)}) rotate(-90)' text-anchor='middle'>true positive rate</text>"
        f"<text x='{x(0.6)}' y='{y(0.1)}'>AUC {_number(auc)}</text>"
        "</svg>"
    )


def _calibration_table(buckets: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>[{b['lower']:g}, {b['upper']:g})</td><td>{b['count']:,}</td>"
        f"<td>{b['mean_score']:.3f}</td><td>{b['positive_rate']:.3f}</td></tr>"
        for b in buckets
    )
    return (
        "<table><tr><th>score bucket</th><th>rows</th><th>mean score</th><th>observed positive rate</th></tr>"
        + rows
        + "</table>"
    )


def _comparison_table(comparisons: list[dict]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['where'])}</td><td>{c['metric']}</td><td>{_number(c['candidate'])}</td>"
        f"<td>{_number(c['champion'])}</td><td>{c['margin']:g}</td>"
        f"<td>{'<span class=pass>pass</span>' if c['passed'] else '<span class=fail>fail</span>'}</td></tr>"
        for c in comparisons
    )
    return (
        "<table><tr><th>where</th><th>metric</th><th>challenger</th><th>champion</th><th>margin</th><th></th></tr>"
        + rows
        + "</table>"
    )


def _slices_table(slices: list[dict]) -> str:
    names = list(slices[0]["metrics"])
    header = "<tr><th>feature</th><th>value</th>" + "".join(f"<th>{name}</th>" for name in names) + "</tr>"
    rows = "".join(
        f"<tr><td>{html.escape(s['feature'])}</td><td>{html.escape(s['value'])}</td>"
        + "".join(f"<td>{_number(s['metrics'][name])}</td>" for name in names)
        + "</tr>"
        for s in slices
    )
    return "<table>" + header + rows + "</table>"
