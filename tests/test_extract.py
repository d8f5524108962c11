"""Extract on both backends: the embedded engine and BigQuery (the emulator, through the real client)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cauce import data
from cauce.artifacts import CauceError
from cauce.components.extract import local_engine
from cauce.components.extract.executor import run_extract
from cauce.demo import DEMO_KEY, DEMO_TABLE, ensure_demo_table, generate_taxi_trips
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture

DEMO_ROWS = 2000
BACKENDS = ["local", "bigquery"]


@pytest.fixture(scope="module")
def demo_trips() -> pa.Table:
    return generate_taxi_trips(DEMO_ROWS)


@pytest.fixture(scope="module")
def local_database(tmp_path_factory) -> Path:
    database = tmp_path_factory.mktemp("local-engine") / "local.duckdb"
    ensure_demo_table(database, rows=DEMO_ROWS)
    return database


@pytest.fixture(scope="module")
def bigquery_demo(bigquery_emulator, demo_trips):  # noqa: F811 - the imported fixture
    """The emulator, holding the same demo table as the local engine."""
    bigquery_emulator.load_table(DEMO_TABLE, demo_trips)
    return bigquery_emulator


@pytest.fixture
def extract(request, tmp_path, local_database):
    """Call run_extract on the backend named by the test's ``backend`` parameter.

    Outputs go to tmp_path/outputs/<name>, so a test can check that a failed
    call left nothing at all in tmp_path/outputs.
    """

    def run(backend: str, source: str, key_column: str = DEMO_KEY, output: str = "dataset", **options):
        backend_options = {"local_database": str(local_database)}
        if backend == "bigquery":
            emulator = request.getfixturevalue("bigquery_demo")
            backend_options = {
                "project": emulator.project,
                "bigquery_location": emulator.location,
                "bigquery_api_endpoint": emulator.endpoint,
                "api_retry_timeout_s": 5.0,
                "query_timeout_s": 30.0,
            }
        return run_extract(
            source=source,
            key_column=key_column,
            output_dir=tmp_path / "outputs" / output,
            target="local" if backend == "local" else "google-cloud",
            **backend_options,
            **options,
        )

    return run


def split_keys(dataset_dir: Path) -> dict[str, set[str]]:
    return {
        split: set(data.read_split(dataset_dir, split, columns=[DEMO_KEY])[DEMO_KEY].to_pylist())
        for split in data.split_names(dataset_dir)
    }


def assert_nothing_written(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    leftovers = sorted(p.name for p in outputs.iterdir()) if outputs.exists() else []
    assert leftovers == [], f"a failed extract left {leftovers} behind"


@pytest.mark.parametrize("backend", BACKENDS)
def test_extract_writes_disjoint_splits_covering_every_row(backend, extract, tmp_path, demo_trips):
    result = extract(backend, DEMO_TABLE)

    dataset_dir = tmp_path / "outputs" / "dataset"
    keys = split_keys(dataset_dir)
    assert sorted(keys) == ["eval", "train"]
    assert keys["train"].isdisjoint(keys["eval"])
    assert keys["train"] | keys["eval"] == set(demo_trips[DEMO_KEY].to_pylist())
    assert result.split_rows == {name: len(split) for name, split in keys.items()}
    assert sum(result.split_rows.values()) == result.metadata["rows"] == DEMO_ROWS
    assert 0.15 < result.split_rows["eval"] / DEMO_ROWS < 0.25

    schema = data.read_schema(dataset_dir)
    assert sorted(schema["columns"]) == sorted(demo_trips.column_names)  # the split helper columns are gone
    assert schema["splits"] == result.split_rows
    assert schema["backend"] == result.metadata["backend"] == backend
    assert result.metadata["columns"] == demo_trips.column_names
    assert result.metadata["query"] == "SELECT * FROM `demo.taxi_trips`"
    assert ("job_id" in result.metadata) == (backend == "bigquery")


def test_a_row_lands_in_the_same_split_on_both_backends(extract, tmp_path):
    extract("local", DEMO_TABLE, output="local", splits={"train": 0.7, "eval": 0.2, "test": 0.1})
    extract("bigquery", DEMO_TABLE, output="bigquery", splits={"test": 0.1, "train": 0.7, "eval": 0.2})

    local_keys = split_keys(tmp_path / "outputs" / "local")
    assert split_keys(tmp_path / "outputs" / "bigquery") == local_keys
    assert all(local_keys.values()), "every split got rows"


def test_local_farm_fingerprint_equals_bigquery(bigquery_emulator):  # noqa: F811 - the imported fixture
    # The emulator's FARM_FINGERPRINT is only right up to 64 bytes; pyfarmhash is
    # right beyond (it is FarmHash itself), so compare within that range and check
    # BigQuery's documented values separately.
    strings = [
        "",
        "a",
        "1footrue",
        "é",
        "日本語のキー",
        "trip-42-00000001",
        "x" * 16,
        "y" * 17,
        "z" * 32,
        "w" * 33,
    ]
    strings += ["0123456789abcdef" * 4, "tab\tand\nnewline", "-1", "9223372036854775807"]
    assert max(len(s.encode()) for s in strings) <= 64

    from google.cloud import bigquery

    job = bigquery_emulator.client().query(
        "SELECT s, FARM_FINGERPRINT(s) AS fingerprint FROM UNNEST(@strings) AS s",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[bigquery.ArrayQueryParameter("strings", "STRING", strings)]
        ),
    )
    emulator_rows = job.result(timeout=30).to_arrow(create_bqstorage_client=False)
    expected = dict(zip(emulator_rows["s"].to_pylist(), emulator_rows["fingerprint"].to_pylist()))

    local = local_engine.farm_fingerprint(pa.array(strings + [None]))
    assert local.to_pylist() == [expected[s] for s in strings] + [None]


def test_farm_fingerprint_in_local_sql_gives_bigquery_documented_values(local_database):
    # Values from BigQuery's FARM_FINGERPRINT documentation. The query also proves
    # that the transpiled FARM_FINGERPRINT call reaches the UDF.
    documented = [((1, "foo", "TRUE"), -1541654101129638711), ((2, "apple", "FALSE"), 2794438866806483259)]
    documented += [((3, "", "TRUE"), -4880158226897771312)]
    for (x, y, z), fingerprint in documented:
        table = local_engine.run_query(
            local_database,
            f"SELECT FARM_FINGERPRINT(CONCAT(CAST({x} AS STRING), '{y}', CAST({z} AS STRING))) AS f",
        )
        assert table["f"].to_pylist() == [fingerprint]


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_parameters_scalar_and_array(backend, extract, tmp_path, demo_trips):
    result = extract(
        backend,
        "SELECT * FROM demo.taxi_trips WHERE fare > @min_fare AND payment_type IN UNNEST(@payment_types)",
        # 12.0 arrives as a whole-number float, as every number does through KFP.
        query_parameters={"min_fare": 12.0, "payment_types": ["Cash", "Mobile"], "unused": "ignored"},
    )

    expected = demo_trips.filter(
        pc.and_(
            pc.greater(demo_trips["fare"], 12.0),
            pc.is_in(demo_trips["payment_type"], pa.array(["Cash", "Mobile"])),
        )
    )
    keys = split_keys(tmp_path / "outputs" / "dataset")
    assert keys["train"] | keys["eval"] == set(expected[DEMO_KEY].to_pylist())
    assert result.metadata["rows"] == expected.num_rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_query_may_have_comments_a_cte_and_a_trailing_semicolon(backend, extract):
    source = """
        -- trips paid by card
        /* a block comment */
        WITH card AS (SELECT unique_key, fare FROM demo.taxi_trips WHERE payment_type = 'Credit Card')
        SELECT * FROM card -- trailing comment
        ;
    """
    result = extract(backend, source, splits={"all": 1})
    assert result.split_rows["all"] == result.metadata["rows"] > 0
    assert result.metadata["columns"] == ["unique_key", "fare"]


def test_local_engine_ignores_the_project_of_a_table(extract):
    result = extract("local", "my-project.demo.taxi_trips")
    assert result.metadata["rows"] == DEMO_ROWS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("source", "key_column", "message"),
    [
        ("SELECT no_such_column FROM demo.taxi_trips", DEMO_KEY, "no_such_column"),
        ("SELECT * FROM demo.taxi_trips WHERE fare < 0", DEMO_KEY, "query returned no rows"),
        ("SELECT fare, company FROM demo.taxi_trips", DEMO_KEY, "columns present: ['fare', 'company']"),
        ("SELECT unique_key, 1 AS __cauce_split FROM demo.taxi_trips", DEMO_KEY, "which extract reserves"),
    ],
    ids=["failing-sql", "empty-result", "missing-key-column", "reserved-column"],
)
def test_query_errors_are_clear_and_leave_nothing(backend, source, key_column, message, extract, tmp_path):
    with pytest.raises(CauceError) as error:
        extract(backend, source, key_column=key_column)
    assert message in str(error.value)
    if message == "no_such_column":
        assert "query failed" in str(error.value) and source in str(error.value)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ({"train": 0.8, "eval": 0.3}, "ratios must sum to 1"),
        ({"train": 1.0, "eval": 0.0}, "ratio of split 'eval' must be a number > 0"),
        ({"train": 0.5, "eval": "0.5"}, "ratio of split 'eval' must be a number > 0"),
        ({}, "splits must be a non-empty mapping"),
        ({"../escape": 1.0}, "split name '../escape'"),
        ({"_hidden": 1.0}, "split name '_hidden'"),
        ({"train": 0.9996, "tiny": 0.0004}, "below 1/1000"),
    ],
)
def test_bad_splits_are_rejected(splits, message, extract, tmp_path):
    with pytest.raises(CauceError, match="splits") as error:
        extract("local", DEMO_TABLE, splits=splits)
    assert message in str(error.value)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "source",
    [
        "demo.taxi_trips; DROP TABLE demo.taxi_trips",
        "demo.taxi_trips` UNION ALL SELECT * FROM `demo.taxi_trips",
        "demo.taxi_trips -- comment",
        "demo.taxi_trips WHERE 1=1",
        "a.b.c.d",
        "taxi_trips",
        "",
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_reference_is_validated_before_it_reaches_sql(
    backend, source, extract, tmp_path, local_database
):
    with pytest.raises(CauceError, match="source"):
        extract(backend, source)
    assert_nothing_written(tmp_path)
    assert (
        local_engine.run_query(local_database, "SELECT COUNT(*) AS n FROM demo.taxi_trips")["n"][0].as_py()
        == DEMO_ROWS
    )


@pytest.mark.parametrize("key_column", ["unique_key`, 1 AS x, `fare", "1st", "unique key", ""])
def test_a_key_column_must_be_an_identifier(key_column, extract, tmp_path):
    with pytest.raises(CauceError, match="key_column"):
        extract("local", DEMO_TABLE, key_column=key_column)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("query_parameters", "message"),
    [
        ({"ids": []}, "empty list"),
        ({"mixed": [1, "a"]}, "mixes types"),
        ({"nothing": None}, "type NoneType"),
        ({"bad-name": 1}, "not a valid parameter name"),
    ],
)
def test_bad_query_parameters_are_rejected(query_parameters, message, extract, tmp_path):
    with pytest.raises(CauceError, match="query_parameters") as error:
        extract("local", DEMO_TABLE, query_parameters=query_parameters)
    assert message in str(error.value)
    assert_nothing_written(tmp_path)


def test_an_undefined_query_parameter_is_named(extract, tmp_path):
    with pytest.raises(CauceError, match=r"parameter\(s\) \['min_fare'\]"):
        extract("local", "SELECT * FROM demo.taxi_trips WHERE fare > @min_fare")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identifiers_fill_table_placeholders_on_both_backends(backend, extract, demo_trips):
    # The same query text against another dataset is a parameter value, not a new query.
    result = extract(
        backend,
        "SELECT * FROM `${source_dataset}.${trips_table}` WHERE fare > @min_fare",
        identifiers={"source_dataset": "demo", "trips_table": "taxi_trips"},
        query_parameters={"min_fare": 20.0},
    )
    expected = pc.sum(pc.greater(demo_trips.column("fare"), 20.0)).as_py()
    assert result.metadata["rows"] == expected
    assert "`demo.taxi_trips`" in result.metadata["query"]


@pytest.mark.parametrize(
    ("source", "identifiers", "message"),
    [
        ("SELECT * FROM `${source_dataset}.t`", {"source_dataset": "demo`; DROP TABLE x; --"}, "not a valid BigQuery dataset id"),
        ("SELECT * FROM `${p_project}.demo.t`", {"p_project": "Acme"}, "not a valid BigQuery project id"),
        ("SELECT * FROM ${t_table}", {"t_table": "a--b"}, "not a valid BigQuery table id"),
        ("SELECT * FROM ${where}", {"where": "demo"}, "must be a placeholder name ending in"),
        ("SELECT * FROM `${source_dataset}.t`", {}, "that identifiers does not define"),
        ("SELECT * FROM demo.taxi_trips", {"source_dataset": "demo"}, "are not used by source"),
    ],
)
def test_identifiers_are_checked_before_they_reach_sql(source, identifiers, message, extract, tmp_path):
    with pytest.raises(CauceError, match="identifiers") as error:
        extract("local", source, identifiers=identifiers)
    assert message in str(error.value)
    assert_nothing_written(tmp_path)


class FailingBigQueryHandler(BaseHTTPRequestHandler):
    """Answers 500 to every call, or (``accept_inserts``) accepts a job and fails the reads of its results."""

    accept_inserts = False

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.accept_inserts:
            return self.do_GET()
        schema = {"fields": [{"name": DEMO_KEY, "type": "STRING"}]}
        self.answer(
            200,
            {
                "jobReference": request.get("jobReference", {}),
                "configuration": request.get("configuration", {}),
                "status": {"state": "DONE"},
                "statistics": {"query": {"schema": schema, "totalBytesProcessed": "0"}},
            },
        )

    def do_GET(self):
        self.answer(500, {"error": {"code": 500, "message": "backend error", "status": "INTERNAL"}})

    def answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("accept_inserts", [False, True], ids=["insert-fails", "results-fail"])
def test_bigquery_server_errors_fail_fast_instead_of_retrying_for_minutes(accept_inserts, tmp_path):
    handler = type("Handler", (FailingBigQueryHandler,), {"accept_inserts": accept_inserts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(CauceError, match="BigQuery query failed.*500"):
            run_extract(
                source=DEMO_TABLE,
                key_column=DEMO_KEY,
                output_dir=tmp_path / "outputs" / "dataset",
                target="google-cloud",
                project="cauce-test",
                bigquery_api_endpoint=f"http://127.0.0.1:{server.server_port}",
                api_retry_timeout_s=1.0,
            )
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - started < 15
    assert_nothing_written(tmp_path)


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom:RuntimeWarning")
def test_component_compiles_and_runs_under_kfp_local(tmp_path, local_database, kfp_local):
    from kfp import compiler

    from cauce.components.extract.component import extract as extract_component

    spec_path = tmp_path / "extract.yaml"
    compiler.Compiler().compile(extract_component, str(spec_path))
    assert all(name in spec_path.read_text() for name in ("maximum_bytes_billed", "read_api", "staging_dataset"))

    task = extract_component(
        source="SELECT * FROM demo.taxi_trips WHERE fare > @min_fare LIMIT @max_rows",
        key_column=DEMO_KEY,
        splits={"train": 0.75, "eval": 0.25},
        local_database=str(local_database),
        # Through KFP both numbers reach the step as doubles; LIMIT needs an INT64.
        query_parameters={"min_fare": 5, "max_rows": 500},
    )

    dataset = task.outputs["dataset"]
    assert task.outputs["rows"] == 500
    assert sum(data.read_schema(dataset.path)["splits"].values()) == 500
    assert dataset.metadata["split_rows"] == data.read_schema(dataset.path)["splits"]
    assert dataset.metadata["backend"] == "local"
    assert dataset.metadata["bigquery_schema"][DEMO_KEY] == "STRING"
    assert dataset.metadata["split_bytes"] == data.read_schema(dataset.path)["split_bytes"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_table_is_named_back_and_read_again_as_a_table_id(backend, extract, request):
    project = request.getfixturevalue("bigquery_demo").project if backend == "bigquery" else "local"
    from_source = extract(backend, DEMO_TABLE)
    assert from_source.table_id == f"{project}.{DEMO_TABLE}"
    # A google.BQTable's id is read instead of source (the warning names the source ignored).
    from_table = extract(backend, "demo.other_table", output="from_table", source_table=from_source.table_id)
    assert from_table.table_id == from_source.table_id
    assert from_table.metadata["split_fingerprints"] == from_source.metadata["split_fingerprints"]
    # A query names no table.
    assert extract(backend, f"SELECT * FROM {DEMO_TABLE}", output="query").table_id == ""


def test_table_artifact_carries_gcpc_metadata_keys(local_database):
    from cauce.components.extract.executor import table_artifact

    uri, metadata = table_artifact("acme-ml.trips.taxi", "google-cloud")
    assert uri == "https://www.googleapis.com/bigquery/v2/projects/acme-ml/datasets/trips/tables/taxi"
    assert metadata == {"projectId": "acme-ml", "datasetId": "trips", "tableId": "taxi"}
    uri, metadata = table_artifact("local.demo.taxi_trips", "local", str(local_database))
    assert uri == "" and metadata["tableId"] == "taxi_trips" and metadata["local_database"] == str(local_database)
    assert table_artifact("", "local") == ("", {})


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom:RuntimeWarning")
def test_kfp_local_extract_reads_a_table_passed_as_a_bigquery_table_artifact(local_database, kfp_local):
    from typing import NamedTuple

    from kfp import dsl

    from cauce.artifact_types import BQTable
    from cauce.components.extract.component import extract as extract_component

    outputs = NamedTuple("Outputs", dataset=dsl.Dataset, table=BQTable)  # noqa: UP014 - real types, not strings

    def from_table(database: str):
        imported = dsl.importer(
            artifact_uri="https://www.googleapis.com/bigquery/v2/projects/local/datasets/demo/tables/taxi_trips",
            artifact_class=BQTable,
            metadata={"projectId": "local", "datasetId": "demo", "tableId": "taxi_trips"},
        )
        task = extract_component(source_table=imported.output, key_column=DEMO_KEY, local_database=database)
        return outputs(task.outputs["dataset"], task.outputs["table"])

    # (this module's annotations are strings: KFP reads the pipeline's types from real ones)
    from_table.__annotations__ = {"database": str, "return": outputs}
    run = dsl.pipeline(from_table)(database=str(local_database))
    dataset, table = run.outputs["dataset"], run.outputs["table"]
    assert sum(data.read_schema(dataset.path)["splits"].values()) == DEMO_ROWS
    assert dataset.metadata["query"] == "SELECT * FROM `local.demo.taxi_trips`"
    # (kfp.local hands a pipeline's outputs back as plain Artifacts: the compiled type is checked in
    # tests/test_typed_boundaries.py)
    assert {key: table.metadata[key] for key in ("projectId", "datasetId", "tableId")} == {
        "projectId": "local", "datasetId": "demo", "tableId": "taxi_trips",
    }
    assert table.metadata["local_database"] == str(local_database)


# --------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata_records_rows_bytes_schema_and_query(backend, extract, tmp_path):
    source = "SELECT unique_key, fare, trip_start_timestamp, payment_type FROM demo.taxi_trips WHERE fare > @f"
    result = extract(backend, source, query_parameters={"f": 3.5})

    dataset_dir = tmp_path / "outputs" / "dataset"
    metadata = result.metadata
    for split, rows in metadata["split_rows"].items():
        parquet_bytes = sum(part.stat().st_size for part in (dataset_dir / split).glob("part-*.parquet"))
        assert metadata["split_bytes"][split] == parquet_bytes > 0
        assert data.read_split(dataset_dir, split).num_rows == rows
    assert metadata["bytes_written"] == sum(metadata["split_bytes"].values())
    assert metadata["rows"] == sum(metadata["split_rows"].values())
    assert metadata["bigquery_schema"] == {
        "unique_key": "STRING", "fare": "FLOAT64", "trip_start_timestamp": "TIMESTAMP", "payment_type": "STRING"
    }  # fmt: skip
    assert metadata["schema"]["trip_start_timestamp"] == "timestamp[us, tz=UTC]"
    assert metadata["query"] == source

    schema_file = data.read_schema(dataset_dir)
    shared = {k: v for k, v in metadata.items() if k not in ("columns", "schema", "split_rows")}
    assert {k: schema_file[k] for k in shared} == json.loads(json.dumps(shared))
    assert schema_file["columns"] == metadata["schema"]
    assert schema_file["splits"] == metadata["split_rows"]
    if backend == "bigquery":
        assert metadata["job_id"] and metadata["read_api"] == "rest"
        # bqemulator has no cost model: its dry-run estimate is always 0 bytes.
        assert metadata["bytes_estimated"] == 0
    else:
        assert "job_id" not in metadata and "read_api" not in metadata


# --------------------------------------------------------------------------- cost guard
GiB = 1024**3


def test_cost_guard_refuses_a_query_over_the_limit_before_running_it(bigquery_demo, tmp_path):
    # bqemulator's dry runs always report 0 bytes, so the proxy gives the real client
    # a BigQuery-like estimate; everything else is the emulator's own answer.
    from tests.fixtures.bigquery_emulator import dry_run_estimate_proxy

    with dry_run_estimate_proxy(bigquery_demo, bytes_estimate=int(12.3 * GiB)) as proxy:
        with pytest.raises(CauceError) as error:
            run_extract(
                source=DEMO_TABLE,
                key_column=DEMO_KEY,
                output_dir=tmp_path / "outputs" / "dataset",
                target="google-cloud",
                project=bigquery_demo.project,
                bigquery_api_endpoint=proxy.endpoint,
                maximum_bytes_billed=10 * GiB,
                api_retry_timeout_s=5.0,
            )
    message = str(error.value)
    assert "query would process 12.3 GiB" in message
    assert "over maximum_bytes_billed = 10.0 GiB" in message
    assert "raise maximum_bytes_billed or narrow the query" in message
    assert [configuration.get("dryRun", False) for configuration in proxy.job_configurations] == [True]
    assert_nothing_written(tmp_path)


def test_cost_guard_runs_a_query_under_the_limit_and_bigquery_gets_the_limit_too(bigquery_demo, tmp_path):
    from tests.fixtures.bigquery_emulator import dry_run_estimate_proxy

    with dry_run_estimate_proxy(bigquery_demo, bytes_estimate=3 * 1024**2) as proxy:
        result = run_extract(
            source=DEMO_TABLE,
            key_column=DEMO_KEY,
            output_dir=tmp_path / "outputs" / "dataset",
            target="google-cloud",
            project=bigquery_demo.project,
            bigquery_api_endpoint=proxy.endpoint,
            maximum_bytes_billed=10 * 1024**2,
            api_retry_timeout_s=5.0,
        )
    assert result.metadata["rows"] == DEMO_ROWS
    assert result.metadata["bytes_estimated"] == 3 * 1024**2
    assert result.metadata["maximum_bytes_billed"] == 10 * 1024**2
    dry_run, query = proxy.job_configurations
    assert dry_run["dryRun"] is True
    assert "dryRun" not in query and query["query"]["maximumBytesBilled"] == str(10 * 1024**2)


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (10 * GiB, "10.0 GiB"), (3 * 1024**5, "3072.0 TiB")],
)
def test_format_bytes_uses_binary_units(count, text):
    from cauce.components.extract.bigquery_backend import format_bytes

    assert format_bytes(count) == text


# --------------------------------------------------------------------------- read paths
def read_all(dataset_dir: Path) -> pa.Table:
    tables = [data.read_split(dataset_dir, split) for split in data.split_names(dataset_dir)]
    return pa.concat_tables(tables).sort_by(DEMO_KEY)


def test_storage_read_api_and_rest_give_the_same_rows(extract, bigquery_demo, tmp_path, demo_trips):
    bigquery_demo.client().create_dataset("staging", exists_ok=True, timeout=10)
    storage = {"storage_api_endpoint": bigquery_demo.grpc_endpoint, "staging_dataset": "staging"}
    by_storage = extract("bigquery", DEMO_TABLE, output="storage", read_api="storage", **storage)
    by_auto = extract("bigquery", DEMO_TABLE, output="auto", read_api="auto", **storage)
    by_rest = extract("bigquery", DEMO_TABLE, output="rest", read_api="rest", staging_dataset="staging")

    assert by_storage.metadata["read_api"] == by_auto.metadata["read_api"] == "storage"
    assert by_rest.metadata["read_api"] == "rest"
    rows = read_all(tmp_path / "outputs" / "rest")
    assert rows.num_rows == DEMO_ROWS
    assert read_all(tmp_path / "outputs" / "storage").equals(rows)
    assert read_all(tmp_path / "outputs" / "auto").equals(rows)
    assert rows.equals(demo_trips.sort_by(DEMO_KEY))
    assert by_storage.split_rows == by_rest.split_rows
    assert by_storage.metadata["bigquery_schema"] == by_rest.metadata["bigquery_schema"]
    # The staged result tables are gone once read.
    assert list(bigquery_demo.client().list_tables("staging", timeout=10)) == []


def test_auto_reads_over_rest_when_the_storage_api_cannot_see_the_result(extract, bigquery_demo, tmp_path, caplog):
    # bqemulator keeps no anonymous result table for a query, so its Storage Read API
    # answers NOT_FOUND for the job's destination: auto falls back, storage fails.
    endpoint = {"storage_api_endpoint": bigquery_demo.grpc_endpoint}
    with caplog.at_level("WARNING", logger="cauce.components.extract.bigquery_backend"):
        result = extract("bigquery", DEMO_TABLE, output="auto", read_api="auto", **endpoint)
    assert result.metadata["read_api"] == "rest" and result.metadata["rows"] == DEMO_ROWS
    assert "Storage Read API unavailable" in caplog.text and "staging_dataset" in caplog.text

    with pytest.raises(CauceError, match="Storage Read API failed"):
        extract("bigquery", DEMO_TABLE, output="storage", read_api="storage", **endpoint)
    assert not (tmp_path / "outputs" / "storage").exists()


@pytest.fixture
def storage_api_permission_denied():
    """A gRPC Storage Read API that answers PERMISSION_DENIED, as Google does when the API is not enabled.

    bqemulator always serves the Storage Read API, so this one answer of Google's
    comes from a real gRPC server of our own.
    """
    from concurrent import futures

    import grpc

    def deny(request, context):
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "BigQuery Storage API has not been used in project cauce-test before or it is disabled.",
        )

    handler = grpc.method_handlers_generic_handler(
        "google.cloud.bigquery.storage.v1.BigQueryRead",
        {"CreateReadSession": grpc.unary_unary_rpc_method_handler(deny)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_auto_falls_back_to_rest_when_the_storage_api_is_not_enabled(
    extract, bigquery_demo, storage_api_permission_denied, tmp_path, caplog
):
    bigquery_demo.client().create_dataset("staging", exists_ok=True, timeout=10)
    options = {"storage_api_endpoint": storage_api_permission_denied, "staging_dataset": "staging"}
    with caplog.at_level("WARNING", logger="cauce.components.extract.bigquery_backend"):
        result = extract("bigquery", DEMO_TABLE, output="auto", read_api="auto", **options)
    assert result.metadata["read_api"] == "rest" and result.metadata["rows"] == DEMO_ROWS
    assert "not enabled or permission denied" in caplog.text

    with pytest.raises(CauceError, match="Storage Read API failed.*has not been used"):
        extract("bigquery", DEMO_TABLE, output="storage", read_api="storage", **options)
    assert not (tmp_path / "outputs" / "storage").exists()
    assert list(bigquery_demo.client().list_tables("staging", timeout=10)) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"read_api": "grpc"}, "read_api must be one of"),
        ({"staging_dataset": "a.b.c"}, "staging_dataset must be dataset or project.dataset"),
        ({"staging_dataset": "x; DROP"}, "staging_dataset must be dataset or project.dataset"),
        ({"read_api": "storage"}, "needs storage_api_endpoint"),
    ],
)
def test_bad_read_options_are_rejected(options, message, extract, tmp_path):
    with pytest.raises(CauceError, match=message):
        extract("bigquery", DEMO_TABLE, **options)
    assert_nothing_written(tmp_path)


@pytest.mark.timeout(120)
def test_storage_read_api_reads_batches_over_grpc_default_message_limit(bigquery_emulator, tmp_path):  # noqa: F811
    # One Arrow batch of these rows is ~6 MiB, over gRPC's default 4 MiB receive
    # limit, past which the Storage client would retry the stream forever.
    wide = pa.table({"id": [f"row-{i}" for i in range(2000)], "text": ["x" * 3000] * 2000})
    bigquery_emulator.load_table("wide.rows", wide)
    bigquery_emulator.client().create_dataset("staging", exists_ok=True, timeout=10)
    result = run_extract(
        source="wide.rows",
        key_column="id",
        output_dir=tmp_path / "outputs" / "dataset",
        target="google-cloud",
        project=bigquery_emulator.project,
        bigquery_api_endpoint=bigquery_emulator.endpoint,
        storage_api_endpoint=bigquery_emulator.grpc_endpoint,
        read_api="storage",
        staging_dataset="staging",
        api_retry_timeout_s=5.0,
    )
    assert result.metadata["read_api"] == "storage" and result.metadata["rows"] == 2000
