"""The monitor reads Vertex AI's request-response log table in BigQuery with the same code
path as the local JSON Lines logs, and reports the same drift for the same requests.

The real google-cloud-bigquery client (and Storage Read API client) against the BigQuery
emulator; the rows are streamed into a table of exactly the schema Vertex writes
(``cauce.request_logs``), as Vertex's own logging streams them.
"""

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from cauce import data
from cauce.artifacts import CauceError
from cauce.components.monitor.executor import BigQueryRead, bigquery_window_query, run_monitor
from cauce.request_logs import REQUEST_LOG_COLUMNS, ensure_table
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture

START = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc)
NUMERIC, CATEGORICAL = ["fare", "miles"], ["payment"]


def _requests(rng, count: int, minute_offset: int, shift: float) -> list[dict]:
    """Request rows in the shape Vertex logs: payloads are lists of JSON texts."""
    rows = []
    for number in range(count):
        instances = [
            {
                "fare": float(np.round(rng.gamma(2.0, 6.0) + shift, 2)),
                "miles": int(rng.integers(0, 30)),
                "payment": str(rng.choice(["card", "cash", "mobile"], p=[0.6, 0.3, 0.1] if not shift else [0.2, 0.7, 0.1])),
            }
            for _ in range(int(rng.integers(1, 4)))
        ]
        logged = START + dt.timedelta(minutes=minute_offset, seconds=number)
        rows.append({
            "endpoint": "projects/p/locations/us-central1/endpoints/42",
            "deployed_model_id": "7",
            "logging_time": logged.isoformat(timespec="microseconds"),
            "request_id": str(10**12 + minute_offset * 10**6 + number),
            "request_payload": [json.dumps(instance) for instance in instances],
            "response_payload": [json.dumps({"label": 1, "score": 0.7}) for _ in instances],
        })
    return rows


