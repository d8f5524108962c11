"""The embedded local BigQuery engine: BigQuery Standard SQL run on a DuckDB file.

Users write the same SQL they would send to BigQuery. sqlglot translates it to
DuckDB's dialect, and the pieces DuckDB lacks are filled in here:

* ``FARM_FINGERPRINT`` is a vectorized UDF over FarmHash Fingerprint64 (the
  function BigQuery uses), so hash-based splits put every row in the same split
  locally and on BigQuery.
* BigQuery named parameters (``@name``) become DuckDB bound parameters
  (``$name``); values are never formatted into the SQL text.
* Where DuckDB's function of the same name answers differently (EXTRACT(DAYOFWEEK),
  DATE_TRUNC's result type, FORMAT, CAST to INT64 rounding, ...), the query is
  rewritten to BigQuery's answer or refused naming the construct
  (``apply_bigquery_semantics``); results come back with BigQuery's types
  (INT64, FLOAT64), checked for INT64 overflow.
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
    """Translate one BigQuery Standard SQL statement into DuckDB SQL, or refuse it
    naming the construct (:func:`refuse_outside_bigquery`)."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="bigquery") if s is not None]
    except SqlglotError as error:
        first = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        if first in _DUCKDB_STATEMENTS:
            raise refused(f"the {first} statement", _ONLY_SELECT) from None
        message = _TERMINAL_ESCAPES.sub("", str(error))
        raise CauceError(f"query is not valid BigQuery SQL: {message}\nSQL:\n{sql}") from error
    if len(statements) != 1:
        raise refused(f"multi-statement text ({len(statements)} statements)", _ONLY_SELECT)
    statement = statements[0]
    refuse_outside_bigquery(statement)
    for table in statement.find_all(exp.Table):
        table.set("catalog", None)
    apply_bigquery_semantics(statement)
    parameter_names = frozenset(parameter.name for parameter in statement.find_all(exp.Parameter))
    try:
        # By default sqlglot only logs what it cannot translate and emits SQL that
        # means something else; fail with its reason instead.
        duckdb_sql = statement.sql(dialect="duckdb", unsupported_level=ErrorLevel.RAISE)
    except SqlglotError as error:
        raise CauceError(f"the local engine cannot run this query: {error}\nSQL:\n{sql}") from error
    return TranspiledQuery(sql=duckdb_sql, parameter_names=parameter_names)


# --------------------------------------------------------------------------- what the engine runs
# An allow-list over the parsed tree: one SELECT (WITH, UNION/INTERSECT/EXCEPT,
# subqueries, UNNEST) over tables of the database, calling functions sqlglot knows as
# BigQuery's. Everything else DuckDB could run (file readers such as read_csv, ATTACH,
# COPY, INSTALL/LOAD, PRAGMA, SET, DDL/DML, its own table and scalar functions) is
# refused naming it; the connection also has external access disabled (connect), so
# nothing outside the database file is reachable even through a construct missed here.
_ONLY_SELECT = "the local engine runs one BigQuery SELECT query (WITH, UNION, subqueries and UNNEST included), as extract does on BigQuery"
_DUCKDB_STATEMENTS = {
    "ATTACH", "DETACH", "COPY", "INSTALL", "LOAD", "PRAGMA", "SET", "RESET", "CALL", "EXPORT", "IMPORT", "CREATE",
    "INSERT", "UPDATE", "DELETE", "MERGE", "DROP", "ALTER", "TRUNCATE", "USE", "DESCRIBE", "SHOW", "SUMMARIZE",
    "CHECKPOINT", "VACUUM", "BEGIN", "COMMIT", "ROLLBACK", "EXPLAIN", "PIVOT", "UNPIVOT", "FROM",
}  # fmt: skip
_QUERY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)
_NOT_QUERIES = (exp.DML, exp.DDL, exp.Command, exp.Set, exp.Pragma, exp.Copy, exp.Describe, exp.Use)


def refused(construct: str, reason: str) -> CauceError:
    return CauceError(f"the local engine refuses {construct}: {reason}. It runs BigQuery SQL and nothing more.")


def refuse_outside_bigquery(statement: exp.Expression) -> None:
    """Raise CauceError naming the first construct of ``statement`` outside what the
    local engine runs (see above)."""
    if not isinstance(statement, _QUERY_ROOTS):
        raise refused(f"the statement {_statement_name(statement)}", _ONLY_SELECT)
    for node in statement.walk():
        if isinstance(node, _NOT_QUERIES):
            raise refused(f"the statement {_statement_name(node)} inside the query", _ONLY_SELECT)
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            name = _function_name(node.this)
            raise refused(
                f"the table function {name}",
                "BigQuery reads tables, not files or DuckDB table functions; load the data into a table of the "
                "local database",
            )
        if isinstance(node, exp.Anonymous):
            raise refused(
                f"the function {node.name.upper()}",
                "it is not a BigQuery function the local engine translates (sqlglot does not know it as BigQuery's)",
            )
        if isinstance(node, exp.ArrayAgg) and node.find(exp.Limit) is not None:
            raise unfaithful("ARRAY_AGG(... LIMIT n)", "DuckDB has no LIMIT inside an aggregate")


