"""Batch prediction: real models (the train executor's bundles), a real MLflow sqlite
registry, Beam's in-process runner, the BigQuery emulator through the real client,
and one kfp.local run of the component. No mocks."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from cauce import data, model
from cauce.artifacts import CauceError
from cauce.components.batch_predict.executor import SPLIT, run_batch_predict, run_batch_predict_from_registry
from cauce.components.register.executor import register_mlflow
from cauce.demo import DEMO_CATEGORICAL, DEMO_KEY, DEMO_NUMERIC
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture


def predictions_of(output_dir) -> pa.Table:
    return ds.dataset(Path(output_dir) / SPLIT, format="parquet").to_table()


def aligned(predictions: pa.Table, rows: pa.Table) -> pa.Table:
    """``predictions`` in the order of ``rows`` (Beam does not keep row order across shards)."""
    index = pc.index_in(rows.column(DEMO_KEY), value_set=predictions.column(DEMO_KEY))
    assert index.null_count == 0
    return predictions.take(index)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, trained_model):
    """An MLflow sqlite registry holding the trained bundle as ``taxi@champion``."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    register_mlflow(trained_model[3], "taxi", uri, alias="champion")
    return uri


def test_registered_champion_scores_every_eval_row_with_its_key(tmp_path, registry, raw_dataset, trained_model):
    out = tmp_path / "predictions"
    result = run_batch_predict_from_registry(
        "taxi", "champion", mlflow_tracking_uri=registry, output_dir=str(out), key_column=DEMO_KEY,
        input_dataset_dir=raw_dataset, input_split="eval", batch_size=300,
    )
    rows = data.read_split(raw_dataset, "eval")
    predictions = predictions_of(out)
    assert result["rows"] == predictions.num_rows == rows.num_rows
    assert predictions.schema.names == [DEMO_KEY, "label", "score"]
    assert sorted(predictions.column(DEMO_KEY).to_pylist()) == sorted(rows.column(DEMO_KEY).to_pylist())

    expected = model.load(trained_model[3], serving=True).predict_scores(rows)  # what the server runs
    got = aligned(predictions, rows)
    np.testing.assert_allclose(got.column("score").to_numpy(), expected, rtol=1e-12)
    assert got.column("label").to_pylist() == (expected >= 0.5).astype(int).tolist()
    schema = data.read_schema(out)
    assert schema["splits"] == {SPLIT: rows.num_rows}
    assert schema["task"] == "binary" and schema["input"] == {"dataset": raw_dataset, "split": "eval"}
    assert result["alias"] == "champion" and Path(result["model"]).name == "model"


@pytest.fixture(scope="module")
def other_task_models(tmp_path_factory, raw_dataset):
    """Small scikit-learn bundles for multiclass (label: payment_type) and regression (label: fare)."""
    from cauce.components.train.executor import run_train
    from cauce.components.transform.executor import run_transform

    root = tmp_path_factory.mktemp("tasks")
    specs = {
        "multiclass": ("payment_type", {"model_type": "logistic_regression", "max_iter": 200}),
        "regression": ("fare", {"model_type": "ridge"}),
    }
    models = {}
    for task, (label, params) in specs.items():
        numeric = [c for c in DEMO_NUMERIC if c != label]
        categorical = [c for c in DEMO_CATEGORICAL if c != label]
        run_transform(raw_dataset, label, numeric, categorical, str(root / task / "t"), str(root / task / "fn"), task=task)
        run_train(str(root / task / "t"), str(root / task / "fn"), str(root / task / "m"), params, task=task)
        models[task] = str(root / task / "m")
    return models


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_prediction_columns_follow_the_task(tmp_path, raw_dataset, other_task_models, task):
    bundle = model.load(other_task_models[task], serving=True)  # what the server runs
    out = tmp_path / "p"
    run_batch_predict(other_task_models[task], str(out), DEMO_KEY, input_dataset_dir=raw_dataset, input_split="eval")
    rows = data.read_split(raw_dataset, "eval")
    got = aligned(predictions_of(out), rows)
    expected = bundle.predict_scores(rows)
    if task == "multiclass":
        classes = bundle.classes
        assert got.schema.names == [DEMO_KEY, "label", *[f"score_{c}" for c in classes]]
        scores = np.column_stack([got.column(f"score_{c}").to_numpy() for c in classes])
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        assert got.column("label").to_pylist() == [classes[i] for i in expected.argmax(axis=1)]
    else:
        assert got.schema.names == [DEMO_KEY, "value"]
        np.testing.assert_allclose(got.column("value").to_numpy(), expected, rtol=1e-12)


