"""Batch predictions written to a BigQuery table (as Vertex AI batch prediction does) as
well as to the predictions Dataset: the real google-cloud-bigquery client against the
BigQuery emulator, one atomic load job per run."""

import numpy as np
import pytest

from cauce import data
from cauce.artifacts import CauceError
from cauce.components.batch_predict.bigquery_output import write_predictions_table
from cauce.components.batch_predict.executor import run_batch_predict
from cauce.demo import DEMO_KEY
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture
from tests.test_batch_predict import registry  # noqa: F401 - pytest fixture


def _read_table(emulator, table_id):
    rows = emulator.client().query(f"SELECT * FROM `{table_id}`").result(timeout=30)
    return rows.to_arrow(create_bqstorage_client=False).sort_by(DEMO_KEY)


def test_predictions_land_in_a_bigquery_table(tmp_path, bigquery_emulator, raw_dataset, trained_model):  # noqa: F811
    out = tmp_path / "predictions"
    run_batch_predict(trained_model[3], str(out), DEMO_KEY, input_dataset_dir=str(raw_dataset), input_split="eval")
    rows = data.read_split(raw_dataset, "eval").num_rows
    table = f"bq://{bigquery_emulator.project}.scoring_out.trips_predictions"  # the dataset is created
    result = write_predictions_table(str(out), table, bigquery_emulator.location, bigquery_emulator.endpoint, timeout_s=60)

    assert result["bigquery_output_table"] == table and result["bigquery_output_rows"] == rows
    written = _read_table(bigquery_emulator, table.removeprefix("bq://"))
    files = data.read_split(out, "predictions").sort_by(DEMO_KEY)
    assert written.column_names == files.column_names == [DEMO_KEY, "label", "score"]
    assert written.column(DEMO_KEY).to_pylist() == files.column(DEMO_KEY).to_pylist()
    np.testing.assert_array_equal(written.column("score").to_numpy(), files.column("score").to_numpy())
    assert written.column("label").to_pylist() == files.column("label").to_pylist()

    # A retried step replaces its table (one load job, WRITE_TRUNCATE), never appends a second copy.
    write_predictions_table(str(out), table, bigquery_emulator.location, bigquery_emulator.endpoint, timeout_s=60)
    assert _read_table(bigquery_emulator, table.removeprefix("bq://")).num_rows == rows


def test_a_bad_table_name_is_refused_before_any_request(tmp_path):
    with pytest.raises(CauceError, match="bigquery_output_table 'scored' must be a BigQuery table"):
        write_predictions_table(str(tmp_path), "scored", api_endpoint="http://127.0.0.1:9")


def test_the_component_writes_the_table_under_kfp_local(kfp_local, tmp_path, registry, raw_dataset, bigquery_emulator):  # noqa: F811
    from kfp import dsl

    from cauce.components.batch_predict.component import batch_predict

    table = f"bq://{bigquery_emulator.project}.scoring_component.trips"

    @dsl.pipeline
    def scoring():
        raw = dsl.importer(artifact_uri=str(raw_dataset), artifact_class=dsl.Dataset, reimport=False)
        batch_predict(
            model_name="taxi", key_column=DEMO_KEY, input_dataset=raw.output, input_split="eval",
            mlflow_tracking_uri=registry, bigquery_output_table=table,
            bigquery_location=bigquery_emulator.location, bigquery_api_endpoint=bigquery_emulator.endpoint,
        )

    scoring()
    written = _read_table(bigquery_emulator, table.removeprefix("bq://"))
    assert written.num_rows == data.read_split(raw_dataset, "eval").num_rows
    assert written.column_names == [DEMO_KEY, "label", "score"]