def _statement_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.upper()
    return (node.sql_name() if isinstance(node, exp.Func) else node.key).upper()


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
        # No files, extensions or databases beyond this one, whatever the query says
        # (the allow-list in refuse_outside_bigquery names what it refuses first).
        connection = duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
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
    connection.execute("SET lock_configuration = true")
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
        result = connection.execute(query.sql, bound)
        duckdb_types = [str(column[1]) for column in result.description]
        return to_bigquery_types(result.to_arrow_table(), duckdb_types)
    except duckdb.ParserException as error:
        # sqlglot produced SQL DuckDB cannot parse: a construct it could not translate.
        raise CauceError(f"the local engine cannot translate this query ({error})\nSQL:\n{sql}") from error
    except duckdb.Error as error:
        raise CauceError(f"local query failed: {error}\nSQL:\n{sql}") from error
    finally:
        connection.close()


# --------------------------------------------------------------------------- BigQuery semantics
# sqlglot translates syntax; where DuckDB's function of the same name gives another
# answer than BigQuery's, the AST is rewritten below to BigQuery's answer, or the
# query is refused with the construct named. Each rule was checked against
# BigQuery's documented behaviour (tests/test_bigquery_dialect.py).

_FORMAT_SPECIFIER = re.compile(
    r"%(?P<flags>[-+ #0']*)(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?(?P<type>.?)"
)
# FORMAT specifiers that C printf (DuckDB's PRINTF) renders as BigQuery does.
_PRINTF_TYPES = set("dioxXfFeEgGs%")
_DATE_UNITS = {"DAY", "MONTH", "QUARTER", "YEAR", "WEEK", "ISOWEEK"}
_TIMESTAMP_UNITS = _DATE_UNITS | {"HOUR", "MINUTE", "SECOND", "MILLISECOND", "MICROSECOND"}
_INTEGER_STRING = r"[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)"
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg)


def unfaithful(construct: str, reason: str) -> CauceError:
    return CauceError(
        f"the local engine cannot run {construct} faithfully: {reason}. "
        "Rewrite that part of the query, or run it on the bigquery backend."
    )


def _duckdb(template: str, **nodes: exp.Expression) -> exp.Expression:
    """A DuckDB expression from ``template``, its placeholder columns replaced by ``nodes``."""
    tree = sqlglot.parse_one(template, read="duckdb")
    for column in list(tree.find_all(exp.Column)):
        if column.name in nodes and not column.table:
            column.replace(nodes[column.name].copy())
    return tree


def _unit_name(unit: exp.Expression | None) -> str:
    if isinstance(unit, exp.WeekStart):
        return f"WEEK({unit.name.upper()})"
    return "" if unit is None else unit.name.upper()


def _week_trunc(unit: str, operand: exp.Expression) -> exp.Expression:
    """DATE_TRUNC to BigQuery's WEEK (starting on Sunday) or ISOWEEK (Monday); DuckDB's week is ISO."""
    if unit == "ISOWEEK":
        return _duckdb("DATE_TRUNC('week', _x_)", _x_=operand)
    return _duckdb("DATE_TRUNC('week', _x_ + INTERVAL 1 DAY) - INTERVAL 1 DAY", _x_=operand)


def _rewrite_extract(node: exp.Extract) -> exp.Expression:
    unit, operand = _unit_name(node.this), node.expression
    if unit == "DAYOFWEEK":  # BigQuery: 1 = Sunday .. 7 = Saturday; DuckDB: 0 = Sunday
        return _duckdb("(DAYOFWEEK(_x_) + 1)", _x_=operand)
    if unit == "WEEK":  # BigQuery: weeks start on Sunday, days before the first Sunday are week 0
        return _duckdb("((DAYOFYEAR(_x_) + 6 - DAYOFWEEK(_x_)) // 7)", _x_=operand)
    if unit == "ISOWEEK":
        return _duckdb("WEEK(_x_)", _x_=operand)
    if unit == "ISOYEAR":
        return _duckdb("ISOYEAR(_x_)", _x_=operand)
    if unit.startswith("WEEK("):
        raise unfaithful(f"EXTRACT({unit} FROM ...)", "weeks starting on a given weekday are not translated")
    return node


