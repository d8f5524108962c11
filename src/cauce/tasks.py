"""What each task means to a run: its metric names and its default promotion gate.

One table that the pipeline's preflight, ``cauce run --help``, the run summary and
docs read. ``evaluate`` computes exactly these metrics (tests hold the two lists
equal); ``thresholds`` and ``change_thresholds`` name them.

Defaults when a run leaves ``thresholds`` / ``change_thresholds`` empty:

* binary: the model must rank better than chance (``auc`` >= 0.5) and, when a
  champion serves, reach at least its ``auc``;
* multiclass: no absolute bound (chance depends on the number of classes: set one,
  e.g. ``{"sparse_categorical_accuracy": 0.8}``); at least the champion's accuracy;
* regression: no absolute bound (errors are in the label's units: set one, e.g.
  ``{"root_mean_squared_error": {"upper_bound": 12.5}}``); an RMSE no higher than
  the champion's.
"""

from __future__ import annotations

TASKS = ("binary", "multiclass", "regression")

METRICS = {
    "binary": (
        "auc", "auc_precision_recall", "binary_accuracy", "precision", "recall", "binary_crossentropy", "example_count",
    ),
    "multiclass": ("sparse_categorical_accuracy", "sparse_categorical_crossentropy", "example_count"),
    "regression": ("root_mean_squared_error", "mean_squared_error", "mean_absolute_error", "example_count"),
}  # fmt: skip
LOWER_IS_BETTER = {
    "binary_crossentropy", "sparse_categorical_crossentropy", "mean_squared_error", "mean_absolute_error",
    "root_mean_squared_error",
}  # fmt: skip
DEFAULT_THRESHOLDS = {"binary": {"auc": 0.5}, "multiclass": {}, "regression": {}}
# What a run without a default bound can set (docs, --help and preflight's note).
EXAMPLE_THRESHOLDS = {
    "binary": {"auc": 0.7},
    "multiclass": {"sparse_categorical_accuracy": 0.8},
    "regression": {"root_mean_squared_error": {"upper_bound": 12.5}},
}
DEFAULT_CHANGE_THRESHOLDS = {
    "binary": {"auc": 0.0},
    "multiclass": {"sparse_categorical_accuracy": 0.0},
    "regression": {"root_mean_squared_error": 0.0},
}
# The metrics a run summary shows first, per task (what people read a model by).
HEADLINE_METRICS = {
    "binary": ("auc", "binary_accuracy", "binary_crossentropy"),
    "multiclass": ("sparse_categorical_accuracy", "sparse_categorical_crossentropy"),
    "regression": ("root_mean_squared_error", "mean_absolute_error"),
}
# The train step's own eval metrics (components/train: the same data, scikit-learn's
# definitions), shown by the summary per task.
TRAIN_METRICS = {
    "binary": ("eval_auc", "eval_accuracy", "eval_log_loss"),
    "multiclass": ("eval_accuracy", "eval_log_loss", "eval_auc"),
    "regression": ("eval_rmse", "eval_mae", "eval_r2"),
}


def thresholds_for(task: str, thresholds: dict | None) -> dict:
    """The run's absolute thresholds: the given ones, or the task's defaults when empty."""
    return dict(thresholds) if thresholds else dict(DEFAULT_THRESHOLDS.get(task, {}))


def change_thresholds_for(task: str, change_thresholds: dict | None) -> dict:
    """The run's champion margins: the given ones, or the task's defaults when empty."""
    return dict(change_thresholds) if change_thresholds else dict(DEFAULT_CHANGE_THRESHOLDS.get(task, {}))


def describe() -> str:
    """One line per task: its metric names and default gate (for --help and docs)."""
    lines = []
    for task in TASKS:
        lines.append(
            f"{task}: metrics {', '.join(METRICS[task])}; default thresholds {DEFAULT_THRESHOLDS[task] or 'none'}, "
            f"change_thresholds {DEFAULT_CHANGE_THRESHOLDS[task]}"
        )
    return "\n".join(lines)
