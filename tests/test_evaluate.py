"""The evaluate step: real TensorFlow Model Analysis runs on a small model; every
metric is checked against scikit-learn on the same predictions."""

import json
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cauce import data
from cauce import model as cauce_model
from cauce.artifacts import CauceError
from cauce.components.evaluate.executor import (
    EVALUATION_FILE,
    MISSING_SLICE_VALUE,
    REPORT_FILE,
    TFMA_DIR,
    run_evaluate,
)
from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC, generate_taxi_trips
from cauce.features import FittedTransform
from cauce.recipe import Recipe

ROWS = 3000
SLICE = "payment_type"
SLICE_WITH_NULLS = "company"
# Every metric is computed exactly (components/evaluate/metrics.py), with
# scikit-learn's definitions: agreement to the last few bits, whatever the scores.
EXACT = 1e-9


def sklearn_binary_metrics(labels, scores) -> dict:
    """What evaluate must report, computed by scikit-learn itself on the scores
    widened to float64 (as evaluate reads them: on float32 input scikit-learn
    would compute the log loss in float32, clipped at float32's eps)."""
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores > 0.5
    metrics = {
        "example_count": len(labels),
        "auc": roc_auc_score(labels, scores),
        "auc_precision_recall": average_precision_score(labels, scores),
        "binary_accuracy": accuracy_score(labels, predicted),
        # undefined (no predicted positive) is NaN here, None in evaluate's output
        "precision": precision_score(labels, predicted, zero_division=np.nan),
        "recall": recall_score(labels, predicted, zero_division=np.nan),
        "binary_crossentropy": log_loss(labels, scores),
    }
    return {name: None if np.isnan(value) else value for name, value in metrics.items()}


def build_model_bundle(directory: Path, train: pa.Table, coefficient_scale: float = 1.0) -> Path:
    """A cauce Model directory (scikit-learn logistic regression + fitted transform)."""
    fitted = FittedTransform.fit_table(Recipe.shorthand(DEMO_NUMERIC, DEMO_CATEGORICAL, 100, DEMO_LABEL), train, DEMO_LABEL)
    labels = train.column(DEMO_LABEL).to_numpy()
    estimator = LogisticRegression(max_iter=500).fit(fitted.transform_table(train), labels)
    estimator.coef_ *= coefficient_scale  # a large scale pushes the scores against 0 and 1
    estimator.intercept_ *= coefficient_scale
    directory.mkdir(parents=True)
    joblib.dump(estimator, directory / "model.joblib")
    fitted.save(directory)
    metadata = {
        "framework": "sklearn",
        "label": DEMO_LABEL,
        "task": "binary_classification",
        "features": fitted.input_features,
        "metrics": {},
    }
    (directory / "cauce_model.json").write_text(json.dumps(metadata))
    return directory


def write_dataset(directory: Path, eval_table: pa.Table) -> Path:
    """A raw cauce Dataset directory holding one split, ``eval``."""
    directory.mkdir(parents=True)
    rows = data.write_split(directory, "eval", eval_table)
    data.write_schema(directory, eval_table.schema, {"eval": rows})
    return directory


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """(model_dir, dataset_dir, eval_table): a model trained on one sample, evaluated on another."""
    root = tmp_path_factory.mktemp("evaluate")
    model_dir = build_model_bundle(root / "model", generate_taxi_trips(ROWS, seed=1))
    eval_table = generate_taxi_trips(ROWS, seed=2)
    return str(model_dir), str(write_dataset(root / "dataset", eval_table)), eval_table


@pytest.fixture(scope="module")
def labels_and_scores(bundle):
    """The eval labels and the model's scores for them, computed without TFMA."""
    model_dir, _, eval_table = bundle
    return eval_table.column(DEMO_LABEL).to_numpy(), cauce_model.load(model_dir).predict_scores(eval_table)


@pytest.fixture(scope="module")
def passed(bundle, tmp_path_factory):
    """(summary, output_dir) of an evaluation whose thresholds the model passes."""
    model_dir, dataset_dir, _ = bundle
    output_dir = tmp_path_factory.mktemp("passed") / "evaluation"
    summary = run_evaluate(
        model_dir,
        dataset_dir,
        output_dir,
        slice_features=[SLICE, SLICE_WITH_NULLS],
        thresholds={"auc": 0.6, "binary_accuracy": 0.55},
    )
    return summary, output_dir


