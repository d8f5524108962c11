"""`cauce load` and `cauce tables`: your own files in the local BigQuery engine (the
logic is in cauce.load)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cauce.artifacts import CauceError

console = Console()
err_console = Console(stderr=True)

DATABASE_HELP = "the local engine's DuckDB file (default: $CAUCE_HOME/bigquery/local.duckdb)"


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _database(given: str) -> Path:
    from cauce.paths import local_database

    return Path(given) if given else local_database()


def _print_schema(table: str, schema: list[dict], rows: int) -> None:
    view = Table(title=f"{table}: {rows:,} rows")
    for column in ("column", "type", "mode"):
        view.add_column(column, style="cyan" if column == "column" else None)
    for field in schema:
        view.add_row(field["name"], field["type"], field["mode"])
    console.print(view)


def load_command(
    table: str = typer.Argument(..., help="DATASET.TABLE to create, replace or append to"),
    paths: list[str] = typer.Argument(
        ..., help="CSV (with a header row), Parquet or JSON Lines files: files, folders or globs ('data/*.csv')"
    ),
    replace: bool = typer.Option(False, "--replace", help="replace the table's rows (default: append; created if missing)"),
    schema: Path = typer.Option(
        None, "--schema", exists=True, dir_okay=False,
        help='BigQuery JSON schema file ([{"name": "age", "type": "INT64", "mode": "NULLABLE"}, ...]); default: inferred',
    ),  # fmt: skip
    database: str = typer.Option("", help=DATABASE_HELP),
):
    """Load your files into a table of the local BigQuery engine, with BigQuery types.

    Then train on it: cauce run training --param source=DATASET.TABLE --param label=COLUMN
    --param key_column=COLUMN (the same source runs unchanged on BigQuery). The load is
    atomic: a file that cannot be read leaves the table as it was.
    """
    from cauce import load

    try:
        with console.status(f"loading into {table} …"):
            result = load.load(_database(database), table, paths, replace=replace, schema_file=schema)
    except CauceError as error:
        _fail(str(error))
    how = "replaced with" if result.replaced else "appended"
    console.print(
        f"{result.table}: {how} {result.loaded:,} rows from {len(result.files)} file(s) "
        f"[dim]({_database(database)})[/]"
    )
    for old, new in result.renamed.items():
        console.print(f"  column {old!r} is {new!r} (BigQuery column names: letters, digits and _)")
    _print_schema(result.table, result.schema, result.rows)


def tables_command(
    table: str = typer.Argument("", help="show this table's schema (default: list every table)"),
    database: str = typer.Option("", help=DATABASE_HELP),
):
    """List the tables of the local BigQuery engine, or show one table's schema."""
    from cauce import load

    path = _database(database)
    try:
        if table:
            schema = load.table_schema(path, table)
            rows = next(t["rows"] for t in load.list_tables(path) if t["table"] == ".".join(load.parse_table_id(table)))
            _print_schema(".".join(load.parse_table_id(table)), schema, rows)
            return
        tables = load.list_tables(path)
    except CauceError as error:
        _fail(str(error))
    if not tables:
        console.print(f"no tables in {path}: load some with `cauce load DATASET.TABLE FILE...`")
        return
    view = Table(title=f"local engine: {path}")
    for column in ("table", "rows", "columns"):
        view.add_column(column, justify="right" if column != "table" else "left", style="cyan" if column == "table" else None)
    for entry in tables:
        view.add_row(entry["table"], f"{entry['rows']:,}", str(entry["columns"]))
    console.print(view)
