"""Evaluate a model on a dataset split: exact metrics, TFMA slices and plots.

The model scores the split here, in plain Python, through the same fitted
transform serving uses. Every metric evaluate reports and gates on is computed
exactly from those scores, overall and per slice, with scikit-learn's
definitions (``metrics.py``): TFMA 0.52's AUC comes from a 10 000-bucket
histogram and misreads scores crowded near 0 or 1. TensorFlow Model Analysis
runs model-agnostic on (label, prediction, slice features) for the slices'
plots (ROC and calibration; the k x k confusion matrix for multiclass), and its
example counts are checked against ours slice by slice. The thresholds and the
champion comparison are checked here, on the exact numbers. This module shapes
both into ``evaluation.json`` and a readable ``report.html``.

TensorFlow Model Analysis (and with it TensorFlow and Beam) is imported inside
:func:`_run_tfma` only, so importing this module stays cheap.
"""

from __future__ import annotations

import math
import os
import threading
from numbers import Real
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cauce import model as cauce_model
from cauce import reports
from cauce.artifacts import CauceError, atomic_dir, write_json
from cauce.components.evaluate import metrics as exact
from cauce.data import drop_missing_labels, read_split

TFMA_DIR = "tfma"
EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.html"

# The metrics reported (and usable in thresholds) per task, computed exactly by
# metrics.py; the keys are the TFMA metric classes of the same names, kept for
# callers that map one to the other.
SCALAR_METRICS = {
    "ExampleCount": "example_count",
    "AUC": "auc",
    "AUCPrecisionRecall": "auc_precision_recall",
    "BinaryAccuracy": "binary_accuracy",
    "Precision": "precision",
    "Recall": "recall",
    "BinaryCrossEntropy": "binary_crossentropy",
}
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
        "RootMeanSquaredError": "root_mean_squared_error",
    },
}
DECISION_THRESHOLD = exact.DECISION_THRESHOLD  # a score above it is a positive prediction
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
    runner: str = "",
    pipeline_options: dict | None = None,
    work_uri: str = "",
    model_uri: str = "",
    dataset_uri: str = "",
    champion_model_uri: str = "",
    output_uri: str = "",
) -> dict:
    """Evaluate the model in ``model_dir`` on ``split`` of the raw dataset in ``dataset_dir``.

    With ``champion_model_dir`` (the registry's current champion), both models are
    scored on the same rows, and ``change_thresholds`` (metric ->
    margin, e.g. ``{"auc": 0.005}``) require the candidate to beat the champion by
    at least the margin on the overall slice *and on every slice*.
    ``slice_thresholds`` (same form as ``thresholds``) bound every slice of every
    slicing, so a model that is good on average but bad for one group is not
    blessed. ``slice_features`` entries are columns or crosses (``"a,b"``). For a loss
    (``binary_crossentropy``) "beat" means lower. The margins are checked on the
    exact metrics of both models.

    ``thresholds`` maps a metric name (see ``SCALAR_METRICS``) to a lower bound,
    or to ``{"lower_bound": x, "upper_bound": y}`` (either key may be left out;
    an upper bound is what a loss such as ``binary_crossentropy`` needs). They
    apply to the overall slice; the model is blessed when every bound holds on
    the exact metrics; with no thresholds at all it is not blessed.

    ``runner`` empty scores the split and computes everything in this process.
    "DirectRunner" (Beam's FnApiRunner) or "DataflowRunner" (``pipeline_options`` from
    ``cauce.beam_pipelines.runner_options``) does it in one Beam pipeline
    (``dataflow.evaluate_beam``): the workers read the model at ``model_uri``, the
    champion at ``champion_model_uri`` and the split under ``dataset_uri`` (as they see
    them: gs:// on Dataflow; empty = the local ones), the exact metrics are merged from
    per-batch aggregates (the same numbers, bit for bit), TFMA's output is published with
    its manifest (``tfma/_PUBLISHED.json``), and the pipeline's results go through
    ``work_uri`` (gs:// on Dataflow; empty = a temporary folder, DirectRunner only).
    With ``output_uri`` (gs://, required on Dataflow: the evaluation artifact's URI, whose
    local path is ``output_dir``) TFMA writes there, published by its manifest, and
    ``evaluation.json`` and ``report.html`` are each written atomically into ``output_dir``.

    Writes ``output_dir`` atomically: ``tfma/`` (TFMA's eval config, example
    counts and plots), ``evaluation.json`` and ``report.html``.
    Returns the summary: ``blessed``, ``metrics``, ``slices``,
    ``confusion_matrix``, ``roc``, ``calibration``, ``thresholds``, ``reasons``.
    """
    slicings = parse_slicings(slice_features)
    slice_features = sorted({name for slicing in slicings for name in slicing})
    # TFMA's import (TensorFlow and Beam: ~4-6 s of one core) starts on a thread
    # now, and overlaps with loading the model, scoring the split and computing
    # the exact metrics wherever those release the GIL (LightGBM's predict, Arrow,
    # numpy). Measured at 1 M rows on the shared 2-core machine, three runs each:
    # about 1 s less CPU than importing in turn and no extra memory, where a
    # separate TFMA process cost ~2.5 s more CPU (imports twice) and ~400 MB.
    cauce_model.passive_openmp_waits()  # before any import loads an OpenMP runtime (LightGBM, scikit-learn)
    tfma_import = threading.Thread(target=_import_tfma, name="import-tfma", daemon=True)
    tfma_import.start()
    model = cauce_model.load(model_dir)
    task = model.task
    bounds = normalize_thresholds(thresholds, task)
    slice_bounds = normalize_thresholds(slice_thresholds, task)
    margins = normalize_change_thresholds(change_thresholds, task)
    champion = None
    if champion_model_dir:
        champion = cauce_model.load(cauce_model.fetch_model_dir(str(champion_model_dir)))
        if (champion.label, champion.task, champion.classes) != (model.label, task, model.classes):
            raise CauceError(
                f"the champion at {champion_model_dir} predicts {champion.label!r} ({champion.task}), the candidate "
                f"{model.label!r} ({task}): they cannot be compared"
            )
    if runner:
        return _evaluate_on_beam(
            model, champion, model_dir, dataset_dir, output_dir, split, slicings, runner, pipeline_options,
            work_uri, model_uri, dataset_uri, champion_model_uri or str(champion_model_dir), output_uri,
            dict(bounds=bounds, slice_bounds=slice_bounds, margins=margins, champion_model_dir=champion_model_dir),
        )
    table = read_split(dataset_dir, split)
    # Rows without a label measure nothing: left out by the rule transform and train
    # follow (cauce.data.missing_label_mask), and counted.
    table, rows_missing_label = drop_missing_labels(table, model.label)
    labels = _labels(table, model, split)
    _check_slice_features(table, slice_features, model.label, split)

    outputs = model.predict_scores(table)
    slice_columns = {
        feature: pc.fill_null(pc.cast(table.column(feature), pa.string()), MISSING_SLICE_VALUE).combine_chunks()
        for feature in slice_features
    }
    rows = table.num_rows
    label_values = labels.to_numpy()
    slice_values = {feature: column.to_numpy(zero_copy_only=False) for feature, column in slice_columns.items()}
    overall, slices = exact.sliced_metrics(task, label_values, outputs, slice_values, slicings)
    champion_summary = None
    if champion is not None:
        champion_overall, champion_slices = exact.sliced_metrics(
            task, label_values, champion.predict_scores(table), slice_values, slicings
        )
        champion_summary = {"metrics": champion_overall, "slices": champion_slices}
    del table

    # TFMA reads the candidate only: its plots are the candidate's, and without a
    # second prediction column a binary split collapses into few weighted examples.
    eval_table = pa.table({model.label: labels, PREDICTION_KEY: _predictions(outputs, task), **slice_columns})
    if task == "binary":
        eval_table = aggregate_for_tfma(eval_table, [model.label, *slice_features])
    else:  # the histogram argument of aggregate_for_tfma holds for binary scores only
        eval_table = eval_table.append_column(WEIGHT_KEY, pa.array(np.ones(eval_table.num_rows)))
    if task == "binary":
        confusion = exact.confusion_counts(label_values, outputs)
    elif task == "multiclass":
        confusion = exact.multiclass_confusion(label_values, outputs, len(model.classes))
    else:
        confusion = None

    with atomic_dir(output_dir) as out:
        tfma_import.join()
        plots = _run_tfma(eval_table, model.label, slicings, out / TFMA_DIR, task)
        summary = _summarize(
            model, plots, overall, slices, champion_summary, confusion,
            dict(bounds=bounds, slice_bounds=slice_bounds, margins=margins, champion_model_dir=champion_model_dir),
            split=split, rows=rows, rows_missing_label=rows_missing_label, tfma_examples=eval_table.num_rows,
        )
        write_json(out / EVALUATION_FILE, summary)
        (out / REPORT_FILE).write_text(render_report(summary))
    return summary


