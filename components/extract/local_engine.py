"""The embedded local BigQuery engine: BigQuery Standard SQL run on a DuckDB file.

Users write the same SQL they would send to BigQuery. sqlglot translates it to
DuckDB's dialect, and the pieces DuckDB lacks are filled in here:

* ``FARM_FINGERPRINT`` is a vectorized UDF over FarmHash Fingerprint64 (the
  function BigQuery uses), so hash-based splits put every row in the same split
  locally and on BigQuery.
* BigQuery named parameters (``@name``) become DuckDB bound parameters
  (``$name``); values are never formatted into the SQL text.
* The local engine is one project: a project qualifier on a table name
  (``project.dataset.table``) is dropped, so one query text serves both engines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import farmhash
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from cauce.artifacts import CauceError

# BigQuery parameter types -> the DuckDB types they are bound as, so a parameter
# has the same type (and a query the same result schema) on both engines.
DUCKDB_PARAMETER_TYPES = {"BOOL": "BOOLEAN", "INT64": "BIGINT", "FLOAT64": "DOUBLE", "STRING": "VARCHAR"}
# sqlglot underlines the offending token of a parse error with terminal escape codes.
_TERMINAL_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class QueryParameter:
    """A typed BigQuery named parameter: ``@name`` in the query."""

    name: str
    type: str
    """BigQuery type of the value (of each element, for an array): a key of DUCKDB_PARAMETER_TYPES."""
    value: Any
    """A Python scalar, or a list for an ARRAY<type> parameter."""

    @property
    def is_array(self) -> bool:
        return isinstance(self.value, list)

    def to_duckdb(self) -> duckdb.Value:
        element_type = duckdb.sqltype(DUCKDB_PARAMETER_TYPES[self.type])
        if self.is_array:
            return duckdb.Value(self.value, duckdb.list_type(element_type))
        return duckdb.Value(self.value, element_type)


@dataclass(frozen=True)
class TranspiledQuery:
    sql: str
    """The query in DuckDB's dialect."""
    parameter_names: frozenset[str]
    """The named parameters the query references (without the ``@``)."""


def transpile(sql: str) -> TranspiledQuery:
    """Translate one BigQuery Standard SQL statement into DuckDB SQL."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except SqlglotError as error:
        message = _TERMINAL_ESCAPES.sub("", str(error))
        raise CauceError(f"query is not valid BigQuery SQL: {message}\nSQL:\n{sql}") from error
    if len(statements) != 1:
        raise CauceError(f"expected exactly one SQL statement, got {len(statements)}\nSQL:\n{sql}")
    statement = statements[0]
    for table in statement.find_all(exp.Table):
        table.set("catalog", None)
    parameter_names = frozenset(parameter.name for parameter in statement.find_all(exp.Parameter))
    try:
        # By default sqlglot only logs what it cannot translate and emits SQL that
        # means something else; fail with its reason instead.
        duckdb_sql = statement.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as error:
        raise CauceError(f"the local engine cannot run this query: {error}\nSQL:\n{sql}") from error
    return TranspiledQuery(sql=duckdb_sql, parameter_names=parameter_names)


def farm_fingerprint(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """BigQuery's ``FARM_FINGERPRINT`` over an Arrow string array (NULL stays NULL).

    pyfarmhash returns the unsigned 64-bit fingerprint; BigQuery returns the same
    bits as a signed INT64, which is what the wrapping cast produces.
    """
    fingerprints = [None if value is None else farmhash.fingerprint64(value) for value in values.to_pylist()]
    return pa.array(fingerprints, pa.uint64()).cast(pa.int64(), safe=False)


def connect(database: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """Open the local database read-only, with BigQuery's functions and time zone."""
    path = Path(database)
    if not path.is_file():
        raise CauceError(f"local_database {str(path)!r} not found: expected a DuckDB database file")
    try:
        connection = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        raise CauceError(f"could not open local_database {str(path)!r}: {error}") from error
    # sqlglot keeps the name FARM_FINGERPRINT; DuckDB resolves function names
    # case-insensitively, so the translated call lands here.
    connection.create_function(
        "farm_fingerprint",
        farm_fingerprint,
        [duckdb.sqltype("VARCHAR")],
        duckdb.sqltype("BIGINT"),
        type="arrow",
        null_handling="special",
        side_effects=False,
    )
    # BigQuery TIMESTAMPs are UTC; without this DuckDB renders them in the host's zone.
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def run_query(database: str | os.PathLike, sql: str, parameters: Sequence[QueryParameter] = ()) -> pa.Table:
    """Run one BigQuery Standard SQL query on the local database and return its rows.

    Only the parameters the query references are bound: like BigQuery, the
    engine ignores extra ones (DuckDB alone would reject them).
    """
    query = transpile(sql)
    by_name = {parameter.name: parameter for parameter in parameters}
    missing = sorted(query.parameter_names - by_name.keys())
    if missing:
        raise CauceError(
            f"query references parameter(s) {missing} that query_parameters does not define\nSQL:\n{sql}"
        )
    bound = {name: by_name[name].to_duckdb() for name in query.parameter_names}
    connection = connect(database)
    try:
        return connection.execute(query.sql, bound).to_arrow_table()
    except duckdb.Error as error:
        raise CauceError(f"local query failed: {error}\nSQL:\n{sql}") from error
    finally:
        connection.close()
