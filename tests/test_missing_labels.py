"""Rows without a label, one rule everywhere (cauce.data.missing_label_mask: null, or NaN
in a float column): validate counts them in every split (an anomaly above
max_missing_label_fraction), transform, train and evaluate leave out the same rows,
batch prediction scores them and counts them, preflight says so before any work."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import mean_squared_error

from cauce import data
from cauce import model as cauce_model
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.evaluate.executor import run_evaluate
from cauce.components.train.executor import run_train
from cauce.components.validate.executor import run_validate

ROWS = 400
FEATURES = ["a", "b"]


def _table(rows: int, missing_every: int, seed: int) -> pa.Table:
    """Regression rows; the label is null on every ``missing_every``-th row and NaN on the next one."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    y = 3.0 * x[:, 0] - 2.0 * x[:, 1] + rng.normal(0, 0.1, rows)
    mask = np.zeros(rows, bool)
    if missing_every:
        y[1::missing_every] = np.nan  # NaN is missing
        mask[::missing_every] = True  # and so is null
    return pa.table({
        "id": pa.array(np.arange(rows) + seed * 10_000),
        "a": pa.array(x[:, 0]),
        "b": pa.array(x[:, 1]),
        "y": pa.array(y, pa.float64(), mask=mask),
    })  # fmt: skip


def _dataset(directory, **splits: pa.Table) -> str:
    with atomic_dir(directory) as out:
        rows = {name: data.write_split(out, name, table) for name, table in splits.items()}
        data.write_schema(out, next(iter(splits.values())).schema, rows)
    return str(directory)


def _validate(tmp_path, dataset: str, **options):
    out = tmp_path / "validation"
    return run_validate(
        dataset, str(out / "statistics"), str(out / "schema"), str(out / "anomalies"), str(out / "page.html"),
        label="y", **options,
    )  # fmt: skip


def test_the_rule_null_and_nan_are_missing_nothing_else():
    column = pa.array([1.0, None, float("nan"), 0.0, -1.0])
    assert data.missing_label_mask(column).to_pylist() == [False, True, True, False, False]
    strings = pa.table({"y": pa.array(["a", None, "", "nan"])})
    assert data.drop_missing_labels(strings, "y")[1] == 1  # "" and "nan" are values
    assert data.drop_missing_labels(strings, "absent") == (strings, 0)


def test_validate_counts_every_split_and_flags_only_above_the_fraction(tmp_path):
    # train: none missing (so an inferred schema would require the label); eval: 4 of 40 (10 %).
    dataset = _dataset(tmp_path / "raw", train=_table(ROWS, 0, 1), eval=_table(40, 20, 2))
    result = _validate(tmp_path, dataset)
    assert result.missing_labels == {"eval": 4, "train": 0}  # every 20th null + every 20th NaN
    assert result.anomalies_found == 0  # 10 % allowed by default: the label is not "required" by the schema

    with pytest.raises(CauceError, match=r"(?s)eval/y: too_many_missing.*missing in 4 of 40 examples \(10.00%\)"):
        _validate(tmp_path / "strict", dataset, max_missing_label_fraction=0.05)
    warned = _validate(tmp_path / "warn", dataset, max_missing_label_fraction=0.05, on_anomaly="warn")
    assert [a.kind_name for a in warned.anomalies["eval"]] == ["too_many_missing"]
    assert warned.summary()["missing_labels"] == {"eval": 4, "train": 0}


def test_validate_checks_the_schema_split_too(tmp_path):
    dataset = _dataset(tmp_path / "raw", train=_table(ROWS, 4, 1), eval=_table(40, 0, 2))  # train: 50 % missing
    result = _validate(tmp_path, dataset, on_anomaly="warn")
    assert result.missing_labels["train"] == 200
    assert [a.feature for a in result.anomalies["train"]] == ["y"]
    with pytest.raises(CauceError, match="max_missing_label_fraction must be a number in"):
        _validate(tmp_path / "bad", dataset, max_missing_label_fraction=2)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """Raw == encoded (identity z-score): train and evaluate read the same splits, with
    missing labels in both, and the same splits without those rows."""
    from cauce.features import FittedTransform

    root = tmp_path_factory.mktemp("missing")
    train, evaluation = _table(ROWS, 10, 1), _table(120, 10, 2)
    with_missing = _dataset(root / "with", train=train, eval=evaluation)
    without = _dataset(
        root / "without", train=data.drop_missing_labels(train, "y")[0], eval=data.drop_missing_labels(evaluation, "y")[0]
    )
    fitted = FittedTransform(
        label="y", numeric=[{"name": n, "mean": 0.0, "std": 1.0, "min": -9.0, "max": 9.0} for n in FEATURES], categorical=[]
    )
    (root / "transform").mkdir()
    fitted.save(root / "transform")
    return root, with_missing, without, str(root / "transform"), evaluation


