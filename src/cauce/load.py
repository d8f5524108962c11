"""Load your own files into the local BigQuery engine: ``cauce load`` and ``cauce tables``.

CSV (with a header row), Parquet and JSON Lines files — one, several, a folder or a
glob — become a table ``dataset.table`` of the local engine's DuckDB file, with
BigQuery types inferred from the data the way BigQuery's schema auto-detection does
(INT64, FLOAT64, NUMERIC, BOOL, STRING, BYTES, DATE, DATETIME, TIMESTAMP, TIME, and
REPEATED / RECORD columns from Parquet and JSON), or given as a BigQuery JSON schema
file (``bq show --schema`` writes one). The same ``source`` (the table id, or SQL over
it) then runs unchanged on BigQuery, where ``bq load`` loads the same files.

The load is atomic: every file is read and converted into a staging table first; the
table is replaced (``replace=True``) or appended to in one transaction that also drops
the staging table. A file that cannot be read names the file, the line or the column
and the reason, and leaves the table as it was.

Column names follow BigQuery's rules (letters, digits and ``_``, not starting with a
digit); like BigQuery's auto-detection, a header such as ``mean radius`` becomes
``mean_radius`` (the renames are reported).
"""

from __future__ import annotations

import glob
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from cauce.artifacts import CauceError

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
STAGING_SCHEMA = "_cauce_staging"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TABLE_PART = re.compile(r"[A-Za-z0-9_]+")
# Read each file as one block, so type inference sees every row (a column whose first
# rows are integers and later rows decimals is FLOAT64, as BigQuery detects it) and
# JSON row numbers count from the start of the file.
_BLOCK_SIZE = 1 << 30

# BigQuery type -> Arrow type (what extract reads back from either engine).
_ARROW_TYPES = {
    "INT64": pa.int64(),
    "INTEGER": pa.int64(),
    "FLOAT64": pa.float64(),
    "FLOAT": pa.float64(),
    "NUMERIC": pa.decimal128(38, 9),
    "BIGNUMERIC": pa.decimal256(76, 38),
    "BOOL": pa.bool_(),
    "BOOLEAN": pa.bool_(),
    "STRING": pa.string(),
    "BYTES": pa.binary(),
    "DATE": pa.date32(),
    "DATETIME": pa.timestamp("us"),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "TIME": pa.time64("us"),
}


@dataclass
class LoadResult:
    table: str
    rows: int
    """Rows the table holds after the load."""
    loaded: int
    """Rows this load added."""
    files: list[str]
    schema: list[dict]
    """BigQuery JSON schema of the table: [{"name", "type", "mode"}, ...]."""
    renamed: dict[str, str] = field(default_factory=dict)
    replaced: bool = False


# --------------------------------------------------------------------------- names and files


def parse_table_id(table_id: str) -> tuple[str, str]:
    """``dataset.table`` (or ``project.dataset.table``: the local engine is one project,
    as extract treats it) -> (dataset, table)."""
    parts = table_id.split(".") if isinstance(table_id, str) else []
    if len(parts) == 3:
        parts = parts[1:]
    if len(parts) != 2 or not all(_TABLE_PART.fullmatch(p) for p in parts):
        raise CauceError(
            f"table {table_id!r} must look like DATASET.TABLE (letters, digits and '_'), e.g. my_data.customers"
        )
    if parts[0] == STAGING_SCHEMA:
        raise CauceError(f"dataset {STAGING_SCHEMA!r} is the loader's own; choose another")
    return parts[0], parts[1]


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named, files of the formats in a folder (recursively), or matches of a glob."""
    if not paths:
        raise CauceError("name at least one file, folder or glob to load")
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if any(ch in given for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(given), recursive=True) if Path(m).is_file())
            if not matches:
                raise CauceError(f"{given!r} matches no file")
            found += matches
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS)
            if not matches:
                raise CauceError(f"folder {given!r} holds no {', '.join(sorted(FORMATS))} file")
            found += matches
        elif path.is_file():
            found.append(path)
        else:
            raise CauceError(f"{given!r}: no such file or folder")
    for path in found:
        file_format(path)  # every file's format is known before anything is read
    return list(dict.fromkeys(found))


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CauceError(
            f"{path}: unknown file type {path.suffix or '(no extension)'!r}; cauce load reads "
            f"{', '.join(sorted(FORMATS))} (CSV with a header row, Parquet, JSON Lines)"
        )
    return fmt


def bigquery_name(name: str) -> str:
    """A column name BigQuery accepts, the way its auto-detection makes one."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name.strip())
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"_{cleaned}"
    return cleaned


