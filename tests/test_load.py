"""`cauce load` / `cauce tables`: files into the local engine with BigQuery types, atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cauce import data, load
from cauce.artifacts import CauceError
from cauce.cli import app
from cauce.components.extract.executor import run_extract
from cauce.components.extract.local_engine import run_query


@pytest.fixture
def database(tmp_path) -> Path:
    return tmp_path / "local.duckdb"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rows(database: Path, table: str) -> list[dict]:
    return run_query(database, f"SELECT * FROM {table} ORDER BY id").to_pylist()


def test_csv_types_are_inferred_as_bigquery_detects_them(tmp_path, database):
    csv = write(
        tmp_path / "a.csv",
        "id,mean radius,label,kind,day,when,flag\n"
        "1,2,1,a,2025-01-02,2025-01-02T03:04:05Z,true\n"
        "2,2.5,,b,2025-01-03,2025-01-03T03:04:05Z,false\n",
    )
    result = load.load(database, "mine.t", [str(csv)])

    assert result.table == "mine.t" and result.rows == 2 and result.replaced
    assert {f["name"]: f["type"] for f in result.schema} == {
        "id": "INT64", "mean_radius": "FLOAT64", "label": "INT64", "kind": "STRING",
        "day": "DATE", "when": "TIMESTAMP", "flag": "BOOL",
    }  # fmt: skip
    assert result.renamed == {"mean radius": "mean_radius"}
    assert [r["label"] for r in rows(database, "mine.t")] == [1, None]  # an empty cell is NULL


def test_append_replace_folder_glob_parquet_and_json_lines(tmp_path, database):
    write(tmp_path / "in" / "1.csv", "id,x\n1,1.5\n")
    pq.write_table(pa.table({"id": [2], "x": [2.5]}), tmp_path / "in" / "2.parquet")
    write(tmp_path / "in" / "3.jsonl", '{"id": 3, "x": 3}\n{"id": 4, "x": null}\n')

    assert load.load(database, "mine.t", [str(tmp_path / "in")]).rows == 4
    appended = load.load(database, "mine.t", [str(tmp_path / "in" / "*.csv")])
    assert (appended.rows, appended.loaded, appended.replaced) == (5, 1, False)
    replaced = load.load(database, "project.mine.t", [str(tmp_path / "in" / "3.jsonl")], replace=True)
    assert (replaced.rows, replaced.replaced) == (2, True)
    assert [r["x"] for r in rows(database, "mine.t")] == [3.0, None]  # INT64 + FLOAT64 values -> FLOAT64 column
    assert load.list_tables(database) == [{"table": "mine.t", "rows": 2, "columns": 2}]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.csv", "id,x\n1,2\n3\n", r"bad.csv, line 3: expected 2 values \(the header's columns\), found 1"),
        ("bad.jsonl", '{"id": 1}\n{"id": 2,\n', "bad.jsonl, line 2: not valid JSON Lines"),
        ("mixed.jsonl", '{"id": 1}\n{"id": "x"}\n', "line 2, column 'id': a string where the lines before hold a number"),
        ("other.csv", "id,y\n9,9\n", r"other.csv: its columns differ from (the table mine.t|\S+good.csv); missing: \['x'\]"),
        ("text.csv", "id,x\n9,abc\n", r"column 'x': STRING here, FLOAT64 in (the table mine.t|\S+good.csv)"),
        ("notes.txt", "hello", "unknown file type '.txt'"),
    ],
)
def test_a_bad_file_names_file_line_or_column_and_leaves_the_table_as_it_was(tmp_path, database, name, text, message):
    good = write(tmp_path / "good.csv", "id,x\n1,1.5\n2,2.5\n")
    load.load(database, "mine.t", [str(good)])
    bad = write(tmp_path / name, text)

    for replace in (False, True):
        with pytest.raises(CauceError, match=message):
            load.load(database, "mine.t", [str(good), str(bad)], replace=replace)
        assert [r["id"] for r in rows(database, "mine.t")] == [1, 2]
    assert load.list_tables(database) == [{"table": "mine.t", "rows": 2, "columns": 2}]  # no staging table left


def test_schema_file_sets_types_and_required_columns(tmp_path, database):
    schema = write(
        tmp_path / "schema.json",
        json.dumps({"fields": [{"name": "id", "type": "STRING", "mode": "REQUIRED"}, {"name": "x", "type": "INTEGER"}]}),
    )
    result = load.load(database, "mine.t", [str(write(tmp_path / "a.csv", "id,x\n001,2\n"))], schema_file=schema)
    assert result.schema == [
        {"name": "id", "type": "STRING", "mode": "REQUIRED"},
        {"name": "x", "type": "INT64", "mode": "NULLABLE"},
    ]
    assert run_query(database, "SELECT id FROM mine.t").column("id").to_pylist() == ["001"]
    with pytest.raises(CauceError, match=r"b.csv, line 3, column 'x': 'abc' is not a valid int64"):
        load.load(database, "mine.t", [str(write(tmp_path / "b.csv", "id,x\n1,2\n2,abc\n"))], schema_file=schema)
    with pytest.raises(CauceError, match="column 'id': REQUIRED in --schema but has missing values"):
        load.load(database, "mine.t", [str(write(tmp_path / "c.csv", "id,x\n,2\n"))], schema_file=schema)
    with pytest.raises(CauceError, match="type 'FLOATY' is not one cauce load reads"):
        load.load(database, "mine.u", [str(tmp_path / "a.csv")], schema_file=write(tmp_path / "s2.json", '[{"name": "id", "type": "FLOATY"}]'))


@pytest.mark.parametrize("table", ["nodot", "a.b.c.d", "my-data.t", "_cauce_staging.t"])
def test_table_ids_are_dataset_dot_table(tmp_path, database, table):
    with pytest.raises(CauceError, match="DATASET.TABLE|loader's own"):
        load.load(database, table, [str(write(tmp_path / "a.csv", "id\n1\n"))])


def test_a_loaded_table_is_a_source_extract_splits(tmp_path, database):
    lines = "".join(f"{i},{i % 3},{i * 0.5}\n" for i in range(200))
    load.load(database, "mine.t", [str(write(tmp_path / "a.csv", "id,label,x\n" + lines))])
    for source in ("mine.t", "SELECT id, label, x FROM `my-project.mine.t` WHERE x >= 0"):
        result = run_extract(source=source, key_column="id", output_dir=tmp_path / "out" / str(len(source)), local_database=str(database))
        assert sum(result.metadata["split_rows"].values()) == 200
        assert data.read_split(tmp_path / "out" / str(len(source)), "train").schema.field("x").type == pa.float64()


def test_cli_load_and_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUCE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    csv = write(tmp_path / "a.csv", "id,x\n1,1.5\n")

    loaded = runner.invoke(app, ["load", "mine.t", str(csv)])
    assert loaded.exit_code == 0, loaded.output
    assert "mine.t: replaced with 1 rows from 1 file(s)" in loaded.output and "FLOAT64" in loaded.output
    listed = runner.invoke(app, ["tables"])
    assert listed.exit_code == 0 and "mine.t" in listed.output
    shown = runner.invoke(app, ["tables", "mine.t"])
    assert shown.exit_code == 0 and "INT64" in shown.output
    bad = runner.invoke(app, ["load", "mine.t", str(write(tmp_path / "b.csv", "id,x\n1\n"))])
    assert bad.exit_code == 1 and "b.csv, line 2" in bad.output
    missing = runner.invoke(app, ["tables", "mine.nothing"])
    assert missing.exit_code == 1 and "no table mine.nothing" in missing.output