def test_train_leaves_out_the_rows_and_trains_the_same_model(regression):
    root, with_missing, without, transform_dir, _ = regression
    left_out = run_train(with_missing, transform_dir, str(root / "m1"), {"model_type": "ridge"}, task="regression")
    reference = run_train(without, transform_dir, str(root / "m2"), {"model_type": "ridge"}, task="regression")
    assert left_out.metadata["rows_missing_label"] == {"train": 80, "eval": 24}
    assert left_out.metadata["train_rows"] == ROWS - 80 == reference.metadata["train_rows"]
    assert left_out.metrics["eval_rmse"] == pytest.approx(reference.metrics["eval_rmse"], rel=1e-6)  # float32 order of sums


def test_evaluate_leaves_out_the_same_rows_instead_of_failing(regression, tmp_path):
    root, with_missing, _, _, evaluation = regression
    summary = run_evaluate(
        root / "m1", with_missing, tmp_path / "out", thresholds={"root_mean_squared_error": {"upper_bound": 1.0}}
    )
    labelled, missing = data.drop_missing_labels(evaluation, "y")
    truth = labelled.column("y").to_numpy()
    predicted = cauce_model.load(root / "m1").predict_scores(labelled)
    assert (summary["rows"], summary["rows_missing_label"]) == (96, missing) == (96, 24)
    assert summary["metrics"]["example_count"] == 96
    assert summary["metrics"]["root_mean_squared_error"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)), rel=1e-6)
    assert summary["blessed"] is True


def test_batch_prediction_scores_every_row_and_counts_the_unlabelled(regression, tmp_path):
    from cauce.components.batch_predict.executor import run_batch_predict

    root, with_missing, _, _, _ = regression
    result = run_batch_predict(
        str(root / "m1"), str(tmp_path / "predictions"), "id", input_dataset_dir=with_missing, input_split="eval"
    )
    assert (result["rows"], result["rows_missing_label"]) == (120, 24)


def test_preflight_refuses_too_many_missing_labels_under_the_fail_policy(tmp_path):
    from cauce import load
    from cauce.components.preflight.executor import run_preflight

    lines = "".join(f"{i},{i * 0.5},{'' if i % 4 == 0 else i * 1.5}\n" for i in range(100))  # 25 % missing
    (tmp_path / "d.csv").write_text("id,x,value\n" + lines)
    database = tmp_path / "local.duckdb"
    load.load(database, "mine.t", [str(tmp_path / "d.csv")])
    values = dict(source="mine.t", key_column="id", label="value", task="regression", local_database=str(database))
    with pytest.raises(CauceError, match=r"missing in 25 of 100 rows \(25.0%\), above max_missing_label_fraction \(10.0%\)"):
        run_preflight(**values, check_port=False)
    warned = run_preflight(**values, check_port=False, validation_policy="warn")
    assert any("25 of 100 rows have no label" in note for note in warned.notes)
    assert run_preflight(**values, check_port=False, max_missing_label_fraction=0.3).label_counts["missing_label"] == 25


def test_preflight_says_when_the_task_has_no_default_bound(tmp_path):
    from cauce import load
    from cauce.components.preflight.executor import run_preflight

    (tmp_path / "d.csv").write_text("id,x,value\n" + "".join(f"{i},{i * 0.5},{i * 1.5}\n" for i in range(20)))
    load.load(tmp_path / "local.duckdb", "mine.t", [str(tmp_path / "d.csv")])
    values = dict(source="mine.t", key_column="id", label="value", local_database=str(tmp_path / "local.duckdb"))
    notes = run_preflight(**values, task="regression", check_port=False).notes
    assert any("no thresholds: a regression task has no default bound" in note for note in notes)
    bounded = run_preflight(**values, task="regression", check_port=False, thresholds={"mean_absolute_error": {"upper_bound": 9}})
    assert not any("no thresholds" in note for note in bounded.notes)