# --------------------------------------------------------------------------- types


def bigquery_type(arrow_type: pa.DataType) -> tuple[str, str, list | None]:
    """(type, mode, fields) of the BigQuery column that holds ``arrow_type``."""
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner, _, fields = bigquery_type(arrow_type.value_type)
        return inner, "REPEATED", fields
    if pa.types.is_struct(arrow_type):
        return "RECORD", "NULLABLE", [_schema_field(f.name, f.type) for f in arrow_type]
    if pa.types.is_boolean(arrow_type):
        return "BOOL", "NULLABLE", None
    if pa.types.is_integer(arrow_type):
        return "INT64", "NULLABLE", None
    if pa.types.is_floating(arrow_type):
        return "FLOAT64", "NULLABLE", None
    if pa.types.is_decimal(arrow_type):
        return ("NUMERIC" if arrow_type.precision <= 38 and arrow_type.scale <= 9 else "BIGNUMERIC"), "NULLABLE", None
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type):
        return "STRING", "NULLABLE", None  # a column with no value at all is STRING, as BigQuery detects it
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type):
        return "BYTES", "NULLABLE", None
    if pa.types.is_date(arrow_type):
        return "DATE", "NULLABLE", None
    if pa.types.is_timestamp(arrow_type):
        return ("TIMESTAMP" if arrow_type.tz else "DATETIME"), "NULLABLE", None
    if pa.types.is_time(arrow_type):
        return "TIME", "NULLABLE", None
    if pa.types.is_dictionary(arrow_type):
        return bigquery_type(arrow_type.value_type)
    raise CauceError(f"Arrow type {arrow_type} has no BigQuery type")


def _schema_field(name: str, arrow_type: pa.DataType) -> dict:
    kind, mode, fields = bigquery_type(arrow_type)
    entry = {"name": name, "type": kind, "mode": mode}
    if fields:
        entry["fields"] = fields
    return entry


def arrow_type_of(entry: dict, where: str) -> pa.DataType:
    """The Arrow type of one BigQuery JSON schema field."""
    kind = str(entry.get("type", "")).upper()
    if kind in ("RECORD", "STRUCT"):
        fields = entry.get("fields") or []
        if not fields:
            raise CauceError(f"{where}: a RECORD field needs 'fields'")
        value = pa.struct([pa.field(f["name"], arrow_type_of(f, f"{where}.{f['name']}")) for f in fields])
    elif kind in _ARROW_TYPES:
        value = _ARROW_TYPES[kind]
    else:
        raise CauceError(
            f"{where}: type {entry.get('type')!r} is not one cauce load reads; expected one of "
            f"{sorted(set(_ARROW_TYPES) | {'RECORD'})}"
        )
    return pa.list_(value) if str(entry.get("mode", "NULLABLE")).upper() == "REPEATED" else value


