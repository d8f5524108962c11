"""The champion lookup: MLflow (real sqlite registry) and Vertex (real SDK against
the local Vertex REST server in tests/fixtures/vertex_server.py)."""

import json
from pathlib import Path

import pytest

from cauce.artifacts import CauceError
from cauce.components.champion.executor import resolve_champion
from cauce.components.register.executor import register_mlflow
from tests.test_register import LOCATION, PROJECT, make_model_dir, register_on_vertex


def test_no_champion_yet_is_an_empty_answer(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_champion("never-registered", mlflow_tracking_uri=uri) == ""


def test_no_champion_is_found_without_importing_mlflow(tmp_path):
    """A registry file that does not exist yet, or has no such alias, answers from
    sqlite directly: importing MLflow and opening its store cost seconds."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_mlflow(make_model_dir(tmp_path / "v1", auc=0.8), "tips", uri, alias="challenger")
    code = f"""
import sys
from cauce.components.champion.executor import find_champion
assert find_champion("tips", mlflow_tracking_uri={uri!r}) == ("", "")
assert find_champion("other", mlflow_tracking_uri="sqlite:///{tmp_path / 'absent.db'}") == ("", "")
assert "mlflow" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert resolve_champion("tips", alias="challenger", mlflow_tracking_uri=uri).endswith("model")


def test_mlflow_champion_resolves_to_a_loadable_directory(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_mlflow(make_model_dir(tmp_path / "v1", auc=0.8), "tips", uri, alias="champion")
    register_mlflow(make_model_dir(tmp_path / "v2", auc=0.7), "tips", uri, alias="challenger")
    path = Path(resolve_champion("tips", mlflow_tracking_uri=uri))
    assert json.loads((path / "cauce_model.json").read_text())["metrics"]["auc"] == 0.8  # not the challenger
    assert resolve_champion("tips", alias="challenger", mlflow_tracking_uri=uri).endswith("model")


def test_vertex_champion_is_the_version_holding_the_alias(vertex_server):  # noqa: F811
    assert resolve_champion(
        "churn", target="google-cloud", project=PROJECT, vertex_region=LOCATION, vertex_api_endpoint=vertex_server.endpoint
    ) == ""
    register_on_vertex(vertex_server, "gs://models/churn/v1", alias="champion")
    register_on_vertex(vertex_server, "gs://models/churn/v2", alias="challenger")
    found = resolve_champion(
        "churn", target="google-cloud", project=PROJECT, vertex_region=LOCATION, vertex_api_endpoint=vertex_server.endpoint
    )
    assert found == "gs://models/churn/v1"


def test_empty_model_name_is_refused():
    with pytest.raises(CauceError, match="model_name is empty"):
        resolve_champion("")


def test_the_target_is_explicit():
    with pytest.raises(CauceError, match="target 'vertex' is not one of"):
        resolve_champion("tips", target="vertex")
    with pytest.raises(CauceError, match="project is empty"):
        resolve_champion("tips", target="google-cloud")
