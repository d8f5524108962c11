"""Where cauce keeps local state: the local BigQuery engine, MLflow, serving processes."""

from __future__ import annotations

import os
from pathlib import Path


def cauce_home() -> Path:
    """``$CAUCE_HOME``, default ``~/.cauce``."""
    return Path(os.environ.get("CAUCE_HOME") or Path.home() / ".cauce").expanduser()


def local_database() -> Path:
    """The local BigQuery engine's DuckDB file."""
    return cauce_home() / "bigquery" / "local.duckdb"


def default_mlflow_uri() -> str:
    """The MLflow tracking/registry URI used when none is given: sqlite under CAUCE_HOME."""
    path = cauce_home() / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"