@pytest.fixture(scope="module")
def logged(bigquery_emulator, tmp_path_factory):  # noqa: F811
    """The same requests in a BigQuery request-log table and in a JSON Lines folder."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("monitor-bq")
    baseline = pa.table({
        "fare": np.round(rng.gamma(2.0, 6.0, 4000), 2),
        "miles": rng.integers(0, 30, 4000),
        "payment": rng.choice(["card", "cash", "mobile"], 4000, p=[0.6, 0.3, 0.1]),
    })
    data.write_schema(root / "baseline", baseline.schema, {"train": data.write_split(root / "baseline", "train", baseline)})
    previous = _requests(rng, 150, 0, 0.0)  # 10:00-10:03, like training
    current = _requests(rng, 150, 30, 9.0)  # 10:30-10:33, fares up and more cash
    rows = previous + current
    uri = ensure_table(f"bq://{bigquery_emulator.project}.serving_logs.churn", "US", bigquery_emulator.endpoint)
    client = bigquery_emulator.client()
    for chunk in range(0, len(rows), 100):
        assert client.insert_rows_json(uri.removeprefix("bq://"), rows[chunk:chunk + 100], timeout=30) == []
    client.create_dataset("staging", exists_ok=True, timeout=10)
    log_dir = root / "logs"
    log_dir.mkdir()
    with open(log_dir / "requests-a.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps({**row, "request_id": int(row["request_id"])}) + "\n")
    return {"root": root, "table": uri, "log_dir": str(log_dir), "emulator": bigquery_emulator}


def _options(emulator, **overrides) -> BigQueryRead:
    return BigQueryRead(**{
        "location": emulator.location, "api_endpoint": emulator.endpoint, "read_api": "storage",
        "storage_api_endpoint": emulator.grpc_endpoint, "staging_dataset": "staging",
        "api_retry_timeout_s": 10.0, "query_timeout_s": 60.0, **overrides,
    })


def _monitor(logged, source, out, **kwargs):
    return run_monitor(
        baseline_dir=str(logged["root"] / "baseline"), baseline_split="train", request_log_dir=source,
        output_dir=str(logged["root"] / out), numeric_features=NUMERIC, categorical_features=CATEGORICAL,
        bigquery=_options(logged["emulator"]), **kwargs,
    )


def test_the_table_and_the_json_lines_give_identical_drift(logged):
    window = {"window_start": "2024-05-01T10:30:00Z", "window_end": "2024-05-01T11:00:00Z",
              "previous_window_start": "2024-05-01T10:00:00Z", "previous_window_end": "2024-05-01T10:30:00Z"}
    from_table = _monitor(logged, logged["table"], "report-bq", **window)
    from_files = _monitor(logged, logged["log_dir"], "report-jsonl", **window)

    assert from_table["flagged"]["features"] and from_table["flagged"] == from_files["flagged"]
    assert from_table["current_rows"] == from_files["current_rows"] > 150
    for key in ("features", "drifted_features", "num_drifted"):
        assert from_table[key] == from_files[key]  # the same floats, bit for bit
        assert from_table["window_drift"][key] == from_files["window_drift"][key]
    assert from_table["serving"]["endpoints"] == ["projects/p/locations/us-central1/endpoints/42"]


def test_the_window_is_a_query_parameter_in_sql():
    sql, parameters = bigquery_window_query("p.d.t", START, None)
    assert "logging_time >= @window_start" in sql and "2024" not in sql
    assert parameters == {"window_start": START}


def test_a_window_without_rows_is_reported_and_alerts_nothing(logged):
    report = _monitor(logged, logged["table"], "report-empty", window_start="2030-01-01T00:00:00Z",
                      alert_webhook="http://127.0.0.1:9/never-called")
    assert report["no_requests"].startswith(f"no logged requests with instances in {logged['table']}")
    assert report["flagged"] == {"drift_detected": False, "features": []} and "alerts" not in report


def test_a_missing_table_is_named(logged):
    missing = f"bq://{logged['emulator'].project}.serving_logs.no_such_table"
    with pytest.raises(CauceError, match=r"request-log table cauce-test\.serving_logs\.no_such_table not found"):
        _monitor(logged, missing, "report-missing")
    assert not (logged["root"] / "report-missing").exists()


def test_a_table_of_the_wrong_shape_names_the_missing_columns(logged):
    emulator = logged["emulator"]
    emulator.load_table("serving_logs.wrong", pa.table({"endpoint": ["e"], "logging_time": ["2024-05-01"]}))
    with pytest.raises(CauceError, match=r"cauce-test\.serving_logs\.wrong is not a Vertex AI request-response log: "
                                         r"missing columns \['deployed_model_id', 'request_payload'\]; wrong columns "
                                         r"\['logging_time NULLABLE STRING \(expected NULLABLE TIMESTAMP\)'\]"):
        _monitor(logged, f"bq://{emulator.project}.serving_logs.wrong", "report-wrong")


def test_the_cost_guard_refuses_a_window_over_budget(logged):
    from tests.fixtures.bigquery_emulator import dry_run_estimate_proxy

    with dry_run_estimate_proxy(logged["emulator"], bytes_estimate=5 * 2**30) as proxy:
        with pytest.raises(CauceError, match=r"would process 5\.0 GiB .* over maximum_bytes_billed"):
            run_monitor(
                baseline_dir=str(logged["root"] / "baseline"), baseline_split="train",
                request_log_dir=logged["table"], output_dir=str(logged["root"] / "report-cost"),
                numeric_features=NUMERIC, categorical_features=CATEGORICAL,
                bigquery=_options(logged["emulator"], api_endpoint=proxy.endpoint, maximum_bytes_billed=2**30),
            )
    assert proxy.job_configurations[0]["dryRun"] is True
    assert [p["name"] for p in proxy.job_configurations[0]["query"]["queryParameters"]] == []


def test_the_monitoring_pipeline_compiled_for_vertex_reads_the_table(logged, tmp_path):
    """The compiled `monitoring` spec (the one submitted to Vertex), run with kfp.local: the
    monitor step reads the request-log table and reports what the JSON Lines path reports."""
    from cauce import spec
    from cauce.local import run_spec

    compiled = spec.compile_pipeline("monitoring", tmp_path / "specs")
    emulator = logged["emulator"]
    run = run_spec(compiled, {
        "baseline_uri": str(logged["root"] / "baseline"),
        "request_log_table": logged["table"],
        "numeric_features": NUMERIC,
        "categorical_features": CATEGORICAL,
        "target": "google-cloud",
        "project": emulator.project,
        "window_start": "2024-05-01T10:30:00Z",
        "bigquery_api_endpoint": emulator.endpoint,
        "bigquery_read_api": "storage",
        "bigquery_storage_api_endpoint": emulator.grpc_endpoint,
        "bigquery_staging_dataset": "staging",
    }, pipeline_root=tmp_path / "runs")
    monitor = run.task("monitor")
    local = _monitor(logged, logged["log_dir"], "report-pipeline-jsonl", window_start="2024-05-01T10:30:00Z")
    assert monitor.parameters["Output"] is True  # the drift flag
    assert sorted(monitor.artifacts["drift_report"]["metadata"]["drifted_features"]) == local["flagged"]["features"]


def test_the_schema_is_the_one_vertex_writes():
    assert REQUEST_LOG_COLUMNS == (
        "endpoint", "deployed_model_id", "logging_time", "request_id", "request_payload", "response_payload",
    )