def read_schema_file(path: str | Path) -> list[dict]:
    """A BigQuery JSON schema: a list of fields, or ``{"fields": [...]}`` (``bq show --schema``)."""
    try:
        schema = json.loads(Path(path).read_text())
    except OSError as error:
        raise CauceError(f"--schema {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CauceError(f"--schema {path} is not JSON: {error}") from None
    if isinstance(schema, dict):
        schema = schema.get("fields")
    if not isinstance(schema, list) or not schema or not all(isinstance(f, dict) and "name" in f for f in schema):
        raise CauceError(
            f'--schema {path} must be a BigQuery JSON schema: [{{"name": "age", "type": "INT64", "mode": "NULLABLE"}}, ...]'
        )
    for entry in schema:
        if not _IDENTIFIER.fullmatch(str(entry["name"])):
            raise CauceError(f"--schema {path}: column name {entry['name']!r} is not one BigQuery accepts")
        arrow_type_of(entry, f"--schema {path}: column {entry['name']!r}")
    return schema


# --------------------------------------------------------------------------- reading files


def read_file(path: Path, schema: list[dict] | None = None) -> pa.Table:
    """Read one file into Arrow, or raise CauceError naming the file, line or column and why."""
    fmt = file_format(path)
    try:
        if fmt == "csv":
            return _read_csv(path, schema)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        import pyarrow.json as pajson

        explicit = None
        if schema is not None:
            explicit = pa.schema([pa.field(f["name"], arrow_type_of(f, f["name"])) for f in schema])
        return pajson.read_json(
            path,
            read_options=pajson.ReadOptions(block_size=_BLOCK_SIZE, use_threads=False),
            parse_options=pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="error"),
        )
    except CauceError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as error:
        reason = _reason(fmt, error, path)
        raise CauceError(f"{path}{', ' if reason.startswith('line ') else ': '}{reason}") from None


def _read_csv(path: Path, schema: list[dict] | None) -> pa.Table:
    import pyarrow.csv as pacsv

    invalid = []

    def on_invalid_row(row) -> str:
        invalid.append(row)
        return "skip"

    column_types = {f["name"]: arrow_type_of(f, f["name"]) for f in schema} if schema else None
    convert = pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True)
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=_BLOCK_SIZE, use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
        convert_options=convert,
    )
    if invalid:
        row = invalid[0]
        line = f"line {row.number}" if row.number is not None else "a line"
        more = f" ({len(invalid) - 1} more such lines)" if len(invalid) > 1 else ""
        raise CauceError(
            f"{path}, {line}: expected {row.expected_columns} values (the header's columns), found "
            f"{row.actual_columns}: {row.text[:200]!r}{more}"
        )
    return table