def test_overall_metrics_match_sklearn_on_the_same_predictions(labels_and_scores, passed):
    summary, _ = passed
    labels, scores = labels_and_scores
    predicted = (scores > 0.5).astype(int)  # a score above the cut-off is a positive prediction
    metrics = summary["metrics"]

    assert metrics["example_count"] == ROWS
    assert metrics == pytest.approx(sklearn_binary_metrics(labels, scores), abs=EXACT)
    assert summary["confusion_matrix"]["matrix"] == confusion_matrix(labels, predicted).tolist()


def test_every_slice_value_gets_its_own_metrics(bundle, labels_and_scores, passed):
    _, _, eval_table = bundle
    summary, _ = passed
    labels, scores = labels_and_scores
    slice_values = eval_table.column(SLICE).to_numpy(zero_copy_only=False)
    slices = [entry for entry in summary["slices"] if entry["feature"] == SLICE]
    assert {entry["value"] for entry in slices} == set(slice_values)
    for entry in slices:
        in_slice = slice_values == entry["value"]
        assert entry["metrics"]["example_count"] == in_slice.sum()
        assert entry["metrics"]["binary_accuracy"] == accuracy_score(labels[in_slice], scores[in_slice] > 0.5)
        # AUC is undefined, not 0, for a slice holding one class only
        assert (entry["metrics"]["auc"] is None) == (len(set(labels[in_slice])) < 2)
        if entry["metrics"]["auc"] is not None:
            assert entry["metrics"]["auc"] == pytest.approx(roc_auc_score(labels[in_slice], scores[in_slice]), abs=EXACT)

    # rows without a value form their own slice instead of disappearing
    counts = {
        e["value"]: e["metrics"]["example_count"]
        for e in summary["slices"]
        if e["feature"] == SLICE_WITH_NULLS
    }
    assert counts[MISSING_SLICE_VALUE] == eval_table.column(SLICE_WITH_NULLS).null_count > 0
    assert sum(counts.values()) == ROWS


def test_passing_thresholds_bless_the_model(passed):
    summary, output_dir = passed
    assert summary["blessed"] is True and summary["reasons"] == []
    assert summary["thresholds"] == {"auc": {"lower_bound": 0.6}, "binary_accuracy": {"lower_bound": 0.55}}
    assert sorted(p.name for p in output_dir.iterdir()) == sorted([EVALUATION_FILE, REPORT_FILE, TFMA_DIR])
    assert (output_dir / TFMA_DIR / "eval_config.json").exists()


def test_evaluation_json_and_report(passed):
    summary, output_dir = passed

    def reject(constant):
        raise AssertionError(f"{constant} is not valid JSON")

    written = json.loads((output_dir / EVALUATION_FILE).read_text(), parse_constant=reject)
    assert written["blessed"] is True and written["metrics"] == summary["metrics"]
    roc = written["roc"]
    assert 50 <= len(roc["fpr"]) == len(roc["tpr"]) == len(roc["threshold"]) <= 200
    assert roc["fpr"] == sorted(roc["fpr"]) and roc["tpr"] == sorted(roc["tpr"])
    assert sum(bucket["count"] for bucket in written["calibration"]) == ROWS

    report = (output_dir / REPORT_FILE).read_text()
    assert report.index("Blessed") < report.index("Overall metrics")
    assert "<svg" in report and "Credit Card" in report
    assert "<script" not in report and "http://" not in report.replace("http://www.w3.org/2000/svg", "")


def test_impossible_threshold_is_not_blessed_and_says_why(bundle, tmp_path):
    model_dir, dataset_dir, _ = bundle
    summary = run_evaluate(model_dir, dataset_dir, tmp_path / "out", thresholds={"auc": 0.999})
    assert summary["blessed"] is False
    assert len(summary["reasons"]) == 1 and summary["reasons"][0].startswith("auc (overall)")
    assert "Not blessed: auc" in (tmp_path / "out" / REPORT_FILE).read_text()


def test_without_thresholds_nothing_is_blessed(bundle, tmp_path):
    model_dir, dataset_dir, _ = bundle
    summary = run_evaluate(model_dir, dataset_dir, tmp_path / "out")
    assert summary["blessed"] is False and summary["reasons"][0].startswith("no thresholds were set")
    assert summary["metrics"]["auc"] > 0.6


def _without_label(table):
    return table.drop_columns([DEMO_LABEL])


def _with_label(values):
    def replace(table):
        column = pa.array(np.resize(values, table.num_rows), pa.int64())
        return table.set_column(table.column_names.index(DEMO_LABEL), DEMO_LABEL, column)

    return replace