def _rewrite_date_trunc(node: exp.DateTrunc) -> exp.Expression:
    unit, operand = _unit_name(node.args.get("unit")), node.this
    if unit not in _DATE_UNITS:
        raise unfaithful(
            f"DATE_TRUNC(..., {unit})", f"the local engine truncates a DATE to {sorted(_DATE_UNITS)}"
        )
    truncated = (
        _week_trunc(unit, operand) if "WEEK" in unit else _duckdb(f"DATE_TRUNC('{unit}', _x_)", _x_=operand)
    )
    # DuckDB's DATE_TRUNC of a DATE is a TIMESTAMP; BigQuery's is a DATE. A TIMESTAMP
    # argument fails at run time rather than losing its type silently.
    return _duckdb(
        "CASE WHEN TYPEOF(_x_) = 'DATE' THEN CAST(_t_ AS DATE) ELSE ERROR('the local engine runs DATE_TRUNC on "
        "DATE values only, not ' || TYPEOF(_x_) || ': use TIMESTAMP_TRUNC or DATETIME_TRUNC') END",
        _x_=operand,
        _t_=truncated,
    )


def _rewrite_date_add(node: exp.DateAdd | exp.DateSub) -> exp.Expression:
    # DuckDB's DATE + INTERVAL is a TIMESTAMP; BigQuery's DATE_ADD/DATE_SUB give a DATE.
    name = "DATE_ADD" if isinstance(node, exp.DateAdd) else "DATE_SUB"
    return _duckdb(
        f"CASE WHEN TYPEOF(_x_) = 'DATE' THEN CAST(_r_ AS DATE) ELSE ERROR('the local engine runs {name} on "
        "DATE values only, not ' || TYPEOF(_x_) || ': use TIMESTAMP_ADD or DATETIME_ADD') END",
        _x_=node.this,
        _r_=node,
    )


def _rewrite_timestamp_trunc(node: exp.TimestampTrunc | exp.DatetimeTrunc) -> exp.Expression:
    name = "TIMESTAMP_TRUNC" if isinstance(node, exp.TimestampTrunc) else "DATETIME_TRUNC"
    unit = _unit_name(node.args.get("unit"))
    if node.args.get("zone") is not None:
        raise unfaithful(f"{name} with a time zone", "the local engine truncates in UTC only")
    if unit not in _TIMESTAMP_UNITS:
        raise unfaithful(f"{name}(..., {unit})", f"the local engine truncates to {sorted(_TIMESTAMP_UNITS)}")
    if "WEEK" in unit:
        operand = node.this if name == "TIMESTAMP_TRUNC" else exp.cast(node.this, "TIMESTAMP")
        return _week_trunc(unit, operand)
    return node


def _rewrite_cast_to_int64(node: exp.Cast) -> exp.Expression:
    """CAST/SAFE_CAST(x AS INT64) with BigQuery's rules DuckDB does not share.

    A FLOAT64 rounds half away from zero (DuckDB: half to even, 2.5 -> 2); a
    STRING must be an integer literal (DuckDB reads '1.5' as 2).
    """
    safe = isinstance(node, exp.TryCast) or bool(node.args.get("safe"))
    invalid = "NULL" if safe else "ERROR('Bad int64 value: ' || CAST(_x_ AS VARCHAR))"
    convert = "TRY_CAST" if safe else "CAST"
    return _duckdb(
        f"CASE WHEN TYPEOF(_x_) IN ('DOUBLE', 'FLOAT') THEN {convert}(ROUND(TRY_CAST(_x_ AS DOUBLE)) AS BIGINT) "
        f"WHEN TYPEOF(_x_) = 'VARCHAR' AND NOT REGEXP_FULL_MATCH(TRY_CAST(_x_ AS VARCHAR), '{_INTEGER_STRING}') "
        f"THEN {invalid} ELSE {convert}(_x_ AS BIGINT) END",
        _x_=node.this,
    )


def _rewrite_format(node: exp.Format) -> exp.Expression:
    pattern = node.this
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        raise unfaithful(
            "FORMAT with a format string that is not a literal", "its specifiers cannot be checked"
        )
    for specifier in _FORMAT_SPECIFIER.finditer(pattern.this):
        kind = specifier["type"]
        if kind not in _PRINTF_TYPES or "'" in specifier["flags"] or "*" in specifier.group(0):
            raise unfaithful(
                f"FORMAT specifier {specifier.group(0)!r}",
                "only %d %i %o %x %X %f %F %e %E %g %G %s %% with flags, width and precision are translated",
            )
    # DuckDB's FORMAT takes {} placeholders and would print the pattern unchanged.
    return exp.Anonymous(this="PRINTF", expressions=[pattern.copy(), *(e.copy() for e in node.expressions)])


def _rewrite_regexp_extract(node: exp.RegexpExtract) -> exp.Expression:
    if node.args.get("position") is not None or node.args.get("occurrence") is not None:
        raise unfaithful("REGEXP_EXTRACT with a position or occurrence", "only the first match is translated")
    # BigQuery gives NULL when the pattern does not match; DuckDB gives ''.
    return _duckdb(
        "CASE WHEN REGEXP_MATCHES(_s_, _r_) THEN _e_ END", _s_=node.this, _r_=node.expression, _e_=node
    )


