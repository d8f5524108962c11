"""A new local MLflow database made from the schema MLflow itself creates.

MLflow builds a new sqlite database by running every one of its schema migrations
(about 60 alembic scripts): 1.5 s of the register step's 3.8 s in a fresh
``$CAUCE_HOME`` at 1 M rows, every time the demo runs for the first time (and in most
tests). ``mlflow_schema.sql`` is the result of those migrations as MLflow's locked
version creates it (tables, indexes and the alembic revision, no rows), written by
``python -m cauce.components.register.mlflow_schema`` (``make lock`` runs it) and
checked by a test against a database the installed MLflow makes itself.

The schema is used only for a database that does not exist yet and only when the
installed MLflow is the version the file names; otherwise MLflow creates the database
as it always does. MLflow opens a seeded database like one it made: every table
exists and the revision is its head, so it checks and migrates nothing, and it adds
its default experiment itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("mlflow_schema.sql")
_HEADER = "-- MLflow schema of "  # + "<distribution> <version>"


def installed_mlflow() -> str:
    """``"<distribution> <version>"`` of the installed MLflow (full or skinny), or ``""``."""
    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def schema_of(database: str | os.PathLike) -> str:
    """An MLflow database as SQL: its tables, indexes and the rows its migrations wrote
    (the alembic revision, the default workspace); not the default experiment, which
    MLflow adds itself when it opens a database, with an artifact location of that
    database's own."""
    with sqlite3.connect(database) as connection:
        statements = [
            statement
            for statement in connection.iterdump()
            if statement not in ("BEGIN TRANSACTION;", "COMMIT;") and not statement.startswith('INSERT INTO "experiments"')
        ]
    connection.close()
    # iterdump lists the tables by name, each with its rows, then the indexes in the
    # order they were made, which differs between two runs of the same migrations.
    tables = [s for s in statements if s.startswith(("CREATE TABLE", "INSERT INTO"))]
    others = sorted(s for s in statements if not s.startswith(("CREATE TABLE", "INSERT INTO")))
    return "".join(f"{statement}\n" for statement in tables + others)


def seed(database: str | os.PathLike) -> bool:
    """Create ``database`` from the shipped schema if it does not exist yet and the
    installed MLflow made that schema; True when it did. Its folder is created either
    way (SQLite creates the file, not its folder). Two processes seeding at once are
    safe: the database appears whole (linked into place from a finished file) or not
    at all, and only the first link succeeds."""
    database = Path(database)
    database.parent.mkdir(parents=True, exist_ok=True)
    if database.exists() or not SCHEMA_FILE.exists():
        return False
    header, _, schema = SCHEMA_FILE.read_text().partition("\n")
    if header != _HEADER + installed_mlflow():
        return False
    handle, partial = tempfile.mkstemp(prefix=f".{database.name}.", suffix=".seeding", dir=database.parent)
    os.close(handle)
    partial = Path(partial)
    try:
        with sqlite3.connect(partial) as connection:
            connection.executescript(schema)
        connection.close()
        os.link(partial, database)
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def write_schema_file(work: str | os.PathLike) -> Path:
    """Have the installed MLflow create a database in ``work`` and record its schema."""
    database = Path(work) / "mlflow.db"
    uri = f"sqlite:///{database}"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models()  # opens the registry store too: every table made
    SCHEMA_FILE.write_text(f"{_HEADER}{installed_mlflow()}\n{schema_of(database)}")
    return SCHEMA_FILE


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="cauce-mlflow-schema-") as work:
        print(write_schema_file(work), file=sys.stderr)
