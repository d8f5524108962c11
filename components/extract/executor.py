"""Extract: run a query (or read a table), split its rows by a hashed key, write a Dataset.

The split is computed in SQL, so on BigQuery the warehouse does the work and
only the finished rows travel: every row gets

    ABS(MOD(FARM_FINGERPRINT(CAST(`key` AS STRING)), 1000))

(a bucket in 0..999 that depends only on the key) and the buckets are cut into
ranges proportional to the split ratios. The local engine implements
FARM_FINGERPRINT bit for bit, so a row lands in the same split on both backends.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError, atomic_dir
from cauce.data import write_schema, write_split

from .local_engine import QueryParameter, run_query

BACKENDS = ("local", "bigquery")
DEFAULT_SPLITS = {"train": 0.8, "eval": 0.2}
HASH_BUCKETS = 1000
# Helper columns of the split query; a name no user query is expected to use.
BUCKET_COLUMN = "__cauce_bucket"
SPLIT_COLUMN = "__cauce_split"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a directory name cauce.data does not skip
_PROJECT_ID = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
_DATASET_ID = re.compile(r"[A-Za-z0-9_]+")
_TABLE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# Leading whitespace and comments (BigQuery accepts --, # and /* */) before the first keyword.
_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*|#[^\n]*|/\*.*?\*/)*", re.DOTALL)
_QUERY_START = re.compile(r"(SELECT|WITH)\b", re.IGNORECASE)
_BIGQUERY_SCALAR_TYPES = {bool: "BOOL", int: "INT64", float: "FLOAT64", str: "STRING"}


@dataclass
class ExtractResult:
    split_rows: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class _QueryOutput:
    table: pa.Table
    job_id: str | None = None
    bytes_processed: int | None = None


def run_extract(
    source: str,
    key_column: str,
    output_dir: str | os.PathLike,
    splits: Mapping[str, float] | None = None,
    backend: str = "local",
    local_database: str | os.PathLike = "",
    project: str = "",
    location: str = "US",
    api_endpoint: str = "",
    query_parameters: Mapping[str, Any] | None = None,
    maximum_bytes_billed: int = 0,
    api_retry_timeout_s: float = 120.0,
    query_timeout_s: float | None = None,
) -> ExtractResult:
    """Run ``source``, split its rows by a hash of ``key_column``, write a cauce Dataset.

    Args:
        source: a table (``dataset.table`` or ``project.dataset.table``) or a
            BigQuery Standard SQL query starting with SELECT or WITH.
        key_column: the column whose value decides the split of a row (a STRING
            or INT64 id: other types are cast to STRING differently by the engines).
        output_dir: the Dataset artifact directory; written only if everything succeeds.
        splits: split name -> ratio; ratios > 0 summing to 1. Default 80/20 train/eval.
        backend: "local" (DuckDB file ``local_database``) or "bigquery".
        local_database: the local engine's DuckDB file; empty means
            ``cauce.paths.local_database()``.
        project: the BigQuery project that runs (and pays for) the query; empty
            means the credentials' default.
        location: the BigQuery location of the query job.
        api_endpoint: a BigQuery REST endpoint other than Google's (an emulator or
            a private endpoint); anonymous credentials are used with it.
        query_parameters: ``@name`` -> scalar or list, sent as typed query parameters.
        maximum_bytes_billed: BigQuery fails the query instead of billing more; 0 = no limit.
        api_retry_timeout_s: how long BigQuery API calls are retried on transient errors.
        query_timeout_s: how long to wait for the BigQuery job; None waits until it ends.
    """
    if backend not in BACKENDS:
        raise CauceError(f"backend must be one of {BACKENDS}, got {backend!r}")
    split_ratios = validate_splits(DEFAULT_SPLITS if splits is None else splits)
    column = validate_key_column(key_column)
    query = source_query(source)
    parameters = infer_query_parameters(query_parameters or {})
    split_sql = split_query(query, column, split_ratios)

    if backend == "local":
        database = local_database or _default_local_database()
        columns = run_query(database, _schema_probe(query), parameters).schema.names
        _check_result_columns(column, columns)
        output = _QueryOutput(run_query(database, split_sql, parameters))
    else:
        bigquery_backend = _BigQueryBackend(
            project=project,
            location=location,
            api_endpoint=api_endpoint,
            parameters=parameters,
            maximum_bytes_billed=maximum_bytes_billed,
            api_retry_timeout_s=api_retry_timeout_s,
            query_timeout_s=query_timeout_s,
        )
        _check_result_columns(column, bigquery_backend.dry_run_columns(query))
        output = bigquery_backend.run(split_sql)

    table = output.table
    if table.num_rows == 0:
        raise CauceError(f"query returned no rows: nothing to split into {list(split_ratios)}\nSQL:\n{query}")

    split_index = table.column(SPLIT_COLUMN)
    rows = table.drop_columns([SPLIT_COLUMN])
    split_rows: dict[str, int] = {}
    with atomic_dir(output_dir) as out:
        for index, name in enumerate(split_ratios):
            split_rows[name] = write_split(out, name, rows.filter(pc.equal(split_index, index)))
        extra = {"query": query, "backend": backend, "key_column": column, "split_ratios": split_ratios}
        if output.job_id is not None:
            extra["job_id"] = output.job_id
        if output.bytes_processed is not None:
            extra["bytes_processed"] = output.bytes_processed
        write_schema(out, rows.schema, split_rows, **extra)

    metadata = {
        "split_rows": split_rows,
        "rows": sum(split_rows.values()),
        "columns": rows.schema.names,
        **extra,
    }
    return ExtractResult(split_rows=split_rows, metadata=metadata)


def validate_splits(splits: Mapping[str, float]) -> dict[str, float]:
    """Return the splits in name order, after checking names and ratios.

    Hash buckets are assigned to splits in name order, not in the order of the
    mapping: a KFP ``dict`` parameter travels as a protobuf Struct, which does
    not keep key order, and the assignment must not depend on it.
    """
    if not isinstance(splits, Mapping) or not splits:
        raise CauceError(f"splits must be a non-empty mapping of split name to ratio, got {splits!r}")
    for name, ratio in splits.items():
        if not isinstance(name, str) or not _SPLIT_NAME.fullmatch(name):
            raise CauceError(
                f"splits: split name {name!r} must be letters, digits, '_' or '-' and start with a letter or digit"
            )
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise CauceError(f"splits: ratio of split {name!r} must be a number > 0, got {ratio!r}")
    total = math.fsum(splits.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise CauceError(f"splits: ratios must sum to 1, got {total:g} from {dict(splits)}")
    ordered = {name: float(splits[name]) for name in sorted(splits)}
    for name, (low, high) in zip(ordered, _bucket_ranges(ordered)):
        if low == high:
            raise CauceError(
                f"splits: ratio {ordered[name]:g} of split {name!r} is below 1/{HASH_BUCKETS}, "
                f"the smallest share the hash split can give"
            )
    return ordered


def validate_key_column(key_column: str) -> str:
    if not isinstance(key_column, str) or not _IDENTIFIER.fullmatch(key_column):
        raise CauceError(
            f"key_column must be a column name (letters, digits and '_', not starting with a digit), got {key_column!r}"
        )
    return key_column


def source_query(source: str) -> str:
    """The query to run for ``source``: the query itself, or a SELECT * of the table.

    A table reference is checked character by character before it is quoted
    into SQL: it is the one piece of user text that is not run as a query.
    """
    if not isinstance(source, str) or not source.strip():
        raise CauceError(
            "source must be a table reference (dataset.table or project.dataset.table) or a query"
        )
    body = source[_LEADING_COMMENTS.match(source).end() :]
    if _QUERY_START.match(body):
        # A trailing ';' would end the statement inside the split query's parentheses.
        return source.strip().rstrip(";").rstrip()
    return f"SELECT * FROM `{_validate_table_reference(source.strip())}`"  # noqa: S608 - validated identifiers


def _validate_table_reference(reference: str) -> str:
    unquoted = reference[1:-1] if len(reference) > 2 and reference[0] == reference[-1] == "`" else reference
    parts = unquoted.split(".")
    patterns = {2: (_DATASET_ID, _TABLE_ID), 3: (_PROJECT_ID, _DATASET_ID, _TABLE_ID)}.get(len(parts))
    if patterns is None or not all(p.fullmatch(part) for p, part in zip(patterns, parts)):
        raise CauceError(
            f"source {reference!r} is neither a query (starting with SELECT or WITH) nor a table reference "
            "dataset.table or project.dataset.table (project: lowercase letters, digits, '-'; "
            "dataset: letters, digits, '_'; table: letters, digits, '_', '-')"
        )
    return unquoted


def infer_query_parameters(values: Mapping[str, Any]) -> list[QueryParameter]:
    """Type each ``@name`` value the way BigQuery needs it.

    KFP passes a ``dict`` parameter as a protobuf Struct, where every number is
    a double: a whole-number float is therefore sent as INT64 (so ``LIMIT @n``
    and INT64 comparisons work after a trip through a pipeline).
    """
    parameters = []
    for name, value in values.items():
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise CauceError(f"query_parameters: {name!r} is not a valid parameter name")
        if isinstance(value, (list, tuple)):
            if not value:
                raise CauceError(
                    f"query_parameters: {name!r} is an empty list, whose element type cannot be inferred"
                )
            elements = [_normalize_number(element) for element in value]
            element_types = {_scalar_type(name, element) for element in elements}
            if element_types == {"INT64", "FLOAT64"}:
                element_types = {"FLOAT64"}
                elements = [float(element) for element in elements]
            if len(element_types) != 1:
                raise CauceError(f"query_parameters: list {name!r} mixes types {sorted(element_types)}")
            parameters.append(QueryParameter(name, element_types.pop(), elements))
        else:
            scalar = _normalize_number(value)
            parameters.append(QueryParameter(name, _scalar_type(name, scalar), scalar))
    return parameters


def _normalize_number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _scalar_type(name: str, value: Any) -> str:
    bigquery_type = _BIGQUERY_SCALAR_TYPES.get(type(value))
    if bigquery_type is None:
        raise CauceError(
            f"query_parameters: {name!r} has a value of type {type(value).__name__}; "
            "expected a string, number, boolean or a list of one of those"
        )
    return bigquery_type


def split_query(query: str, key_column: str, split_ratios: Mapping[str, float]) -> str:
    """Wrap ``query`` so that every row also carries its split index in SPLIT_COLUMN.

    ABS is applied after MOD: ABS(INT64 minimum) overflows in BigQuery. Rows
    whose key is NULL have no bucket and fall into the last split (in name order).
    """
    bucket = f"ABS(MOD(FARM_FINGERPRINT(CAST(`{key_column}` AS STRING)), {HASH_BUCKETS}))"
    ranges = _bucket_ranges(split_ratios)
    cases = " ".join(
        f"WHEN {BUCKET_COLUMN} < {high} THEN {index}" for index, (_, high) in enumerate(ranges[:-1])
    )
    split_index = f"CASE {cases} ELSE {len(ranges) - 1} END" if cases else "0"
    # The user query goes on lines of its own so that a trailing -- comment
    # cannot swallow the closing parenthesis.
    return (
        f"SELECT * EXCEPT ({BUCKET_COLUMN}), {split_index} AS {SPLIT_COLUMN}\n"  # noqa: S608 - validated identifiers
        f"FROM (SELECT *, {bucket} AS {BUCKET_COLUMN} FROM (\n{query}\n))"
    )


def _bucket_ranges(split_ratios: Mapping[str, float]) -> list[tuple[int, int]]:
    """[low, high) bucket range per split, cumulative so the ranges tile 0..HASH_BUCKETS."""
    ranges, cumulative, low = [], 0.0, 0
    for ratio in split_ratios.values():
        cumulative += ratio
        high = min(HASH_BUCKETS, round(cumulative * HASH_BUCKETS))
        ranges.append((low, high))
        low = high
    ranges[-1] = (ranges[-1][0], HASH_BUCKETS)
    return ranges


def _schema_probe(query: str) -> str:
    return f"SELECT * FROM (\n{query}\n) LIMIT 0"  # noqa: S608 - the user's own query


def _check_result_columns(key_column: str, columns: list[str]) -> None:
    # Both engines resolve column names case-insensitively.
    lowered = [column.lower() for column in columns]
    if key_column.lower() not in lowered:
        raise CauceError(
            f"key_column {key_column!r} is not a column of the query result; columns present: {columns}"
        )
    for helper in (BUCKET_COLUMN, SPLIT_COLUMN):
        if helper in lowered:
            raise CauceError(f"the query result has a column named {helper!r}, which extract reserves")


def _default_local_database() -> str:
    from cauce.paths import local_database

    return str(local_database())


class _BigQueryBackend:
    """Runs queries through the real BigQuery client (or an emulator at api_endpoint)."""

    def __init__(
        self,
        project: str,
        location: str,
        api_endpoint: str,
        parameters: list[QueryParameter],
        maximum_bytes_billed: int,
        api_retry_timeout_s: float,
        query_timeout_s: float | None,
    ) -> None:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import bigquery
        from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

        if maximum_bytes_billed < 0:
            raise CauceError(f"maximum_bytes_billed must be >= 0 (0 = no limit), got {maximum_bytes_billed}")
        self._bigquery = bigquery
        try:
            self._client = bigquery.Client(
                project=project or None,
                location=location or None,
                client_options=ClientOptions(api_endpoint=api_endpoint) if api_endpoint else None,
                credentials=AnonymousCredentials() if api_endpoint else None,
            )
        except DefaultCredentialsError as error:
            raise CauceError(f"no Google Cloud credentials for the bigquery backend: {error}") from error
        # The Storage Read API streams large results fast, but a custom endpoint
        # (an emulator, a private endpoint) serves only REST.
        self._use_storage_api = not api_endpoint
        self._query_parameters = [self._to_bigquery(parameter) for parameter in parameters]
        self._maximum_bytes_billed = maximum_bytes_billed or None
        # The client's defaults retry a 5xx for 10 minutes or more; a step should fail sooner.
        self._retry = DEFAULT_RETRY.with_timeout(api_retry_timeout_s)
        self._job_retry = DEFAULT_JOB_RETRY.with_timeout(api_retry_timeout_s)
        self._query_timeout_s = query_timeout_s

    def _to_bigquery(self, parameter: QueryParameter):
        if parameter.is_array:
            return self._bigquery.ArrayQueryParameter(parameter.name, parameter.type, parameter.value)
        return self._bigquery.ScalarQueryParameter(parameter.name, parameter.type, parameter.value)

    def dry_run_columns(self, query: str) -> list[str]:
        """Validate ``query`` and return its column names; a dry run bills nothing."""
        config = self._bigquery.QueryJobConfig(
            dry_run=True, use_query_cache=False, query_parameters=self._query_parameters
        )
        job = self._call(query, lambda: self._insert(query, config))
        return [schema_field.name for schema_field in job.schema or []]

    def run(self, sql: str) -> _QueryOutput:
        config = self._bigquery.QueryJobConfig(
            query_parameters=self._query_parameters, maximum_bytes_billed=self._maximum_bytes_billed
        )

        def run_to_arrow() -> _QueryOutput:
            job = self._insert(sql, config)
            rows = job.result(retry=self._retry, timeout=self._query_timeout_s, job_retry=self._job_retry)
            table = rows.to_arrow(create_bqstorage_client=self._use_storage_api, progress_bar_type=None)
            return _QueryOutput(table, job_id=job.job_id, bytes_processed=job.total_bytes_processed)

        return self._call(sql, run_to_arrow)

    def _insert(self, sql: str, config):
        # Any job_retry other than None makes client.query() wrap the insert in
        # its own fixed 10-minute retry, whatever job_retry says; ``retry`` alone
        # bounds the insert, and result() re-runs failed jobs with job_retry.
        return self._client.query(sql, job_config=config, retry=self._retry, job_retry=None)

    @staticmethod
    def _call(sql: str, request):
        from concurrent.futures import TimeoutError as FutureTimeoutError

        from google.api_core.exceptions import GoogleAPIError

        try:
            return request()
        except (GoogleAPIError, FutureTimeoutError) as error:
            raise CauceError(f"BigQuery query failed: {error}\nSQL:\n{sql}") from error