def _evaluate_on_beam(model, champion, model_dir, dataset_dir, output_dir, split, slicings, runner,
                      pipeline_options, work_uri, model_uri, dataset_uri, champion_uri, output_uri, gate) -> dict:
    """``run_evaluate`` with the rows processed by ``dataflow.evaluate_beam``."""
    import tempfile

    from cauce.artifacts import atomic_file
    from cauce.components.evaluate import dataflow

    if runner != "DirectRunner" and not (work_uri and output_uri):
        raise CauceError(
            f"runner={runner} needs a work_uri and an output_uri its workers can write (gs://); "
            f"got work_uri={work_uri!r}, output_uri={output_uri!r}"
        )

    def evaluate(tfma_root: str, work: str) -> dict:
        computed = dataflow.evaluate_beam(
            model_uri or str(model_dir), str(dataset_dir), split, slicings, tfma_root, work, runner,
            pipeline_options, dataset_uri, champion_uri if champion is not None else "",
        )
        computed["tfma_output"] = computed["tfma_output"][len(tfma_root.rstrip("/")) + 1 :]
        plots = {name: computed[name] for name in ("roc", "calibration", "tfma_output", "example_counts")}
        return _summarize(
            model, plots, computed["metrics"], computed["slices"], computed["champion"],
            computed.get("confusion"), gate,
            split=split, rows=computed["rows"], rows_missing_label=computed["rows_missing_label"],
            tfma_examples=computed["tfma_examples"],
        )

    with tempfile.TemporaryDirectory(prefix="cauce-evaluate-") as temporary:
        if output_uri:
            # TFMA's output is published under output_uri by its manifest; the two summary
            # files are each replaced atomically.
            summary = evaluate(output_uri, work_uri or temporary)
            out = Path(output_dir)
            write_json(out / EVALUATION_FILE, summary)
            with atomic_file(out / REPORT_FILE) as handle:
                handle.write(render_report(summary))
            return summary
        with atomic_dir(output_dir) as out:
            summary = evaluate(str(out), work_uri or temporary)
            write_json(out / EVALUATION_FILE, summary)
            (out / REPORT_FILE).write_text(render_report(summary))
    return summary


