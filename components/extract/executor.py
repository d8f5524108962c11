"""Extract: run a query (or read a table), split its rows by a hashed key, write a Dataset.

The split is computed in SQL, so on BigQuery the warehouse does the work and
only the finished rows travel: every row gets

    ABS(MOD(FARM_FINGERPRINT(CAST(`key` AS STRING)), 1000))

(a bucket in 0..999 that depends only on the key) and the buckets are cut into
ranges proportional to the split ratios. The local engine implements
FARM_FINGERPRINT bit for bit, so a row lands in the same split on both backends.

A row whose key is NULL has no bucket: no split can hold it the same way on every
run, so it is marked in SQL (split index -1), left out of every split, counted
(``null_key_rows`` in the metadata and the run summary) and warned about; more than
``max_null_key_fraction`` of the rows with a NULL key fails the step instead (before
anything is written), since the splits would then silently hold a fraction of the data.

On BigQuery a dry run comes first: it checks the query, gives its columns and
the bytes it would process, and the cost guard (``maximum_bytes_billed``)
refuses the query before anything is billed. The rows then come back through
the Storage Read API (Arrow streams over gRPC, read in parallel) or through
REST pages (``read_api``).

The source may also come as a ``google.BQTable`` (``source_table``: the table id from GCPC's
metadata keys), read instead of ``source``; when what was read is a table, the step names it
back as a ``google.BQTable`` (``table_artifact``), so BigQuery tables keep their lineage
through extract.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from cauce.artifacts import CauceError, atomic_dir
from cauce.data import write_schema, write_split
from cauce.targets import TARGETS

from .bigquery_backend import DATASET_ID, PROJECT_ID, BigQueryBackend, QueryOutput, check_cost
from .local_engine import QueryParameter, run_query

_log = logging.getLogger(__name__)

READ_APIS = ("auto", "storage", "rest")
DEFAULT_SPLITS = {"train": 0.8, "eval": 0.2}
# Rows with a NULL key are dropped; past this fraction of the rows, extract fails.
MAX_NULL_KEY_FRACTION = 0.01
NULL_KEY_SPLIT = -1
HASH_BUCKETS = 1000
# The local engine is one project (a project qualifier is dropped): a google.BQTable naming
# one of its tables without a project of its own gets this one.
LOCAL_PROJECT = "local"
# Helper columns of the split query; a name no user query is expected to use.
BUCKET_COLUMN = "__cauce_bucket"
SPLIT_COLUMN = "__cauce_split"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a directory name cauce.data does not skip
_TABLE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
# Leading whitespace and comments (BigQuery accepts --, # and /* */) before the first keyword.
_LEADING_COMMENTS = re.compile(r"(?:\s+|--[^\n]*|#[^\n]*|/\*.*?\*/)*", re.DOTALL)
_QUERY_START = re.compile(r"(SELECT|WITH)\b", re.IGNORECASE)
_BIGQUERY_SCALAR_TYPES = {bool: "BOOL", int: "INT64", float: "FLOAT64", str: "STRING"}


@dataclass
class ExtractResult:
    split_rows: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    table_id: str = ""
    """``project.dataset.table`` of the table read, when the source was a table (not a query)."""


def run_extract(
    source: str,
    key_column: str,
    output_dir: str | os.PathLike,
    splits: Mapping[str, float] | None = None,
    target: str = "local",
    local_database: str | os.PathLike = "",
    project: str = "",
    bigquery_location: str = "US",
    bigquery_api_endpoint: str = "",
    query_parameters: Mapping[str, Any] | None = None,
    maximum_bytes_billed: int = 0,
    api_retry_timeout_s: float = 120.0,
    query_timeout_s: float | None = None,
    read_api: str = "auto",
    storage_api_endpoint: str = "",
    staging_dataset: str = "",
    identifiers: Mapping[str, str] | None = None,
    max_null_key_fraction: float = MAX_NULL_KEY_FRACTION,
    source_table: str = "",
) -> ExtractResult:
    """Run ``source``, split its rows by a hash of ``key_column``, write a cauce Dataset.

    Args:
        source: a table (``dataset.table`` or ``project.dataset.table``) or a
            BigQuery Standard SQL query starting with SELECT or WITH.
        key_column: the column whose value decides the split of a row (a STRING
            or INT64 id: other types are cast to STRING differently by the engines).
        output_dir: the Dataset artifact directory; written only if everything succeeds.
        splits: split name -> ratio; ratios > 0 summing to 1. Default 80/20 train/eval.
        target: "local" (the embedded engine, DuckDB file ``local_database``) or
            "google-cloud" (BigQuery).
        local_database: the local engine's DuckDB file; empty means
            ``cauce.paths.local_database()``.
        project: the BigQuery project that runs (and pays for) the query; empty
            means the credentials' default.
        bigquery_location: the BigQuery location of the query job.
        bigquery_api_endpoint: a BigQuery REST endpoint other than Google's (an emulator or
            a private endpoint); anonymous credentials are used with it.
        query_parameters: ``@name`` -> scalar or list, sent as typed query parameters.
        maximum_bytes_billed: the cost guard. When > 0, a query whose dry-run
            estimate exceeds it is refused before it runs, and BigQuery itself
            fails the job rather than bill more. 0 = no limit.
        api_retry_timeout_s: how long BigQuery API calls are retried on transient errors.
        query_timeout_s: how long to wait for the BigQuery job; None waits until it ends.
        read_api: how BigQuery results are read: "storage" (Storage Read API),
            "rest" (REST pages), or "auto": the Storage Read API where one is
            known (Google's, or ``storage_api_endpoint``), falling back to REST
            with a warning when it is unavailable (not enabled, permission
            denied, package missing).
        storage_api_endpoint: a Storage Read API endpoint other than Google's
            (``host:port``); a loopback host (an emulator) is reached over an
            insecure channel, any other over TLS.
        staging_dataset: ``dataset`` or ``project.dataset`` where the result is
            materialized as a table (read, then deleted; it expires after a day
            anyway) instead of BigQuery's anonymous result table. Needed for
            results over BigQuery's 10 GB response limit, and for Storage Read
            on bqemulator, which keeps no anonymous result tables.
        identifiers: values of ``${name}`` placeholders in ``source`` for the
            identifiers query parameters cannot carry (BigQuery parameters are
            values, never table names): names end in ``project``, ``dataset`` or
            ``table`` and each value is checked against that kind of identifier,
            so the same query text runs against the local engine and production.
        max_null_key_fraction: rows whose key is NULL belong to no split: they are
            dropped, counted (``null_key_rows``) and warned about while they are at most
            this fraction of the result (0: any NULL key fails; 1: never fail), and
            fail the step above it.
        source_table: a table id (``project.dataset.table``, as ``bigquery_table_id`` reads it
            from a ``google.BQTable``) read instead of ``source``; ``source`` may then be empty.
    """
    if target not in TARGETS:
        raise CauceError(f"target must be one of {TARGETS}, got {target!r}")
    backend = "local" if target == "local" else "bigquery"  # the engine, as the metadata names it
    if read_api not in READ_APIS:
        raise CauceError(f"read_api must be one of {READ_APIS}, got {read_api!r}")
    split_ratios = validate_splits(DEFAULT_SPLITS if splits is None else splits)
    column = validate_key_column(key_column)
    if isinstance(max_null_key_fraction, bool) or not isinstance(max_null_key_fraction, (int, float)) or not (
        0 <= max_null_key_fraction <= 1
    ):
        raise CauceError(f"max_null_key_fraction must be a fraction in [0, 1], got {max_null_key_fraction!r}")
    source = effective_source(source, source_table)
    query = source_query(render_identifiers(source, identifiers or {}))
    parameters = infer_query_parameters(query_parameters or {})
    split_sql = split_query(query, column, split_ratios)

    if backend == "local":
        database = local_database or _default_local_database()
        columns = run_query(database, _schema_probe(query), parameters).schema.names
        _check_result_columns(column, columns)
        table = run_query(database, split_sql, parameters)
        output = QueryOutput(table, bigquery_types={f.name: bigquery_type(f.type) for f in table.schema})
        output.details["local_engine"] = local_engine_snapshot(database)
    else:
        bigquery_backend = BigQueryBackend(
            project=project,
            location=bigquery_location,
            api_endpoint=bigquery_api_endpoint,
            parameters=parameters,
            maximum_bytes_billed=maximum_bytes_billed,
            api_retry_timeout_s=api_retry_timeout_s,
            query_timeout_s=query_timeout_s,
            read_api=read_api,
            storage_api_endpoint=storage_api_endpoint,
            staging_dataset=staging_dataset,
        )
        # The split wrapper adds no column reads, so the user query's estimate is the split query's.
        columns, bytes_estimated = bigquery_backend.dry_run(query)
        _check_result_columns(column, columns)
        check_cost(bytes_estimated, maximum_bytes_billed)
        output = bigquery_backend.run(split_sql)
        output.details = {"bytes_estimated": bytes_estimated, **output.details}
        project = project or bigquery_backend.default_project

    table = output.table
    if table.num_rows == 0:
        raise CauceError(f"query returned no rows: nothing to split into {list(split_ratios)}\nSQL:\n{query}")

    split_index = table.column(SPLIT_COLUMN)
    null_key_rows = _check_null_keys(split_index, column, max_null_key_fraction)
    rows = table.drop_columns([SPLIT_COLUMN])
    bigquery_types = {
        name: output.bigquery_types.get(name, bigquery_type(rows.schema.field(name).type))
        for name in rows.schema.names
    }
    split_rows: dict[str, int] = {}
    split_bytes: dict[str, int] = {}
    with atomic_dir(output_dir) as out:
        for index, name in enumerate(split_ratios):
            split_rows[name] = write_split(out, name, rows.filter(pc.equal(split_index, index)))
            split_bytes[name] = sum(part.stat().st_size for part in (Path(out) / name).glob("*.parquet"))
        # What lineage needs to rebuild this data (register gathers it into the model
        # version's record): the exact query, its inputs, and what the output hashed to.
        extra = {
            "query": query,
            "query_sha256": hashlib.sha256(query.encode()).hexdigest(),
            "query_parameters": dict(query_parameters or {}),
            "identifiers": dict(identifiers or {}),
            "tables": output.details.pop("referenced_tables", None) or referenced_tables(query),
            "split_fingerprints": {name: split_fingerprint(Path(out) / name) for name in split_ratios},
            "backend": backend,
            "key_column": column,
            "null_key_rows": null_key_rows,
            "split_ratios": split_ratios,
            "split_bytes": split_bytes,
            "rows": sum(split_rows.values()),
            "bytes_written": sum(split_bytes.values()),
            "bigquery_schema": bigquery_types,
            "maximum_bytes_billed": maximum_bytes_billed,
            **output.details,
        }
        write_schema(out, rows.schema, split_rows, **extra)

    metadata = {
        "split_rows": split_rows,
        "columns": rows.schema.names,
        "schema": {f.name: str(f.type) for f in rows.schema},
        **extra,
    }
    default_project = project or (LOCAL_PROJECT if backend == "local" else "")
    table_id = source_table_id(source, identifiers or {}, default_project)
    return ExtractResult(split_rows=split_rows, metadata=metadata, table_id=table_id)


def effective_source(source: str, source_table: str) -> str:
    """What extract reads: ``source_table`` (a table id) when given, else ``source``."""
    if not source_table:
        return source
    if isinstance(source, str) and source.strip():
        _log.warning("source_table %s is given: it is read, and source %r is not", source_table, source)
    return source_table


def source_table_id(source: str, identifiers: Mapping[str, str], default_project: str) -> str:
    """``project.dataset.table`` of the table ``source`` names (its placeholders filled), the
    project defaulting to ``default_project``; empty when ``source`` is a query."""
    rendered = render_identifiers(source, identifiers)
    body = rendered[_LEADING_COMMENTS.match(rendered).end() :]
    if _QUERY_START.match(body):
        return ""
    parts = _validate_table_reference(rendered.strip()).split(".")
    if len(parts) == 2 and default_project:
        parts.insert(0, default_project)
    return ".".join(parts) if len(parts) == 3 else ""


def table_artifact(table_id: str, target: str, local_database: str = "") -> tuple[str, dict[str, Any]]:
    """The ``uri`` and ``metadata`` of the ``google.BQTable`` naming ``table_id`` (GCPC's keys
    ``projectId``, ``datasetId``, ``tableId``): on BigQuery the table's REST URL, as GCPC ops
    write it; locally no URL (empty: the artifact keeps its own) and ``local_database``, the
    engine's file. An empty ``table_id`` (a query was read) gives no table metadata."""
    from cauce.artifact_types import bigquery_table_uri

    if not table_id:
        return "", {}
    project, dataset, table = table_id.split(".")
    metadata: dict[str, Any] = {"projectId": project, "datasetId": dataset, "tableId": table}
    if target == "local":
        return "", {**metadata, "local_database": str(local_database or _default_local_database())}
    return bigquery_table_uri(project, dataset, table), metadata


_TABLE_REFERENCE = re.compile(r"\b(?:FROM|JOIN)\s+`([^`]+)`|\b(?:FROM|JOIN)\s+([A-Za-z_][\w-]*(?:\.[\w-]+){1,2})\b", re.IGNORECASE)


def referenced_tables(query: str) -> list[str]:
    """The table ids a query names after FROM/JOIN, in order of appearance. BigQuery
    reports them itself (the job's ``referenced_tables``); the local engine does not,
    so its lineage reads them from the query text."""
    found = [quoted or bare for quoted, bare in _TABLE_REFERENCE.findall(query)]
    return list(dict.fromkeys(found))


def split_fingerprint(split_dir: Path) -> str:
    """``sha256:`` over a split's Parquet shards (name and bytes, in name order): equal
    fingerprints mean the same rows in the same order."""
    digest = hashlib.sha256()
    for part in sorted(split_dir.glob("*.parquet")):
        digest.update(f"{part.name}\0{part.stat().st_size}\0".encode())
        digest.update(part.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def local_engine_snapshot(database: str | os.PathLike) -> dict[str, Any]:
    """Which state of the local engine a query read: the database file, its size, time
    and hash (the local stand-in for a BigQuery job id, which names the data read)."""
    path = Path(database)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    stat = path.stat()
    return {"database": str(path), "bytes": stat.st_size, "modified": stat.st_mtime, "sha256": digest.hexdigest()}


def bigquery_type(arrow_type: pa.DataType) -> str:
    """The BigQuery type of a result column with this Arrow type (what the local engine's answer means)."""
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    if pa.types.is_integer(arrow_type):
        return "INT64"
    if pa.types.is_floating(arrow_type):
        return "FLOAT64"
    if pa.types.is_decimal(arrow_type):
        return "NUMERIC" if arrow_type.precision <= 38 and arrow_type.scale <= 9 else "BIGNUMERIC"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "STRING"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "BYTES"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP" if arrow_type.tz else "DATETIME"
    if pa.types.is_date(arrow_type):
        return "DATE"
    if pa.types.is_time(arrow_type):
        return "TIME"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"ARRAY<{bigquery_type(arrow_type.value_type)}>"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(f"{f.name} {bigquery_type(f.type)}" for f in arrow_type)
        return f"STRUCT<{fields}>"
    return str(arrow_type).upper()


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
            "source must be a table reference (dataset.table or project.dataset.table) or a query, "
            "or source_table a google.BQTable"
        )
    body = source[_LEADING_COMMENTS.match(source).end() :]
    if _QUERY_START.match(body):
        # A trailing ';' would end the statement inside the split query's parentheses.
        return source.strip().rstrip(";").rstrip()
    return f"SELECT * FROM `{_validate_table_reference(source.strip())}`"  # noqa: S608 - validated identifiers


_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# An identifier is checked by the kind its name ends with. Stricter than BigQuery (no
# '--', no trailing '-'), so a value can never start a comment or leave its backticks.
_IDENTIFIER_KINDS = {
    "project": (re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*"), "lowercase letters, digits and single '-', starting with a letter"),
    "dataset": (DATASET_ID, "letters, digits and '_'"),
    "table": (re.compile(r"[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*"), "letters, digits, '_' and single '-'"),
}


def render_identifiers(source: str, identifiers: Mapping[str, str]) -> str:
    """Fill ``${name}`` placeholders of ``source`` with checked identifiers.

    Query parameters carry values only: a project, dataset or table name cannot
    be one. These placeholders can, and only those: a name must end in
    ``project``, ``dataset`` or ``table`` and its value must be that kind of
    identifier; a placeholder without a value, or a value without a
    placeholder, is an error (a typo would otherwise query the wrong table).
    """
    if not isinstance(identifiers, Mapping):
        raise CauceError(f"identifiers must be a mapping of placeholder name to identifier, got {identifiers!r}")
    for name, value in identifiers.items():
        kind = next((k for k in _IDENTIFIER_KINDS if isinstance(name, str) and name.lower().endswith(k)), None)
        if kind is None or not _IDENTIFIER.fullmatch(name):
            raise CauceError(
                f"identifiers: name {name!r} must be a placeholder name ending in 'project', 'dataset' or 'table' "
                "(e.g. source_dataset), which says how its value is checked"
            )
        pattern, expected = _IDENTIFIER_KINDS[kind]
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise CauceError(f"identifiers: {name} = {value!r} is not a valid BigQuery {kind} id (expected {expected})")
    used = set(_PLACEHOLDER.findall(source)) if isinstance(source, str) else set()
    missing = sorted(used - set(identifiers))
    if missing:
        raise CauceError(f"source uses placeholder(s) {['${' + n + '}' for n in missing]} that identifiers does not define")
    unused = sorted(set(identifiers) - used)
    if unused:
        raise CauceError(f"identifiers {unused} are not used by source (write them as ${{name}} in the query)")
    if not used:
        return source
    return _PLACEHOLDER.sub(lambda match: identifiers[match.group(1)], source)


def _validate_table_reference(reference: str) -> str:
    unquoted = reference[1:-1] if len(reference) > 2 and reference[0] == reference[-1] == "`" else reference
    parts = unquoted.split(".")
    patterns = {2: (DATASET_ID, _TABLE_ID), 3: (PROJECT_ID, DATASET_ID, _TABLE_ID)}.get(len(parts))
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

    ABS is applied after MOD: ABS(INT64 minimum) overflows in BigQuery. A row whose
    key is NULL has no bucket (FARM_FINGERPRINT(NULL) is NULL) and gets the index
    NULL_KEY_SPLIT (-1): it belongs to no split.
    """
    bucket = f"ABS(MOD(FARM_FINGERPRINT(CAST(`{key_column}` AS STRING)), {HASH_BUCKETS}))"
    ranges = _bucket_ranges(split_ratios)
    cases = " ".join(
        f"WHEN {BUCKET_COLUMN} < {high} THEN {index}" for index, (_, high) in enumerate(ranges[:-1])
    )
    split_index = f"CASE WHEN {BUCKET_COLUMN} IS NULL THEN {NULL_KEY_SPLIT} {cases} ELSE {len(ranges) - 1} END"
    # The user query goes on lines of its own so that a trailing -- comment
    # cannot swallow the closing parenthesis.
    return (
        f"SELECT * EXCEPT ({BUCKET_COLUMN}), {split_index} AS {SPLIT_COLUMN}\n"  # noqa: S608 - validated identifiers
        f"FROM (SELECT *, {bucket} AS {BUCKET_COLUMN} FROM (\n{query}\n))"
    )


def _check_null_keys(split_index: pa.ChunkedArray, key_column: str, max_fraction: float) -> int:
    """How many rows have a NULL key (split index -1); fail past ``max_fraction``."""
    nulls = pc.sum(pc.equal(split_index, NULL_KEY_SPLIT)).as_py() or 0
    if not nulls:
        return 0
    total = len(split_index)
    if nulls / total > max_fraction:
        raise CauceError(
            f"key_column {key_column!r} is NULL in {nulls:,} of {total:,} rows ({nulls / total:.1%}), more than "
            f"max_null_key_fraction={max_fraction:g}: rows with a NULL key belong to no split and would be dropped. "
            "Choose a key that is never NULL (COALESCE it in the query, or key on another column), or raise "
            "max_null_key_fraction to drop them"
        )
    _log.warning(
        "key_column %r is NULL in %d of %d rows (%.2f%%): those rows belong to no split and were dropped",
        key_column, nulls, total, 100 * nulls / total,
    )  # fmt: skip
    return nulls


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
