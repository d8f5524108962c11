"""The Beam transform on the real DirectRunner."""

import pyarrow as pa
import pytest

from cauce import data
from cauce.artifacts import CauceError, atomic_dir
from cauce.components.transform.executor import run_transform
from cauce.features import FittedTransform


def test_transform_encodes_every_split(trained_model):
    raw, transformed, transform_dir, _ = trained_model
    fitted = FittedTransform.load(transform_dir)
    schema = data.read_schema(transformed)
    assert schema["splits"] == {"train": 3000, "eval": 1000}
    assert schema["feature_names"] == fitted.feature_names
    eval_encoded = data.read_split(transformed, "eval")
    # Beam's output equals the in-process apply of the same fitted transform.
    import numpy as np

    expected = fitted.transform_table(data.read_split(raw, "eval"))
    got = np.column_stack([eval_encoded.column(n).to_numpy() for n in fitted.feature_names])
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected, axis=0))
    assert fitted.rows_analyzed == 3000  # fitted on train only


def _write(directory, tables: dict):
    with atomic_dir(directory) as out:
        rows = {split: data.write_split(out, split, table) for split, table in tables.items()}
        data.write_schema(out, next(iter(tables.values())).schema, rows)
    return str(directory)


def _small(n=50, **overrides):
    columns = {
        "x": pa.array([float(i) for i in range(n)]),
        "c": pa.array(["a", "b"] * (n // 2)),
        "y": pa.array([i % 2 for i in range(n)]),
    }
    columns.update(overrides)
    return pa.table(columns)


def test_rows_without_label_are_left_out_of_the_fit_and_the_output(tmp_path):
    labels = pa.array([None if i < 5 else i % 2 for i in range(50)], pa.int64())
    raw = _write(tmp_path / "raw", {"train": _small(y=labels), "eval": _small()})
    result = run_transform(raw, "y", ["x"], ["c"], str(tmp_path / "out"), str(tmp_path / "fn"))
    assert result.split_rows == {"eval": 50, "train": 45}
    assert result.dropped_rows == {"eval": 0, "train": 5}
    # The z-score is fitted on the 45 labelled rows (x = 5..49) only: what training sees.
    fitted = FittedTransform.load(str(tmp_path / "fn"))
    assert fitted.rows_analyzed == 45
    encoded = data.read_split(tmp_path / "out", "train").column(fitted.feature_names[0]).to_numpy()
    assert abs(float(encoded.mean())) < 1e-6


def test_a_nan_label_is_missing_like_a_null_one(tmp_path):
    labels = pa.array([float("nan") if i < 3 else None if i < 6 else float(i) for i in range(50)])
    raw = _write(tmp_path / "raw", {"train": _small(y=labels)})
    result = run_transform(raw, "y", ["x"], [], str(tmp_path / "out"), str(tmp_path / "fn"), task="regression")
    assert result.dropped_rows == {"train": 6}
    assert data.count_missing_labels(raw, "train", "y") == 6


@pytest.mark.parametrize(
    ("label", "numeric", "tables", "message"),
    [
        ("nope", ["x"], {"train": _small()}, "label column 'nope' not found"),
        ("y", ["x", "ghost"], {"train": _small()}, r"feature column\(s\) \['ghost'\] not found"),
        ("y", ["x"], {"eval": _small()}, "analyze split 'train' not found"),
        ("y", ["c"], {"train": _small()}, "numeric feature 'c' holds a non-numeric value 'a'"),
        ("y", ["x"], {"train": _small(y=pa.array([2] * 50))}, "label column 'y' must be binary 0/1"),
        ("y", ["x"], {"train": _small().slice(0, 0)}, "is empty"),
    ],
)
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, label, numeric, tables, message):
    raw = _write(tmp_path / "raw", tables)
    out = tmp_path / "outputs"
    out.mkdir()
    with pytest.raises(CauceError, match=message):
        run_transform(raw, label, numeric, [], str(out / "transformed"), str(out / "transform"))
    assert list(out.iterdir()) == []  # no partial artifact, no staging file


def test_multiclass_and_regression_labels_pass_through_by_task(tmp_path):
    classes = pa.array(["bike", "car", None, "walk"] * 10)
    values = pa.array([1.5, None, 3.25, 10.0] * 10)
    raw = _write(tmp_path / "raw", {"train": _small(40, y=classes), "eval": _small(40, y=classes)})
    result = run_transform(raw, "y", ["x"], ["c"], str(tmp_path / "mc"), str(tmp_path / "mc-fn"), task="multiclass")
    assert result.dropped_rows == {"eval": 10, "train": 10}
    assert sorted(set(data.read_split(tmp_path / "mc", "train").column("y").to_pylist())) == ["bike", "car", "walk"]

    raw = _write(tmp_path / "raw2", {"train": _small(40, y=values)})
    run_transform(raw, "y", ["x"], ["c"], str(tmp_path / "rg"), str(tmp_path / "rg-fn"), task="regression")
    label = data.read_split(tmp_path / "rg", "train").column("y")
    assert label.type == pa.float64() and sorted(set(label.to_pylist())) == [1.5, 3.25, 10.0]

    with pytest.raises(CauceError, match="use task 'multiclass' or 'regression'"):
        run_transform(raw, "y", ["x"], ["c"], str(tmp_path / "bin"), str(tmp_path / "bin-fn"))
    with pytest.raises(CauceError, match="task 'ranking' is not supported"):
        run_transform(raw, "y", ["x"], ["c"], str(tmp_path / "r"), str(tmp_path / "r-fn"), task="ranking")


def test_recipe_errors_come_before_any_beam_job(tmp_path):
    raw = _write(tmp_path / "raw", {"train": _small()})
    out = tmp_path / "outputs"
    out.mkdir()
    recipe = {"steps": [{"type": "derive", "name": "x2", "expression": "x * ghost"}, {"type": "zscore", "columns": ["x2"]}]}
    with pytest.raises(CauceError, match=r"feature column\(s\) \['ghost'\] not found in split 'train'"):
        run_transform(raw, "y", [], [], str(out / "t"), str(out / "fn"), recipe=recipe)
    with pytest.raises(CauceError, match="pass either a recipe or numeric_features/categorical_features, not both"):
        run_transform(raw, "y", ["x"], [], str(out / "t"), str(out / "fn"), recipe={"steps": [{"type": "zscore", "columns": ["x"]}]})
    with pytest.raises(CauceError, match=r"recipe step 1 \(cast\): column 'c' row 0 holds 'a', which is not a valid float"):
        run_transform(raw, "y", [], [], str(out / "t"), str(out / "fn"),
                      recipe="steps: [{type: cast, columns: [c], to: float}, {type: zscore, columns: [c]}]")
    assert list(out.iterdir()) == []


def test_fill_with_a_fitted_median_then_zscore_takes_two_passes(tmp_path):
    x = pa.array([1.0, None, 3.0, 10.0, None, 2.0] * 5)
    raw = _write(tmp_path / "raw", {"train": _small(30, x=x)})
    recipe = {"steps": [
        {"type": "fill_missing", "columns": ["x"], "statistic": "median"},
        {"type": "zscore", "columns": ["x"]},
        {"type": "vocabulary", "columns": ["c"]},
    ]}
    run_transform(raw, "y", [], [], str(tmp_path / "t"), str(tmp_path / "fn"), recipe=recipe)
    fitted = FittedTransform.load(tmp_path / "fn")
    assert fitted.states[1]["x"]["value"] == 2.0  # median of 1, 2, 3, 10 (the lower middle value)
    filled = [1.0, 2.0, 3.0, 10.0, 2.0, 2.0]
    assert fitted.states[2]["x"]["mean"] == pytest.approx(sum(filled) / 6)  # fitted on the filled column


def test_encode_in_small_batches_matches_the_in_process_transform(tmp_path):
    """Files are read, encoded and written batch by batch (one row group each), every
    batch encoded into the same reused buffer: with 16-row batches over two files the
    output is still exactly what transform_table gives on the whole table, in the same
    order, with required feature columns."""
    import numpy as np
    import pyarrow.parquet as pq

    table = _small(100, x=pa.array([float(i) if i % 7 else None for i in range(100)]))
    raw = tmp_path / "raw"
    with atomic_dir(raw) as out:
        rows = {"train": data.write_split(out, "train", table, rows_per_shard=60)}  # two files: 60 + 40 rows
        data.write_schema(out, table.schema, rows)
    run_transform(str(raw), "y", ["x"], ["c"], str(tmp_path / "out"), str(tmp_path / "fn"), batch_rows=16)
    fitted = FittedTransform.load(tmp_path / "fn")
    files = sorted((tmp_path / "out" / "train").glob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [4, 3]  # ceil(60/16), ceil(40/16)
    encoded = data.read_split(tmp_path / "out", "train")
    got = np.column_stack([encoded.column(n).to_numpy() for n in fitted.feature_names])
    np.testing.assert_array_equal(got, fitted.transform_table(table))
    assert encoded.column("y").to_pylist() == table.column("y").to_pylist()
    assert not any(encoded.schema.field(n).nullable for n in fitted.feature_names)  # required Parquet columns