def _summarize(model, plots: dict, overall: dict, slices: list, champion_summary: dict | None, confusion,
               gate: dict, *, split: str, rows: int, rows_missing_label: int, tfma_examples: int) -> dict:
    """evaluation.json's content: the exact metrics and TFMA's plots checked against each
    other, the gate (thresholds, champion margins) decided on the exact metrics."""
    task = model.task
    bounds, slice_bounds, margins = gate["bounds"], gate["slice_bounds"], gate["margins"]
    plots = dict(plots)
    _check_example_counts(plots.pop("example_counts"), overall, slices)
    reasons = threshold_failures(overall, slices, bounds, slice_bounds)
    summary = {
        "champion": champion_summary,
        "blessed": (bool(bounds) or bool(slice_bounds)) and not reasons,
        "metrics": overall,
        "slices": slices,
        "thresholds": bounds,
        "reasons": reasons,
        "confusion_matrix": _confusion_matrix(task, confusion, model.classes),
        **plots,
        "slice_thresholds": slice_bounds,
        "change_thresholds": margins,
    }
    if champion_summary is not None:
        comparisons = compare_with_champion(summary, margins)
        summary["champion"]["comparisons"] = comparisons
        summary["champion"]["model_dir"] = str(gate["champion_model_dir"])
        failed = [c for c in comparisons if not c["passed"]]
        summary["reasons"] += [c["reason"] for c in failed]
        summary["blessed"] = summary["blessed"] and not failed
    summary.update(
        task=task, split=split, rows=rows, rows_missing_label=rows_missing_label, tfma_examples=tfma_examples,
        label=model.label, model=model.metadata,
    )
    return summary