def test_bigquery_table_through_the_real_client(tmp_path, bigquery_emulator, raw_dataset, trained_model):  # noqa: F811
    rows = data.read_split(raw_dataset, "eval").slice(0, 200)
    bigquery_emulator.load_table("scoring.trips", rows)
    out = tmp_path / "outputs" / "predictions"
    result = run_batch_predict(
        trained_model[3], str(out), DEMO_KEY, source="scoring.trips", target="google-cloud",
        project=bigquery_emulator.project, bigquery_location=bigquery_emulator.location,
        bigquery_api_endpoint=bigquery_emulator.endpoint, api_retry_timeout_s=5.0, query_timeout_s=30.0,
    )
    assert result["rows"] == 200 and result["input"]["source"] == "scoring.trips"
    got = aligned(predictions_of(out), rows)
    expected = model.load(trained_model[3], serving=True).predict_scores(rows)  # what the server runs
    np.testing.assert_allclose(got.column("score").to_numpy(), expected, rtol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions"]  # the staging dataset is gone


def _drop_column(raw_dataset, tmp_path, column="", rows=None):
    table = data.read_split(raw_dataset, "eval")
    table = table.drop_columns([column]) if column else table
    table = table if rows is None else table.slice(0, rows)
    directory = tmp_path / "input"
    data.write_split(directory, "eval", table)
    return str(directory)


@pytest.mark.parametrize(
    "inputs, match",
    [
        (lambda d, t: {"input_dataset_dir": d, "input_split": "eval", "key_column": "trip_id"},
         r"key_column 'trip_id' is not a column of split 'eval'.*columns present: \['unique_key'"),
        (lambda d, t: {"input_dataset_dir": _drop_column(d, t, "fare"), "input_split": "eval"},
         r"lacks the model's feature column\(s\) \['fare'\]"),
        (lambda d, t: {"input_dataset_dir": d, "input_split": "eval", "source": "demo.taxi_trips"},
         "give exactly one input.*got both"),
        (lambda d, t: {}, "give exactly one input.*got neither"),
        (lambda d, t: {"input_dataset_dir": _drop_column(d, t, rows=0), "input_split": "eval"},
         "has no rows: nothing to predict"),
        (lambda d, t: {"input_dataset_dir": d, "input_split": "holdout"}, r"split 'holdout' not found.*\['eval', 'train'\]"),
        (lambda d, t: {"input_dataset_dir": d}, r"input_split is empty .* splits \['eval', 'train'\]"),
    ],
    ids=["key", "feature", "both", "neither", "empty", "split", "which-split"],
)
def test_errors_name_the_problem_and_leave_no_output(tmp_path, raw_dataset, trained_model, inputs, match):
    out = tmp_path / "outputs" / "predictions"
    arguments = {"key_column": DEMO_KEY, **inputs(raw_dataset, tmp_path)}
    with pytest.raises(CauceError, match=match):
        run_batch_predict(trained_model[3], str(out), **arguments)
    assert not (tmp_path / "outputs").exists() or list((tmp_path / "outputs").iterdir()) == []


def test_unknown_alias_is_refused(tmp_path, registry, raw_dataset):
    with pytest.raises(CauceError, match="model 'taxi' has no version with alias 'staging' in the MLflow registry"):
        run_batch_predict_from_registry(
            "taxi", "staging", mlflow_tracking_uri=registry, output_dir=str(tmp_path / "p"), key_column=DEMO_KEY,
            input_dataset_dir=raw_dataset, input_split="eval",
        )
    assert not (tmp_path / "p").exists()


def test_component_runs_in_a_pipeline_under_kfp_local(kfp_local, tmp_path, registry, raw_dataset):
    """Both input styles in one kfp.local run: the artifact from dsl.importer, and the
    optional artifact left unset with a query on the local engine instead."""
    from kfp import dsl

    from cauce.components.batch_predict.component import batch_predict
    from cauce.demo import DEMO_TABLE, ensure_demo_table

    database = tmp_path / "local.duckdb"
    ensure_demo_table(database, rows=300)

    @dsl.pipeline(name="batch-scoring")
    def scoring(dataset_uri: str, tracking_uri: str, database: str):
        dataset = dsl.importer(artifact_uri=dataset_uri, artifact_class=dsl.Dataset)
        batch_predict(
            model_name="taxi", key_column=DEMO_KEY, input_dataset=dataset.output, input_split="eval",
            mlflow_tracking_uri=tracking_uri,
        )
        batch_predict(
            model_name="taxi", key_column=DEMO_KEY, source=f"SELECT * FROM {DEMO_TABLE} WHERE fare > @fare",
            query_parameters={"fare": 0}, local_database=database, mlflow_tracking_uri=tracking_uri,
        )

    scoring(dataset_uri=raw_dataset, tracking_uri=registry, database=str(database))
    run = next(Path(kfp_local).glob("batch-scoring-*"))
    rows = data.read_split(raw_dataset, "eval").num_rows
    assert predictions_of(run / "batch-predict" / "predictions").num_rows == rows
    assert data.read_schema(run / "batch-predict" / "predictions")["splits"] == {SPLIT: rows}
    from_query = data.read_schema(run / "batch-predict-2" / "predictions")
    assert 0 < from_query["splits"][SPLIT] <= 300 and from_query["input"]["backend"] == "local"


def test_both_input_styles_compile_for_vertex(tmp_path):
    """The optional artifact input compiles in a spec Vertex accepts, with it and without it."""
    from kfp import compiler, dsl

    from cauce import spec
    from cauce.components.batch_predict.component import batch_predict
    from cauce.components.extract.component import extract

    @dsl.pipeline(name="score-both-ways")
    def both(project: str, source: str):
        table = batch_predict(model_name="taxi", key_column=DEMO_KEY, source=source, target="google-cloud", project=project)
        dataset = extract(source=source, key_column=DEMO_KEY, target="google-cloud", project=project)
        batch_predict(
            model_name="taxi", key_column=DEMO_KEY, input_dataset=dataset.outputs["dataset"], target="google-cloud", project=project,
        ).after(table)

    path = tmp_path / "both.yaml"
    compiler.Compiler().compile(both, str(path))
    info = spec.validate_spec(path)
    assert sorted(info["tasks"]) == ["batch-predict", "batch-predict-2", "extract"]
    assert any("cauce-beam" in image for image in info["images"])