@pytest.mark.parametrize(
    ("make_table", "options", "message"),
    [
        (_without_label, {}, r"label column 'tipped_well' .* not found in split 'eval'; columns present"),
        (
            lambda t: t,
            {"slice_features": ["borough"]},
            r"slice feature\(s\) \['borough'\] not found .* columns present",
        ),
        (lambda t: t.slice(0, 0), {}, r"split 'eval' is empty"),
        (lambda t: t, {"thresholds": {"f1": 0.5}}, r"unknown metric 'f1' for a binary model; valid metric names: \['auc', "),
        (lambda t: t, {"thresholds": {"auc": "high"}}, r"thresholds\['auc'\] lower_bound must be a number"),
        (_with_label([0, 1, 2]), {}, r"label column 'tipped_well' is not binary: it holds \[2.0\]"),
        (_with_label([1]), {}, r"holds only the class 1"),
    ],
    ids=[
        "label-missing",
        "slice-missing",
        "empty-split",
        "unknown-metric",
        "bad-bound",
        "not-binary",
        "one-class",
    ],
)
def test_bad_input_fails_clearly_and_leaves_nothing(bundle, tmp_path, make_table, options, message):
    model_dir, _, eval_table = bundle
    dataset_dir = write_dataset(tmp_path / "dataset", make_table(eval_table))
    with pytest.raises(CauceError, match=message):
        run_evaluate(model_dir, dataset_dir, tmp_path / "out", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_component_compiles_and_runs_under_kfp_local(bundle, kfp_local, tmp_path):
    from kfp import compiler, dsl

    from cauce.components.evaluate.component import evaluate

    model_dir, dataset_dir, _ = bundle

    @dsl.pipeline(name="evaluate-test")
    def evaluate_pipeline() -> bool:
        model = dsl.importer(artifact_uri=model_dir, artifact_class=dsl.Model)
        dataset = dsl.importer(artifact_uri=dataset_dir, artifact_class=dsl.Dataset)
        task = evaluate(model=model.output, dataset=dataset.output, slice_features=[SLICE])
        return task.outputs["Output"]

    compiler.Compiler().compile(evaluate_pipeline, str(tmp_path / "pipeline.yaml"))
    assert evaluate_pipeline().output is True

    (task_dir,) = kfp_local.glob("*/evaluate")
    assert "Blessed" in (task_dir / "report").read_text()
    outputs = json.loads((task_dir / "executor_output.json").read_text())
    assert outputs["parameterValues"]["Output"] is True
    logged = {name: entry["artifacts"][0]["metadata"] for name, entry in outputs["artifacts"].items()}
    assert logged["metrics"]["auc"] > 0.6
    assert len(logged["classification_metrics"]["confidenceMetrics"]) > 50
    assert len(logged["classification_metrics"]["confusionMatrix"]["rows"]) == 2


# ---- challenger vs champion ---------------------------------------------------


@pytest.fixture(scope="module")
def weak_model(tmp_path_factory):
    """A deliberately worse model: trained on 150 rows of another sample."""
    return str(build_model_bundle(tmp_path_factory.mktemp("weak") / "model", generate_taxi_trips(150, seed=9)))


def test_a_better_challenger_beats_the_champion_on_every_slice(bundle, weak_model, labels_and_scores, tmp_path):
    model_dir, dataset_dir, eval_table = bundle
    summary = run_evaluate(
        model_dir, dataset_dir, tmp_path / "out", slice_features=[SLICE],
        # A negative margin tolerates a small regression: the smallest slices
        # (Prcard, ~150 rows) carry almost no signal for either model.
        thresholds={"auc": 0.6}, champion_model_dir=weak_model, change_thresholds={"auc": -0.15},
    )
    assert summary["blessed"] is True, summary["reasons"]
    assert summary["metrics"]["auc"] > summary["champion"]["metrics"]["auc"]
    comparisons = summary["champion"]["comparisons"]
    assert {c["where"] for c in comparisons} == {"overall"} | {f"slice {SLICE}={s['value']}" for s in summary["slices"]}
    # The champion's numbers are exact too, on the same rows.
    labels, _ = labels_and_scores
    champion_scores = cauce_model.load(weak_model).predict_scores(eval_table)
    assert summary["champion"]["metrics"] == pytest.approx(sklearn_binary_metrics(labels, champion_scores), abs=EXACT)
    assert "Challenger vs champion" in (tmp_path / "out" / "report.html").read_text()


def test_a_worse_challenger_is_not_blessed_and_says_where(bundle, weak_model, tmp_path):
    model_dir, dataset_dir, _ = bundle
    summary = run_evaluate(
        weak_model, dataset_dir, tmp_path / "out", slice_features=[SLICE],
        thresholds={"auc": 0.5}, champion_model_dir=model_dir, change_thresholds={"auc": 0.0, "binary_crossentropy": 0.0},
    )
    assert summary["blessed"] is False
    assert any(r.startswith("auc (overall)") and "vs champion" in r for r in summary["reasons"])
    assert any(r.startswith("binary_crossentropy (overall)") and "lower" in r for r in summary["reasons"])


def test_a_margin_is_required_not_just_a_tie(bundle, tmp_path):
    model_dir, dataset_dir, _ = bundle
    tie = run_evaluate(model_dir, dataset_dir, tmp_path / "tie", thresholds={"auc": 0.6},
                       champion_model_dir=model_dir, change_thresholds={"auc": 0.0})
    assert tie["blessed"] is True
    margin = run_evaluate(model_dir, dataset_dir, tmp_path / "margin", thresholds={"auc": 0.6},
                          champion_model_dir=model_dir, change_thresholds={"auc": 0.01})
    assert margin["blessed"] is False and "at least 0.01" in margin["reasons"][0]


def test_bad_change_thresholds_fail_clearly(bundle, tmp_path):
    model_dir, dataset_dir, _ = bundle
    with pytest.raises(CauceError, match="change_thresholds: unknown metric 'f1'"):
        run_evaluate(model_dir, dataset_dir, tmp_path / "out", thresholds={"auc": 0.6},
                     champion_model_dir=model_dir, change_thresholds={"f1": 0.1})
    assert not (tmp_path / "out").exists()


# ---- saturated scores: the metrics stay exact ------------------------------------


def test_scores_within_1e_6_of_0_and_1_keep_every_metric_exact(bundle, tmp_path):
    """TFMA's histogram AUC cannot rank scores inside one 1e-4 bucket; ours is
    scikit-learn's on the same scores, overall and per slice."""
    _, dataset_dir, eval_table = bundle
    saturated = str(build_model_bundle(tmp_path / "model", generate_taxi_trips(ROWS, seed=1), coefficient_scale=40.0))
    labels = eval_table.column(DEMO_LABEL).to_numpy()
    scores = cauce_model.load(saturated).predict_scores(eval_table)
    extreme = (scores < 1e-6) | (scores > 1 - 1e-6)
    assert extreme.mean() > 0.5 and len(np.unique(scores[extreme])) > 100  # crowded, but still ranked

    summary = run_evaluate(saturated, dataset_dir, tmp_path / "out", slice_features=[SLICE], thresholds={"auc": 0.5})
    assert summary["metrics"] == pytest.approx(sklearn_binary_metrics(labels, scores), abs=1e-6)
    slice_values = eval_table.column(SLICE).to_numpy(zero_copy_only=False)
    for entry in summary["slices"]:
        rows = slice_values == entry["value"]
        if len(set(labels[rows])) == 2:
            assert entry["metrics"] == pytest.approx(sklearn_binary_metrics(labels[rows], scores[rows]), abs=1e-6)


# ---- speed: weighted aggregation keeps TFMA's plots ------------------------------


def test_aggregated_examples_give_tfma_the_same_plots(tmp_path):
    """TFMA on one weighted example per (label, slice, histogram bucket) draws the
    same ROC points and calibration counts as TFMA on every row."""
    from cauce.components.evaluate.executor import PREDICTION_KEY, WEIGHT_KEY, _run_tfma, aggregate_for_tfma

    rng = np.random.default_rng(4)
    rows = 6000
    labels = rng.integers(0, 2, rows)
    scores = 1 / (1 + np.exp(-(1.6 * labels - 0.8 + rng.normal(0, 1, rows))))
    # Scores on and next to every kind of edge: the plots' cuts (multiples of 1/100
    # and 1/10, 0 and 1) and TFMA's histogram buckets (multiples of 1/10 000).
    edges = np.r_[0.0, 1.0, np.arange(101) / 100, np.arange(0, 10001, 37) / 10000]
    scores[: 3 * len(edges)] = np.r_[edges, np.nextafter(edges, 1.0), np.nextafter(edges, 0.0)].clip(0, 1)
    table = pa.table({
        DEMO_LABEL: pa.array(labels),
        PREDICTION_KEY: pa.array(scores),
        SLICE: pa.array(np.array(["Cash", "Credit Card", "Mobile"])[rng.integers(0, 3, rows)]),
    })
    aggregated = aggregate_for_tfma(table, [DEMO_LABEL, SLICE])
    assert aggregated.num_rows < rows // 2
    assert aggregated.column(WEIGHT_KEY).to_numpy().sum() == rows
    plain = table.append_column(WEIGHT_KEY, pa.array(np.ones(rows)))

    ours = _run_tfma(aggregated, DEMO_LABEL, [(SLICE,)], tmp_path / "aggregated")
    theirs = _run_tfma(plain, DEMO_LABEL, [(SLICE,)], tmp_path / "plain")
    assert ours["roc"] == theirs["roc"] and ours["example_counts"] == theirs["example_counts"]
    for mine, reference in zip(ours["calibration"], theirs["calibration"], strict=True):
        assert mine == pytest.approx(reference, rel=1e-12)
    assert theirs["example_counts"][None] == rows


def test_slice_crosses_and_per_slice_thresholds(bundle, tmp_path):
    model_dir, dataset_dir, eval_table = bundle
    summary = run_evaluate(
        model_dir, dataset_dir, tmp_path / "out", slice_features=[SLICE, f"{SLICE},pickup_hour"],
        thresholds={"auc": 0.6}, slice_thresholds={"example_count": 1_000_000},
    )
    crosses = [s for s in summary["slices"] if s["feature"] == f"{SLICE},pickup_hour"]
    expected = {f"{p},{h}" for p, h in zip(eval_table.column(SLICE).to_pylist(), eval_table.column("pickup_hour").to_pylist())}
    assert {s["value"] for s in crosses} == expected
    assert sum(s["metrics"]["example_count"] for s in crosses) == eval_table.num_rows
    # Every slice fails the (impossible) per-slice bound; the overall slice is not bound by it.
    assert summary["blessed"] is False
    assert all(r.startswith("example_count (slice ") for r in summary["reasons"])
    assert len(summary["reasons"]) == len(summary["slices"])


# ---- multiclass and regression models ------------------------------------------


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_other_tasks_are_evaluated_with_their_own_tfma_metrics(task, tmp_path):
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    from cauce.components.train.executor import run_train
    from tests.test_train_neural import _synthetic

    transformed, transform_dir, eval_table = _synthetic(tmp_path / "data", task)
    params = {"model_type": "logistic_regression"} if task == "multiclass" else {"model_type": "ridge"}
    run_train(transformed, transform_dir, str(tmp_path / "model"), params, task=task)
    thresholds = {"sparse_categorical_accuracy": 0.5} if task == "multiclass" else {"mean_absolute_error": {"upper_bound": 100}}
    # The transformed splits are raw here too (identity transform): evaluate reads "eval".
    summary = run_evaluate(tmp_path / "model", transformed, tmp_path / "out", thresholds=thresholds)

    loaded = cauce_model.load(tmp_path / "model")
    outputs = loaded.predict_scores(eval_table)
    truth = eval_table.column("target").to_pylist()
    assert summary["blessed"] is True and summary["task"] == task
    if task == "multiclass":
        expected = [loaded.classes.index(value) for value in truth]
        assert summary["metrics"]["sparse_categorical_accuracy"] == pytest.approx(
            accuracy_score(expected, outputs.argmax(axis=1)), abs=1e-6
        )
        assert summary["metrics"]["sparse_categorical_crossentropy"] == pytest.approx(
            log_loss(expected, outputs, labels=list(range(len(loaded.classes)))), rel=1e-5
        )
        matrix = np.array(summary["confusion_matrix"]["matrix"])
        np.testing.assert_array_equal(matrix, confusion_matrix(expected, outputs.argmax(axis=1)))
        assert summary["roc"] is None
    else:
        assert summary["metrics"]["mean_squared_error"] == pytest.approx(mean_squared_error(truth, outputs), rel=1e-6)
        assert summary["metrics"]["mean_absolute_error"] == pytest.approx(mean_absolute_error(truth, outputs), rel=1e-6)
        assert summary["metrics"]["root_mean_squared_error"] == pytest.approx(np.sqrt(mean_squared_error(truth, outputs)), rel=1e-6)
        assert summary["confusion_matrix"] is None
    assert "<svg" not in (tmp_path / "out" / "report.html").read_text()  # no ROC for these tasks
    with pytest.raises(CauceError, match=f"unknown metric 'auc' for a {task} model"):
        run_evaluate(tmp_path / "model", transformed, tmp_path / "bad", thresholds={"auc": 0.5})