def _import_tfma() -> None:
    """Import what ``_run_tfma`` needs; a failure here shows again, with its
    message, when ``_run_tfma`` imports the same modules."""
    try:
        import apache_beam  # noqa: F401
        import tensorflow_model_analysis  # noqa: F401
    except Exception:  # noqa: S110 - re-raised by _run_tfma's own import
        pass


def threshold_failures(overall: dict, slices: list[dict], bounds: dict, slice_bounds: dict) -> list[str]:
    """One sentence per bound that does not hold: ``bounds`` on the overall
    metrics, ``slice_bounds`` on every slice. A metric undefined where it is
    bound (the AUC of a slice holding one class) fails: nothing shows it holds."""
    if not bounds and not slice_bounds:
        return ["no thresholds were set: a model is blessed only by passing thresholds"]
    places = [("overall", overall, bounds)]
    places += [(f"slice {s['feature']}={s['value']}", s["metrics"], slice_bounds) for s in slices]
    reasons = []
    for where, values, bounds_here in places:
        for name, bound in bounds_here.items():
            value = values.get(name)
            limits = []
            if "lower_bound" in bound:
                limits.append(f">= {bound['lower_bound']:g}")
            if "upper_bound" in bound:
                limits.append(f"<= {bound['upper_bound']:g}")
            if value is None:
                reasons.append(f"{name} ({where}): undefined here, required {' and '.join(limits)}")
            elif not bound.get("lower_bound", -math.inf) <= value <= bound.get("upper_bound", math.inf):
                reasons.append(f"{name} ({where}) = {value:.4f}, required {' and '.join(limits)}")
    return reasons