def _reason(fmt: str, error: Exception, path: Path) -> str:
    text = str(error).split("\n")[0]
    if fmt == "jsonl":
        # pyarrow counts JSON rows from 0; people count lines from 1.
        match = re.search(r"Column\((/[^)]*)\) changed from (\w+) to (\w+) in row (\d+)", text)
        if match:
            return (
                f"line {int(match.group(4)) + 1}, column {match.group(1)[1:]!r}: a {match.group(3)} where the lines "
                f"before hold a {match.group(2)}; give the column's type with --schema"
            )
        match = re.search(r"^JSON parse error: (.*) in row (\d+)$", text)
        if match:
            return f"line {int(match.group(2)) + 1}: not valid JSON Lines ({match.group(1).rstrip('.')})"
    if fmt == "csv":
        match = re.search(r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to (\w+): invalid value '(.*)'", text)
        if match:
            where = f"line {match.group(2)}, " if match.group(2) else ""
            column = f"#{int(match.group(1)) + 1}"
            try:
                import csv

                with path.open(newline="") as handle:
                    column = repr(next(csv.reader(handle))[int(match.group(1))])
            except (OSError, StopIteration, IndexError, csv.Error):
                pass
            return (
                f"{where}column {column}: {match.group(4)!r} is not a valid {match.group(3)} "
                "(the type --schema gives it)"
            )
    return text


def conform(table: pa.Table, path: Path, schema: list[dict] | None) -> tuple[pa.Table, dict[str, str]]:
    """Rename columns to BigQuery names and give them BigQuery's Arrow types (or the
    --schema's, checking names and REQUIRED columns)."""
    renamed = {}
    names = []
    for name in table.column_names:
        new = bigquery_name(name)
        if new != name:
            renamed[name] = new
        names.append(new)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CauceError(f"{path}: columns {duplicates} appear twice (after making the names BigQuery names)")
    table = table.rename_columns(names)
    if schema is not None:
        expected = [f["name"] for f in schema]
        if sorted(expected) != sorted(names):
            missing = sorted(set(expected) - set(names))
            extra = sorted(set(names) - set(expected))
            raise CauceError(
                f"{path}: columns do not match --schema"
                + (f"; missing: {missing}" if missing else "")
                + (f"; not in the schema: {extra}" if extra else "")
            )
        table = table.select(expected)
        target = pa.schema([pa.field(f["name"], arrow_type_of(f, f["name"])) for f in schema])
        for entry in schema:
            if str(entry.get("mode", "")).upper() == "REQUIRED" and table.column(entry["name"]).null_count:
                raise CauceError(f"{path}, column {entry['name']!r}: REQUIRED in --schema but has missing values")
    else:
        target = pa.schema(
            [pa.field(f.name, arrow_type_of(_schema_field(f.name, f.type), f.name)) for f in table.schema]
        )
    for index, (column, wanted) in enumerate(zip(table.columns, target)):
        if column.type != wanted.type:
            try:
                table = table.set_column(index, wanted.name, column.cast(wanted.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise CauceError(
                    f"{path}, column {wanted.name!r}: cannot hold it as {bigquery_type(wanted.type)[0]} "
                    f"({str(error).splitlines()[0]})"
                ) from None
    return table, renamed


def _unify(current: pa.Schema, new: pa.Schema, path: Path, against: str) -> pa.Schema:
    """The schema both tables fit: the same columns; INT64 widens to FLOAT64 as BigQuery's
    auto-detection does, a column with no values takes the other's type."""
    if sorted(current.names) != sorted(new.names):
        missing = sorted(set(current.names) - set(new.names))
        extra = sorted(set(new.names) - set(current.names))
        raise CauceError(
            f"{path}: its columns differ from {against}"
            + (f"; missing: {missing}" if missing else "")
            + (f"; not in {against}: {extra}" if extra else "")
        )
    fields = []
    for f in current:
        other = new.field(f.name).type
        if other == f.type:
            fields.append(f)
        elif {bigquery_type(f.type)[0], bigquery_type(other)[0]} == {"INT64", "FLOAT64"}:
            fields.append(f.with_type(pa.float64()))
        else:
            raise CauceError(
                f"{path}, column {f.name!r}: {bigquery_type(other)[0]} here, {bigquery_type(f.type)[0]} in {against}; "
                "give the column's type with --schema"
            )
    return pa.schema(fields)


# --------------------------------------------------------------------------- the database


def _connect_for_writing(database: Path):
    import duckdb

    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        return duckdb.connect(str(database))
    except duckdb.IOException as error:
        raise CauceError(
            f"cannot open the local engine's database {database} for writing ({str(error).splitlines()[0]}); "
            "is a run using it right now?"
        ) from None


def _quoted(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _existing_schema(con, dataset: str, table: str) -> pa.Schema | None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [dataset, table]
    ).fetchone()[0]
    if not exists:
        return None
    return con.execute(f"SELECT * FROM {_quoted(dataset, table)} LIMIT 0").to_arrow_table().schema  # noqa: S608


def load(
    database: str | Path,
    table_id: str,
    paths: list[str],
    *,
    replace: bool = False,
    schema_file: str | Path | None = None,
) -> LoadResult:
    """Load ``paths`` into ``table_id`` of the local engine atomically (see the module doc).

    ``replace``: the table holds exactly these files' rows afterwards; otherwise they are
    appended (the table is created if missing) and must fit its columns.
    """
    dataset, table = parse_table_id(table_id)
    files = expand_paths(paths)
    schema = read_schema_file(schema_file) if schema_file else None
    database = Path(database)
    con = _connect_for_writing(database)
    staging = f"{dataset}__{table}__{uuid.uuid4().hex[:12]}"
    staged = False
    try:
        existing = None if replace else _existing_schema(con, dataset, table)
        unified: pa.Schema | None = existing
        renamed: dict[str, str] = {}
        loaded = 0
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(STAGING_SCHEMA)}")
        for path in files:
            arrow, renames = conform(read_file(path, schema), path, schema)
            renamed.update(renames)
            if unified is None:
                unified = arrow.schema
            else:
                against = f"the table {dataset}.{table}" if existing is not None else str(files[0])
                widened = _unify(unified, arrow.schema, path, against)
                if existing is not None and widened != existing:
                    changed = [f.name for f, e in zip(widened, existing) if f.type != e.type]
                    if changed:
                        raise CauceError(
                            f"{path}: columns {changed} hold decimals where the table {dataset}.{table} holds "
                            "INT64; load with --replace, or give the types with --schema"
                        )
                if staged and widened != unified:  # an earlier file's INT64 column takes decimals
                    for f in widened:
                        if f.type != unified.field(f.name).type:
                            con.execute(
                                f"ALTER TABLE {_quoted(STAGING_SCHEMA, staging)} ALTER {_quoted(f.name)} TYPE DOUBLE"
                            )
                unified = widened
            batch = arrow.select(unified.names).cast(unified)  # noqa: F841 - read by DuckDB's replacement scan
            if not staged:
                con.execute(f"CREATE TABLE {_quoted(STAGING_SCHEMA, staging)} AS SELECT * FROM batch")  # noqa: S608 - quoted names
                staged = True
            else:
                con.execute(f"INSERT INTO {_quoted(STAGING_SCHEMA, staging)} SELECT * FROM batch")  # noqa: S608
            loaded += arrow.num_rows
        target = _quoted(dataset, table)
        # The swap: one transaction, so a reader sees the old table or the new one.
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(dataset)}")
            if replace or existing is None:
                con.execute(f"DROP TABLE IF EXISTS {target}")
                con.execute(f"CREATE TABLE {target} AS SELECT * FROM {_quoted(STAGING_SCHEMA, staging)}")  # noqa: S608
            else:
                columns = ", ".join(_quoted(name) for name in existing.names)
                con.execute(
                    f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {_quoted(STAGING_SCHEMA, staging)}"  # noqa: S608
                )
            con.execute(f"DROP TABLE {_quoted(STAGING_SCHEMA, staging)}")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        staged = False
        rows = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]  # noqa: S608
        final = con.execute(f"SELECT * FROM {target} LIMIT 0").to_arrow_table().schema  # noqa: S608
    finally:
        if staged:
            con.execute(f"DROP TABLE IF EXISTS {_quoted(STAGING_SCHEMA, staging)}")
        con.close()
    return LoadResult(
        table=f"{dataset}.{table}",
        rows=int(rows),
        loaded=loaded,
        files=[str(p) for p in files],
        schema=_bigquery_schema(final, schema),
        renamed=renamed,
        replaced=replace or existing is None,
    )


