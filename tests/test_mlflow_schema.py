"""New local MLflow databases made from the schema MLflow creates (components/register/mlflow_schema.py):
the real MLflow client against real sqlite files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

from cauce.components.register import mlflow_schema
from cauce.components.register.executor import mlflow_client, register_mlflow
from tests.test_register import make_model_dir


def tables_and_rows(database) -> dict:
    with sqlite3.connect(database) as connection:
        names = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        found = {name: connection.execute(f'SELECT * FROM "{name}"').fetchall() for name in names}  # noqa: S608
    connection.close()
    return found


def test_the_shipped_schema_is_what_the_installed_mlflow_creates(tmp_path):
    """Fails after an MLflow upgrade until `make lock` writes the schema again."""
    assert mlflow_schema.SCHEMA_FILE.read_text().splitlines()[0] == f"-- MLflow schema of {mlflow_schema.installed_mlflow()}"
    uri = f"sqlite:///{tmp_path / 'made-by-mlflow.db'}"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    made = mlflow_schema.schema_of(tmp_path / "made-by-mlflow.db")
    # The same lines: MLflow's table rebuilds list a table's constraints in an order that
    # changes from one process to the next (a set of strings), which SQLite does not mind.
    assert sorted(mlflow_schema.SCHEMA_FILE.read_text().partition("\n")[2].splitlines()) == sorted(made.splitlines())


def test_mlflow_opens_a_seeded_database_without_migrating_and_registers(tmp_path):
    database = tmp_path / "home" / "mlflow" / "mlflow.db"
    assert mlflow_schema.seed(database)
    seeded = tables_and_rows(database)
    assert seeded["alembic_version"] and seeded["experiments"] == []
    uri = f"sqlite:///{database}"
    # A fresh process, as a step is: MLflow logs "Creating initial MLflow database tables" when it migrates.
    script = (
        "import sys; from cauce.components.register.executor import mlflow_client; "
        "c = mlflow_client(sys.argv[1]); print(c.get_experiment('0').name)"
    )
    opened = subprocess.run([sys.executable, "-c", script, uri], capture_output=True, text=True, timeout=120)
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == "Default"  # MLflow added its default experiment itself
    assert "Creating initial MLflow database tables" not in opened.stderr
    assert "Updating database tables" not in opened.stderr
    result = register_mlflow(make_model_dir(tmp_path / "model"), "taxi-tips", uri)
    assert result["version"] == "1"
    client = mlflow_client(uri)
    assert str(client.get_model_version_by_alias("taxi-tips", "champion").version) == "1"


def test_an_existing_database_is_never_touched(tmp_path):
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"someone else's file")
    assert not mlflow_schema.seed(database)
    assert database.read_bytes() == b"someone else's file"


def test_another_mlflow_version_lets_mlflow_create_the_database(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_schema, "installed_mlflow", lambda: "mlflow 99.0.0")
    database = tmp_path / "new" / "mlflow.db"
    assert not mlflow_schema.seed(database)
    assert not database.exists() and database.parent.is_dir()  # the folder MLflow needs is there


def test_concurrent_seeding_makes_one_whole_database(tmp_path):
    database = tmp_path / "mlflow.db"
    results = []
    threads = [threading.Thread(target=lambda: results.append(mlflow_schema.seed(database))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1
    assert "alembic_version" in tables_and_rows(database)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no partial files left