def _check_example_counts(tfma_counts: dict, overall: dict, slices: list[dict]) -> None:
    """TFMA's weighted example count of every slice must be ours: the plots and
    the metrics then describe the same rows."""
    ours = {None: overall["example_count"]} | {(s["feature"], s["value"]): s["metrics"]["example_count"] for s in slices}
    theirs = {key: round(value) for key, value in tfma_counts.items()}
    if ours != theirs:
        differ = sorted((str(k), ours.get(k), theirs.get(k)) for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise CauceError(f"TFMA's slices disagree with the exact metrics' (slice, ours, TFMA's): {differ[:5]}")


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


def _plot_intervals() -> np.ndarray:
    """Every cut TFMA's plots apply to its calibration histogram, sorted.

    ``ConfusionMatrixPlot`` rebins the histogram at its thresholds (-1e-6, 0,
    1/100, ..., 1) shifted up by 1e-7 except 0 (binary_confusion_matrices.py),
    ``CalibrationPlot`` at -inf, 0, 1/10, ..., 1 (calibration_plot.py); each
    histogram bucket goes wholly to the interval holding its lower edge
    (``calibration_histogram.rebin``). The same float expressions as TFMA's."""
    epsilon = 1e-7  # binary_confusion_matrices._EPSILON
    roc = [-1e-6] + [i * 1.0 / ROC_THRESHOLDS for i in range(ROC_THRESHOLDS + 1)]
    roc = [t + epsilon if t != 0 else t for t in roc]
    calibration = [float("-inf")] + [0.0 + i * (1.0 - 0.0) / CALIBRATION_BUCKETS for i in range(CALIBRATION_BUCKETS + 1)]
    return np.array(sorted(set(roc) | set(calibration)))


def plot_groups(scores: np.ndarray) -> np.ndarray:
    """The interval of ``_plot_intervals`` each score's histogram bucket falls in:
    scores of one interval (and label and slice) are the same to every plot."""
    buckets = TFMA_HISTOGRAM_BUCKETS
    # calibration_histogram._bucket_index, vectorized: truncated, clamped to [0, buckets + 1]
    index = np.clip((np.asarray(scores, dtype=np.float64) - 0.0) / 1.0 * buckets + 1, 0, buckets + 1).astype(np.int64)
    lower = (index - 1) / buckets * (1.0 - 0.0) + 0.0  # rebin's value for a bucket: its lower edge
    lower[index == 0] = -np.inf
    lower[index >= buckets + 1] = np.inf
    return np.searchsorted(_plot_intervals(), lower, side="right")


def aggregate_for_tfma(eval_table: pa.Table, group_columns: list[str]) -> pa.Table:
    """Collapse rows TFMA's plots cannot tell apart into one weighted example each.

    TFMA draws the ROC curve (100 thresholds) and the calibration plot (10
    buckets) from its calibration histogram (10 000 buckets of the prediction:
    bucket = int(p * 10000) + 1), rebinned at the plots' cuts. Rows with the same
    label, slice values and interval between two cuts (``plot_groups``: about
    100 intervals) therefore count the same; one example per group, with the
    group's mean prediction (which stays in the interval) and its size as example
    weight, gives TFMA's plots exactly (tests compare them with TFMA on every
    row). The scalar metrics do not come from TFMA (see metrics.py), so nothing
    else depends on the exact scores here. TFMA's cost is per example and slice:
    at 200 k eval rows and one 6-value slice feature, ~1 k examples instead of
    200 k.
    """
    prediction_columns = [name for name in (PREDICTION_KEY, CHAMPION_PREDICTION_KEY) if name in eval_table.column_names]
    weights = pa.array(np.ones(eval_table.num_rows), pa.float64())
    if eval_table.num_rows < 1000:
        return eval_table.append_column(WEIGHT_KEY, weights)
    keyed = eval_table
    for name in prediction_columns:
        keyed = keyed.append_column(f"{name}__group", pa.array(plot_groups(keyed.column(name).to_numpy())))
    keys = group_columns + [f"{name}__group" for name in prediction_columns]
    grouped = keyed.group_by(keys, use_threads=False).aggregate(
        [(name, kind) for name in prediction_columns for kind in ("list", "min", "max")]
        + [(prediction_columns[0], "count")]
    )
    if grouped.num_rows > eval_table.num_rows // 2:
        return eval_table.append_column(WEIGHT_KEY, weights)
    columns = {name: grouped.column(name) for name in group_columns}
    counts = grouped.column(f"{prediction_columns[0]}_count").to_numpy().astype(np.float64)
    for name in prediction_columns:
        sums = [math.fsum(values.values.to_numpy()) for values in grouped.column(f"{name}_list").combine_chunks()]
        columns[name] = group_means(np.array(sums), counts, grouped.column(f"{name}_min"), grouped.column(f"{name}_max"))
    columns[WEIGHT_KEY] = counts
    return pa.table(columns)


def group_means(sums: np.ndarray, counts: np.ndarray, lows, highs) -> np.ndarray:
    """Each group's mean prediction from its exact sum (``math.fsum``: correctly rounded,
    so the same number whatever order the rows were added in: in one table here, merged
    from Beam's batches in ``dataflow``), kept within the group's own extremes: a
    computed mean can land a rounding error outside the group (n equal values on an
    edge), and the extremes are real members of the interval."""
    return np.minimum(np.maximum(sums / counts, np.asarray(lows, dtype=np.float64)), np.asarray(highs, dtype=np.float64))


def exact_partials(values, partials=()) -> list[float]:
    """Shewchuk's non-overlapping partials of the sum of ``partials`` and ``values``:
    floats whose exact sum is exactly that sum, so ``math.fsum`` of them is the correctly
    rounded total of every value ever added, in any order and any grouping (how Beam's
    batches of a group merge). The same algorithm ``math.fsum`` runs internally."""
    partials = list(partials)
    for x in values:
        x = float(x)
        kept = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                partials[kept] = low
                kept += 1
            x = high
        partials[kept:] = [x]
    return partials


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
    tfma_dir: Path,
    task: str = "binary",
) -> dict:
    """Run TFMA over ``eval_table`` into ``tfma_dir``: every slice's example count
    and plots. Returns the overall ROC and calibration (binary; None otherwise)
    and ``example_counts`` by slice (``None`` for overall, else ``(feature, value)``)."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tfx_bsl.arrow import table_util

    eval_config = build_eval_config(label, slicings, task)
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

    counts = {}
    for metrics_for_slice in tfma.load_metrics(str(tfma_dir)):
        for item in metrics_for_slice.metric_keys_and_values:
            if item.key.name == "example_count":
                counts[_slice_of(metrics_for_slice.slice_key)] = item.value.double_value.value
    # TFMA's writer merges every plot of a slice into one PlotData under a
    # nameless key, so the plots are told apart by field, not by name.
    overall_plots = None
    if task == "binary":
        (overall_plots,) = (
            plots_for_slice.plot_keys_and_values[0].value
            for plots_for_slice in tfma.load_plots(str(tfma_dir))
            if not plots_for_slice.slice_key.single_slice_keys
        )
    return {
        "roc": _roc_points(overall_plots.confusion_matrix_at_thresholds) if overall_plots else None,
        "calibration": _calibration_buckets(overall_plots.calibration_histogram_buckets) if overall_plots else None,
        "tfma_output": TFMA_DIR,
        "example_counts": counts,
    }


def build_eval_config(label: str, slicings: list[tuple[str, ...]], task: str = "binary"):
    """The TFMA EvalConfig: overall + one slicing per feature or cross; the
    example count (checked against the exact metrics') and the task's plots:
    binary ROC (``ConfusionMatrixPlot``) and calibration, multiclass the k x k
    confusion matrix. The scalar metrics are exact, computed outside TFMA."""
    from tensorflow_model_analysis.proto import config_pb2

    slicings = parse_slicings(slicings)
    metrics = [config_pb2.MetricConfig(class_name="ExampleCount")]
    if task == "binary":
        metrics += [
            config_pb2.MetricConfig(class_name="ConfusionMatrixPlot", config=f'"num_thresholds": {ROC_THRESHOLDS}'),
            config_pb2.MetricConfig(class_name="CalibrationPlot", config=f'"num_buckets": {CALIBRATION_BUCKETS}'),
        ]
    elif task == "multiclass":
        metrics.append(config_pb2.MetricConfig(class_name="MultiClassConfusionMatrixPlot"))
    spec = config_pb2.MetricsSpec(metrics=metrics, model_names=[CANDIDATE])
    spec.example_weights.weighted = True  # every example carries a weight (see aggregate_for_tfma)
    spec.example_weights.unweighted = False
    return config_pb2.EvalConfig(
        model_specs=[
            config_pb2.ModelSpec(
                name=CANDIDATE, label_key=label, prediction_key=PREDICTION_KEY, example_weight_key=WEIGHT_KEY
            )
        ],
        slicing_specs=[config_pb2.SlicingSpec()] + [config_pb2.SlicingSpec(feature_keys=list(s)) for s in slicings],
        metrics_specs=[spec],
    )


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


def _confusion_matrix(task: str, confusion, classes: list) -> dict | None:
    """Binary: the counts at ``DECISION_THRESHOLD`` (``metrics.confusion_counts``);
    multiclass: k x k (rows the actual class, columns the argmax); the layout KFP's
    ClassificationMetrics expects."""
    if task == "binary":
        counts = confusion
        return {
            "threshold": DECISION_THRESHOLD,
            "labels": ["0", "1"],
            "matrix": [
                [counts["true_negatives"], counts["false_positives"]],
                [counts["false_negatives"], counts["true_positives"]],
            ],
            **counts,
        }
    if task == "multiclass":
        return {"labels": [str(c) for c in classes], "matrix": confusion}
    return None


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


def render_report(summary: dict) -> str:
    """A self-contained HTML page of one evaluation (``cauce.reports``' evaluation template)."""
    overall = []
    for name, value in summary["metrics"].items():
        bound = summary["thresholds"].get(name)
        required = "" if bound is None else " and ".join(
            f"{'≥' if key == 'lower_bound' else '≤'} {limit:g}" for key, limit in bound.items()
        )
        passed = None if bound is None else _passes(value, bound)
        overall.append({"name": name, "value": value, "required": required, "passed": passed})
    return reports.render("evaluation", summary=summary, overall=overall)


def _passes(value: float | None, bound: dict) -> bool:
    if value is None:
        return False
    return value >= bound.get("lower_bound", -math.inf) and value <= bound.get("upper_bound", math.inf)