def _aggregated_value(node: exp.ArrayAgg) -> exp.Expression:
    value = node.this
    while isinstance(value, (exp.Limit, exp.Order)):
        value = value.this
    if isinstance(value, exp.Distinct):
        value = value.expressions[0]
    return value


def _rewrite_array_agg(node: exp.ArrayAgg) -> exp.Expression:
    if isinstance(node.parent, (exp.IgnoreNulls, exp.Window)):
        return node
    # BigQuery fails a query whose ARRAY_AGG meets a NULL; DuckDB puts the NULL in the array.
    return _duckdb(
        "CASE WHEN BOOL_OR(_v_ IS NULL) THEN ERROR('ARRAY_AGG: an array cannot have a NULL element "
        "(BigQuery fails the query too); add IGNORE NULLS') ELSE _a_ END",
        _v_=_aggregated_value(node),
        _a_=node,
    )


def _rewrite_ignore_nulls(node: exp.IgnoreNulls) -> exp.Expression:
    if not isinstance(node.this, exp.ArrayAgg) or isinstance(node.parent, exp.Window):
        return node
    value = _aggregated_value(node.this)
    return exp.Filter(
        this=node.this.copy(),
        expression=exp.Where(this=exp.not_(exp.Is(this=value.copy(), expression=exp.Null()))),
    )


def _rewrite_literal(node: exp.Literal) -> exp.Expression:
    if node.is_string:
        return node
    if any(mark in node.this for mark in ".eE"):
        return exp.cast(node.copy(), "DOUBLE")  # BigQuery: FLOAT64; DuckDB: DECIMAL
    if isinstance(node.parent, _ARITHMETIC):
        return exp.cast(node.copy(), "BIGINT")  # BigQuery: INT64; DuckDB: INTEGER, overflowing at 2^31
    return node


def apply_bigquery_semantics(statement: exp.Expression) -> exp.Expression:
    """Rewrite the parsed BigQuery statement so DuckDB returns BigQuery's answers (or refuse it)."""
    # Children before parents, so a rewritten child is what its parent's rule sees.
    for node in reversed(list(statement.walk(bfs=False))):
        if isinstance(node, exp.Extract):
            new = _rewrite_extract(node)
        elif isinstance(node, exp.DateTrunc):
            new = _rewrite_date_trunc(node)
        elif isinstance(node, (exp.DateAdd, exp.DateSub)):
            new = _rewrite_date_add(node)
        elif isinstance(node, (exp.TimestampTrunc, exp.DatetimeTrunc)):
            new = _rewrite_timestamp_trunc(node)
        elif isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.BIGINT):
            new = _rewrite_cast_to_int64(node)
        elif isinstance(node, exp.Format):
            new = _rewrite_format(node)
        elif isinstance(node, exp.RegexpExtract):
            new = _rewrite_regexp_extract(node)
        elif isinstance(node, exp.Literal):
            new = _rewrite_literal(node)
        elif isinstance(node, exp.ArrayAgg):
            new = _rewrite_array_agg(node)
        elif isinstance(node, exp.IgnoreNulls):
            new = _rewrite_ignore_nulls(node)
        else:
            continue
        if new is not node:
            node.replace(new)
    return statement


def _bigquery_arrow_type(arrow_type: pa.DataType, duckdb_type: str = "") -> pa.DataType:
    """The Arrow type BigQuery's client gives a column of this type: INT64 and FLOAT64 only."""
    if pa.types.is_integer(arrow_type) or duckdb_type == "HUGEINT":
        return pa.int64()
    if pa.types.is_floating(arrow_type):
        return pa.float64()
    if pa.types.is_large_string(arrow_type):
        return pa.string()
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pa.list_(_bigquery_arrow_type(arrow_type.value_type))
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(_bigquery_arrow_type(f.type)) for f in arrow_type])
    return arrow_type


def to_bigquery_types(table: pa.Table, duckdb_types: Sequence[str]) -> pa.Table:
    """Cast DuckDB's result to BigQuery's types (INTEGER/HUGEINT -> INT64, FLOAT -> FLOAT64), checking range."""
    schema = pa.schema(
        [f.with_type(_bigquery_arrow_type(f.type, str(t))) for f, t in zip(table.schema, duckdb_types)]
    )
    if schema.equals(table.schema):
        return table
    try:
        return table.cast(schema, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        # SUM of INT64 is HUGEINT in DuckDB; BigQuery fails the query on INT64 overflow.
        raise CauceError(
            f"a result value does not fit BigQuery's INT64 (BigQuery fails on overflow): {error}"
        ) from error
