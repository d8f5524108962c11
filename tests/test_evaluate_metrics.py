"""evaluate's exact metrics (components/evaluate/metrics.py) against scikit-learn's
functions on the same scores, for score distributions TFMA's histogram misreads."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cauce.components.evaluate import metrics


def _sklearn(labels, scores):
    predicted = scores > 0.5
    return {
        "example_count": len(labels),
        "auc": roc_auc_score(labels, scores),
        "auc_precision_recall": average_precision_score(labels, scores),
        "binary_accuracy": accuracy_score(labels, predicted),
        "precision": precision_score(labels, predicted, zero_division=np.nan),
        "recall": recall_score(labels, predicted, zero_division=np.nan),
        "binary_crossentropy": log_loss(labels, scores),
    }


def _distribution(kind: str, rng, n: int):
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes, whatever the draw
    signal = 2.0 * labels - 1.0 + rng.normal(0, 1.2, n)
    if kind == "ordinary":
        scores = 1 / (1 + np.exp(-signal))
    elif kind == "saturated":  # every score within 1e-6 of 0 or 1, all distinct
        scores = np.where(signal > 0, 1 - 1e-6 * rng.random(n), 1e-6 * rng.random(n))
        wrong = rng.random(n) < 0.1  # confident errors
        scores[wrong] = 1 - scores[wrong]
    elif kind == "exact-0-and-1":  # the clipping of the log loss matters
        scores = np.where(rng.random(n) < 0.5, 0.0, 1.0)
        scores[: n // 4] = 1e-300
    elif kind == "ties":  # a handful of distinct values, as a small tree gives
        scores = np.round(1 / (1 + np.exp(-signal)), 1)
    else:  # scores exactly on the cut-off
        scores = np.full(n, 0.5)
        scores[::3] = 0.75
    return labels, scores


@pytest.mark.parametrize("kind", ["ordinary", "saturated", "exact-0-and-1", "ties", "on-the-cut-off"])
@pytest.mark.parametrize("n", [7, 2000])
def test_binary_metrics_equal_sklearns(kind, n):
    labels, scores = _distribution(kind, np.random.default_rng(n), n)
    ours = metrics.binary_metrics(labels, scores)
    theirs = {k: None if np.isnan(v) else v for k, v in _sklearn(labels, scores).items()}
    assert ours == pytest.approx(theirs, abs=1e-9), kind


def test_saturated_scores_keep_the_exact_auc_where_a_histogram_cannot():
    """Every score inside the top and bottom 1e-4 buckets: a 10 000-bucket
    histogram sees two values; the exact AUC still ranks them."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 5000)
    scores = np.where(labels == 1, 1 - 1e-6 * rng.random(5000) ** 2, 1 - 1e-6 * rng.random(5000))
    exact = metrics.binary_metrics(labels, scores)["auc"]
    assert exact == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert abs(exact - 0.5) > 0.1  # a bucketed AUC would read 0.5 here


def test_one_class_and_no_positive_prediction_are_undefined_not_zero():
    ours = metrics.binary_metrics(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
    assert ours["auc"] is None and ours["precision"] is None
    assert ours["recall"] == 0.0 and ours["auc_precision_recall"] == 1.0
    ours = metrics.binary_metrics(np.array([0, 0]), np.array([0.7, 0.2]))
    assert ours["auc"] is None and ours["recall"] is None and ours["auc_precision_recall"] is None
    assert ours["precision"] == 0.0


def test_confusion_counts_use_the_accuracy_rule():
    labels, scores = np.array([0, 1, 1, 0, 1]), np.array([0.5, 0.5, 0.9, 0.7, 0.1])
    counts = metrics.confusion_counts(labels, scores)
    assert counts == {"true_negatives": 1, "false_positives": 1, "false_negatives": 2, "true_positives": 1}
    assert (counts["true_negatives"] + counts["true_positives"]) / 5 == metrics.binary_metrics(labels, scores)["binary_accuracy"]


def test_multiclass_and_regression_metrics_equal_sklearns():
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 3, (500, 4))
    logits[:50] *= 40  # saturated rows: probabilities within 1e-6 of 0 and 1
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    ours = metrics.multiclass_metrics(labels, probabilities)
    assert ours["sparse_categorical_accuracy"] == accuracy_score(labels, probabilities.argmax(axis=1))
    assert ours["sparse_categorical_crossentropy"] == pytest.approx(
        log_loss(labels, probabilities, labels=[0, 1, 2, 3]), abs=1e-9
    )
    truth, values = rng.normal(50, 10, 300), rng.normal(50, 10, 300)
    ours = metrics.regression_metrics(truth, values)
    assert ours["mean_squared_error"] == pytest.approx(mean_squared_error(truth, values), abs=1e-9)
    assert ours["mean_absolute_error"] == pytest.approx(mean_absolute_error(truth, values), abs=1e-9)
    assert ours["root_mean_squared_error"] == pytest.approx(np.sqrt(mean_squared_error(truth, values)), abs=1e-9)


def test_slices_and_crosses_group_every_row_once():
    rng = np.random.default_rng(8)
    n = 3000
    labels, scores = _distribution("ordinary", rng, n)
    payment = np.array(["Cash", "Card", "<missing>"], dtype=object)[rng.integers(0, 3, n)]
    hour = np.array([str(h) for h in rng.integers(0, 24, n)], dtype=object)
    overall, slices = metrics.sliced_metrics(
        "binary", labels, scores, {"payment": payment, "hour": hour}, [("payment",), ("payment", "hour")]
    )
    assert overall["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert [(s["feature"], s["value"]) for s in slices] == sorted((s["feature"], s["value"]) for s in slices)
    crosses = [s for s in slices if s["feature"] == "payment,hour"]
    assert sum(s["metrics"]["example_count"] for s in crosses) == n
    for entry in crosses[:10]:
        p, h = entry["value"].split(",")
        rows = (payment == p) & (hour == h)
        assert entry["metrics"]["example_count"] == rows.sum()
        assert entry["metrics"]["binary_accuracy"] == accuracy_score(labels[rows], scores[rows] > 0.5)