def _bigquery_schema(arrow_schema: pa.Schema, given: list[dict] | None) -> list[dict]:
    modes = {f["name"]: str(f.get("mode", "NULLABLE")).upper() for f in given or []}
    fields = []
    for f in arrow_schema:
        entry = _schema_field(f.name, f.type)
        if modes.get(f.name) == "REQUIRED":
            entry["mode"] = "REQUIRED"
        fields.append(entry)
    return fields


def table_schema(database: str | Path, table_id: str) -> list[dict]:
    """The BigQuery JSON schema of a table of the local engine."""
    from cauce.components.extract import local_engine

    dataset, table = parse_table_id(table_id)
    con = local_engine.connect(database)
    try:
        schema = _existing_schema(con, dataset, table)
    finally:
        con.close()
    if schema is None:
        known = [t["table"] for t in list_tables(database)]
        raise CauceError(f"the local engine has no table {dataset}.{table}; tables: {known or 'none (cauce load)'}")
    return [_schema_field(f.name, f.type) for f in schema]


def list_tables(database: str | Path) -> list[dict]:
    """Every table of the local engine: [{"table", "rows", "columns"}], sorted."""
    from cauce.components.extract import local_engine

    if not Path(database).is_file():
        return []
    con = local_engine.connect(database)
    try:
        names = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN (?, 'information_schema', 'pg_catalog') AND table_type = 'BASE TABLE' "
            "ORDER BY 1, 2",
            [STAGING_SCHEMA],
        ).fetchall()
        tables = []
        for dataset, table in names:
            rows = con.execute(f"SELECT count(*) FROM {_quoted(dataset, table)}").fetchone()[0]  # noqa: S608
            columns = len(con.execute(f"SELECT * FROM {_quoted(dataset, table)} LIMIT 0").description)  # noqa: S608
            tables.append({"table": f"{dataset}.{table}", "rows": int(rows), "columns": columns})
        return tables
    finally:
        con.close()
