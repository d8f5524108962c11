"""The local engine answers BigQuery SQL as BigQuery does, or refuses it by name.

Each query runs on the local engine (``run_query``: sqlglot + DuckDB) and on
bqemulator through the real google-cloud-bigquery client, over the same rows,
and the answers must agree in values and in BigQuery types.

bqemulator is itself DuckDB behind sqlglot, not BigQuery. Where it is known to
give another answer than BigQuery's documentation (the cases in
``test_local_engine_gives_bigquery_documented_answers_where_the_emulator_does_not``),
the local engine is checked against the documented answer instead.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from cauce.artifacts import CauceError
from cauce.components.extract.executor import bigquery_type, infer_query_parameters, split_query
from cauce.components.extract.local_engine import run_query
from tests.fixtures.bigquery_emulator import bigquery_emulator  # noqa: F401 - pytest fixture

UTC = dt.timezone.utc
TABLE = "dialect.events"


def timestamp(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


# Chosen to hit the edges: a Sunday (BigQuery's first weekday), 29 February, the last
# day of a year whose week count differs between BigQuery WEEK and ISOWEEK, NULLs,
# an empty string, negative numbers, repeated users for window functions.
EVENTS = pa.table(
    {
        "id": pa.array(range(1, 11), pa.int64()),
        "user_id": ["u1", "u2", "u1", "u3", "u2", None, "u1", "u3", "u2", "u4"],
        "name": ["alpha", "Beta, gamma", "", "delta x", "  pad  ", None, "été", "x,y,z", "42", "0x1F"],
        "amount": [10.5, -3.25, 0.0, 7.75, 2.5, None, 99.99, 1e-3, -0.5, 1234.5678],
        "qty": pa.array([3, -7, 0, 10, 5, None, 1, 2, -1, 100], pa.int64()),
        "ts": pa.array(
            [
                timestamp(2024, 1, 7, 23, 30),
                timestamp(2024, 2, 29, 0, 0, 1),
                timestamp(2023, 12, 31, 12),
                timestamp(2024, 3, 10, 8, 15),
                timestamp(2024, 1, 1),
                None,
                timestamp(2024, 6, 15, 18, 45, 30),
                timestamp(2024, 12, 31, 23, 59, 59),
                timestamp(2025, 1, 1, 0, 0, 1),
                timestamp(2024, 7, 4, 12),
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        "day": pa.array(
            [
                dt.date(2024, 1, 7), dt.date(2024, 2, 29), dt.date(2023, 12, 31), dt.date(2024, 3, 10),
                dt.date(2024, 1, 1), None, dt.date(2024, 6, 15), dt.date(2024, 12, 31), dt.date(2025, 1, 1),
                dt.date(2024, 7, 4),
            ],
            pa.date32(),
        ),  # fmt: skip
        "category": ["a", "b", "a", "c", "b", "a", "c", "a", "b", "c"],
        "flag": [True, False, True, None, False, True, True, False, None, True],
    }
)


@pytest.fixture(scope="module")
def local_database(tmp_path_factory) -> Path:
    database = tmp_path_factory.mktemp("dialect") / "local.duckdb"
    connection = duckdb.connect(str(database))
    connection.register("events", EVENTS)
    connection.execute("CREATE SCHEMA dialect")
    connection.execute(f"CREATE TABLE {TABLE} AS SELECT * FROM events")
    connection.close()
    return database


@pytest.fixture(scope="module")
def emulator(bigquery_emulator):  # noqa: F811 - the imported fixture
    bigquery_emulator.load_table(TABLE, EVENTS)
    return bigquery_emulator


def on_emulator(emulator, sql: str, parameters: dict | None = None) -> pa.Table:
    from google.api_core.retry import Retry
    from google.cloud import bigquery

    query_parameters = []
    for parameter in infer_query_parameters(parameters or {}):
        if parameter.is_array:
            query_parameters.append(bigquery.ArrayQueryParameter(parameter.name, parameter.type, parameter.value))
        else:
            query_parameters.append(bigquery.ScalarQueryParameter(parameter.name, parameter.type, parameter.value))
    job = emulator.client().query(
        sql,
        job_config=bigquery.QueryJobConfig(query_parameters=query_parameters),
        retry=Retry(timeout=10),
        job_retry=None,
    )
    return job.result(timeout=30).to_arrow(create_bqstorage_client=False)


def on_local(local_database: Path, sql: str, parameters: dict | None = None) -> pa.Table:
    return run_query(local_database, sql, infer_query_parameters(parameters or {}))


def normalized(table: pa.Table) -> tuple[dict[str, str], list[dict]]:
    """BigQuery types by column, and rows with floats rounded to 9 significant digits."""

    def value(v):
        if isinstance(v, float) and math.isfinite(v) and v != 0:
            return round(v, 8 - int(math.floor(math.log10(abs(v)))))
        if isinstance(v, list):
            return [value(item) for item in v]
        if isinstance(v, dict):
            return {k: value(item) for k, item in v.items()}
        return v

    types = {f.name: bigquery_type(f.type) for f in table.schema}
    return types, [{k: value(v) for k, v in row.items()} for row in table.to_pylist()]


# Every query orders its rows, so the two answers compare row by row.
AGREEING_QUERIES = {
    "qualify-latest-event-per-user": """
        SELECT user_id, id, ts FROM dialect.events WHERE user_id IS NOT NULL
        QUALIFY ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts DESC) = 1
        ORDER BY user_id
    """,
    "struct-and-unnest": """
        SELECT id, item.k, item.v
        FROM dialect.events, UNNEST([STRUCT('qty' AS k, qty AS v), STRUCT('id' AS k, id AS v)]) AS item
        WHERE qty IS NOT NULL
        ORDER BY id, item.k
    """,
    "struct-column": """
        SELECT id, STRUCT(user_id AS user, qty AS quantity) AS detail FROM dialect.events ORDER BY id
    """,
    "safe-cast-and-safe-divide": """
        SELECT id, SAFE_CAST(name AS INT64) AS name_as_int, SAFE_CAST(qty AS STRING) AS qty_text,
               SAFE_DIVIDE(amount, qty) AS per_unit, SAFE_CAST(CAST(qty AS STRING) AS FLOAT64) AS back
        FROM dialect.events ORDER BY id
    """,
    "extract-dayofweek-isoweek-and-more": """
        SELECT id, EXTRACT(DAYOFWEEK FROM day) AS dow, EXTRACT(DAYOFWEEK FROM ts) AS dow_ts,
               EXTRACT(ISOWEEK FROM day) AS isoweek, EXTRACT(DAYOFYEAR FROM day) AS doy,
               EXTRACT(QUARTER FROM day) AS quarter, EXTRACT(HOUR FROM ts) AS hour, EXTRACT(YEAR FROM ts) AS year
        FROM dialect.events ORDER BY id
    """,
    "countif-by-category": """
        SELECT category, COUNTIF(flag) AS flagged, COUNTIF(qty > 0) AS positive, COUNT(*) AS n
        FROM dialect.events GROUP BY category ORDER BY category
    """,
    "window-row-number-lag-running-sum": """
        SELECT id, user_id,
               ROW_NUMBER() OVER (PARTITION BY category ORDER BY id) AS rn,
               LAG(qty) OVER (PARTITION BY category ORDER BY id) AS previous_qty,
               SUM(qty) OVER (PARTITION BY category ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                   AS running_qty,
               AVG(amount) OVER (PARTITION BY category) AS category_mean
        FROM dialect.events ORDER BY id
    """,
    "farm-fingerprint-and-the-split-bucket": """
        SELECT id, FARM_FINGERPRINT(user_id) AS user_fingerprint,
               ABS(MOD(FARM_FINGERPRINT(CAST(id AS STRING)), 1000)) AS bucket
        FROM dialect.events ORDER BY id
    """,
    "array-agg-and-array-length": """
        SELECT category, ARRAY_AGG(id ORDER BY id) AS ids, ARRAY_LENGTH(ARRAY_AGG(id)) AS n,
               ARRAY_AGG(user_id IGNORE NULLS ORDER BY id) AS users
        FROM dialect.events GROUP BY category ORDER BY category
    """,
    "exact-aggregates-with-having": """
        SELECT category, COUNT(*) AS n, COUNT(DISTINCT user_id) AS users, SUM(qty) AS total, AVG(qty) AS mean,
               MIN(amount) AS low, MAX(ts) AS latest, LOGICAL_AND(flag) AS all_flagged,
               STDDEV_SAMP(amount) AS spread
        FROM dialect.events GROUP BY category HAVING COUNT(*) > 2 ORDER BY category
    """,
    "case-if-coalesce": """
        SELECT id,
               CASE WHEN qty > 5 THEN 'many' WHEN qty > 0 THEN 'some' ELSE 'none' END AS bucket,
               IF(flag, 'yes', 'no') AS flagged, COALESCE(user_id, 'anonymous') AS user,
               IFNULL(qty, -1) AS qty_or_minus_one, NULLIF(category, 'a') AS not_a
        FROM dialect.events ORDER BY id
    """,
    "timestamp-functions": """
        SELECT id, TIMESTAMP_DIFF(ts, TIMESTAMP '2024-01-01 00:00:00+00', MINUTE) AS minutes,
               TIMESTAMP_ADD(ts, INTERVAL 90 MINUTE) AS later, TIMESTAMP_SUB(ts, INTERVAL 1 DAY) AS day_before,
               TIMESTAMP_TRUNC(ts, HOUR) AS hour, TIMESTAMP_TRUNC(ts, MONTH) AS month,
               FORMAT_TIMESTAMP('%Y-%m-%d %H:%M', ts) AS text, UNIX_SECONDS(ts) AS epoch, DATE(ts) AS date
        FROM dialect.events ORDER BY id
    """,
    "date-functions": """
        SELECT id, DATE_DIFF(day, DATE '2024-01-01', DAY) AS days, DATE_DIFF(day, DATE '2023-11-30', MONTH) AS months,
               DATE_DIFF(day, DATE '2023-12-30', WEEK) AS weeks, DATE_ADD(day, INTERVAL 1 MONTH) AS next_month,
               FORMAT_DATE('%Y-%m-%d %A', day) AS text, LAST_DAY(day, MONTH) AS month_end
        FROM dialect.events ORDER BY id
    """,
    "parameters-scalar-and-array": """
        SELECT id, amount FROM dialect.events
        WHERE amount > @min_amount AND category IN UNNEST(@categories) AND day >= DATE(@since)
        ORDER BY id
    """,
    "string-functions": """
        SELECT id, CONCAT(name, '-', user_id) AS joined, LENGTH(name) AS length, UPPER(name) AS upper,
               LOWER(name) AS lower, SUBSTR(name, 2, 3) AS middle, STRPOS(name, 'a') AS position,
               REPLACE(name, 'a', 'A') AS replaced, TRIM(name) AS trimmed, LPAD(user_id, 5, '0') AS padded,
               STARTS_WITH(name, 'al') AS starts, REGEXP_CONTAINS(name, r'^[a-z]+$') AS word,
               REGEXP_EXTRACT(name, r'([a-z]+)') AS first_word, SPLIT(name, ',')[SAFE_OFFSET(1)] AS second,
               ARRAY_LENGTH(SPLIT(name, ',')) AS parts, REVERSE(name) AS reversed
        FROM dialect.events ORDER BY id
    """,
    "format-printf-style": """
        SELECT id, FORMAT('%d|%s|%.2f|%5d|%-4s|%x', qty, name, amount, qty, user_id, id) AS text
        FROM dialect.events WHERE qty IS NOT NULL AND user_id IS NOT NULL ORDER BY id
    """,
    "integer-division-and-modulo": """
        SELECT id, qty / 2 AS ratio, DIV(qty, 2) AS quotient, MOD(qty, 3) AS remainder, qty * 2 AS doubled
        FROM dialect.events WHERE qty IS NOT NULL AND qty != 0 ORDER BY id
    """,
    "cte-join-and-literal-types": """
        WITH per_user AS (SELECT user_id, SUM(amount) AS spent FROM dialect.events GROUP BY user_id)
        SELECT e.id, p.spent, 1 AS one, 2.5 AS two_and_a_half, 'x' AS letter, TRUE AS yes
        FROM dialect.events AS e JOIN per_user AS p USING (user_id) ORDER BY e.id
    """,
}
PARAMETERS = {
    "parameters-scalar-and-array": {"min_amount": 0.0, "categories": ["a", "c"], "since": "2024-01-01"}
}


@pytest.mark.parametrize("name", AGREEING_QUERIES)
def test_local_engine_agrees_with_the_emulator(name, local_database, emulator):
    sql, parameters = AGREEING_QUERIES[name], PARAMETERS.get(name)
    local_types, local_rows = normalized(on_local(local_database, sql, parameters))
    emulator_types, emulator_rows = normalized(on_emulator(emulator, sql, parameters))
    assert local_types == emulator_types
    assert local_rows == emulator_rows
    assert local_rows, "the query selects rows"


def test_the_split_query_agrees_with_the_emulator(local_database, emulator):
    sql = split_query(f"SELECT id, user_id FROM {TABLE}", "user_id", {"eval": 0.3, "train": 0.7})
    sql = f"SELECT * FROM ({sql}) ORDER BY id"
    assert normalized(on_local(local_database, sql)) == normalized(on_emulator(emulator, sql))


# Where bqemulator (DuckDB underneath) gives another answer than BigQuery's
# documentation, the local engine is held to the documentation. The emulator's own
# answer is asserted too, so this test notices when the emulator is fixed.
DOCUMENTED = {
    # BigQuery EXTRACT(WEEK): weeks begin on Sunday; 2023-12-31 is a Sunday, week 53
    # (the emulator answers DuckDB's ISO week, 52).
    "extract-week": (
        "SELECT EXTRACT(WEEK FROM DATE '2023-12-31') AS w, EXTRACT(WEEK FROM DATE '2024-01-06') AS w0",
        {"w": 53, "w0": 0},
        {"w": 52, "w0": 0},
    ),
    # DATE_TRUNC of a DATE column is a DATE and WEEK starts on Sunday (emulator: a DATETIME, Monday).
    "date-trunc": (
        "SELECT DATE_TRUNC(day, MONTH) AS m, DATE_TRUNC(day, WEEK) AS w FROM dialect.events WHERE id = 2",
        {"m": dt.date(2024, 2, 1), "w": dt.date(2024, 2, 25)},
        {"m": dt.datetime(2024, 2, 1), "w": dt.datetime(2024, 2, 26)},
    ),
    # ISOWEEK weeks start on Monday (the emulator does not know ISOWEEK in DATE_TRUNC).
    "date-trunc-isoweek": (
        "SELECT DATE_TRUNC(DATE '2024-02-29', ISOWEEK) AS iw",
        {"iw": dt.date(2024, 2, 26)},
        'extract specifier "ISOWEEK" not recognized',
    ),
    # TIMESTAMP_TRUNC(..., WEEK) starts the week on Sunday.
    "timestamp-trunc-week": (
        "SELECT TIMESTAMP_TRUNC(TIMESTAMP '2024-02-29 10:00:00+00', WEEK) AS w",
        {"w": timestamp(2024, 2, 25)},
        {"w": timestamp(2024, 2, 26)},
    ),
    # FLOAT64 -> INT64 rounds half away from zero; '1.5' is not an INT64 string (emulator: 2, -2, 2).
    "cast-to-int64": (
        "SELECT CAST(2.5 AS INT64) AS up, CAST(-2.5 AS INT64) AS down, SAFE_CAST('1.5' AS INT64) AS text,"
        " SAFE_CAST('0x1F' AS INT64) AS hex",
        {"up": 3, "down": -3, "text": None, "hex": 31},
        {"up": 2, "down": -2, "text": 2, "hex": 31},
    ),
    # INT64 literals: 2147483647 + 1 is 2147483648 (the emulator overflows INT32).
    "int64-literals": ("SELECT 2147483647 + 1 AS big", {"big": 2147483648}, "Overflow"),
}


@pytest.mark.parametrize("name", DOCUMENTED)
def test_local_engine_gives_bigquery_documented_answers_where_the_emulator_does_not(
    name, local_database, emulator
):
    sql, documented, emulator_answer = DOCUMENTED[name]
    local = on_local(local_database, sql)
    assert local.to_pylist() == [documented]
    if isinstance(emulator_answer, str):
        with pytest.raises(Exception, match=emulator_answer):
            on_emulator(emulator, sql)
    else:
        assert on_emulator(emulator, sql).to_pylist() == [emulator_answer]
    # The result types are BigQuery's: INT64 (not DuckDB's INTEGER), DATE (not TIMESTAMP).
    for field in local.schema:
        assert not pa.types.is_integer(field.type) or field.type == pa.int64()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT EXTRACT(WEEK(MONDAY) FROM day) FROM dialect.events", r"EXTRACT\(WEEK\(MONDAY\) FROM \.\.\.\)"),
        ("SELECT DATE_TRUNC(day, WEEK(MONDAY)) FROM dialect.events", r"DATE_TRUNC\(\.\.\., WEEK\(MONDAY\)\)"),
        ("SELECT DATE_TRUNC(day, ISOYEAR) FROM dialect.events", r"DATE_TRUNC\(\.\.\., ISOYEAR\)"),
        ("SELECT TIMESTAMP_TRUNC(ts, DAY, 'America/New_York') FROM dialect.events", "TIMESTAMP_TRUNC with a time zone"),
        ("SELECT FORMAT('%t', qty) FROM dialect.events", "FORMAT specifier '%t'"),
        ("SELECT FORMAT(name, qty) FROM dialect.events", "FORMAT with a format string that is not a literal"),
        ("SELECT REGEXP_EXTRACT(name, 'a', 2) FROM dialect.events", "REGEXP_EXTRACT with a position"),
    ],
    ids=["extract-week-monday", "date-trunc-week-monday", "date-trunc-isoyear", "trunc-time-zone",
         "format-t", "format-not-literal", "regexp-extract-position"],
)  # fmt: skip
def test_constructs_the_local_engine_cannot_run_faithfully_are_refused_by_name(sql, message, local_database):
    with pytest.raises(CauceError, match=message) as error:
        on_local(local_database, sql)
    assert "cannot run" in str(error.value) and "faithfully" in str(error.value)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        # BigQuery's DATE_TRUNC of a TIMESTAMP would keep the TIMESTAMP type.
        ("SELECT DATE_TRUNC(ts, MONTH) FROM dialect.events", "DATE_TRUNC on DATE values only"),
        ("SELECT CAST(name AS INT64) FROM dialect.events WHERE id = 2", "Bad int64 value: Beta, gamma"),
        # DuckDB sums INT64 into a 128-bit integer; BigQuery fails on INT64 overflow.
        (
            "SELECT SUM(x) FROM UNNEST([9223372036854775807, 9223372036854775807]) AS x",
            "does not fit BigQuery's INT64",
        ),
        ("SELECT ARRAY_AGG(user_id) FROM dialect.events", "ARRAY_AGG: an array cannot have a NULL element"),
    ],
    ids=["date-trunc-of-timestamp", "cast-bad-int64-string", "sum-overflow", "array-agg-null"],
)
def test_queries_bigquery_would_fail_fail_locally_too(sql, message, local_database):
    with pytest.raises(CauceError, match=message):
        on_local(local_database, sql)
