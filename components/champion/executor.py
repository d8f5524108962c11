"""Find the current champion: the model version the registry's ``champion`` alias
points at, as a model directory evaluate can load. Empty when there is none yet
(the first model of a name becomes champion by passing its absolute thresholds).

MLflow (local default): the alias resolves to a registered version whose files
live in MLflow's artifact store. Vertex: the alias resolves to a model version
whose ``artifact_uri`` is a ``gs://`` folder.
"""

from __future__ import annotations

import logging
from contextlib import closing
from pathlib import Path
from urllib.parse import unquote, urlparse

from cauce.artifacts import CauceError
from cauce.paths import default_mlflow_uri
from cauce.targets import on_google_cloud

log = logging.getLogger(__name__)


def resolve_mlflow(model_name: str, alias: str = "champion", tracking_uri: str = "") -> str:
    return find_mlflow(model_name, alias, tracking_uri)[0]


def find_mlflow(model_name: str, alias: str = "champion", tracking_uri: str = "") -> tuple[str, str]:
    """The alias's model directory and version number, or ``("", "")``."""
    tracking_uri = tracking_uri or default_mlflow_uri()
    if _sqlite_registry_lacks_alias(tracking_uri, model_name, alias):
        log.info("no %s for model %r in %s", alias, model_name, tracking_uri)
        return "", ""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            log.info("no %s for model %r in %s: %s", alias, model_name, tracking_uri, error.message)
            return "", ""
        raise
    uri = version.source
    if uri.startswith("runs:/"):
        # MLflow 3 keeps the version's source as runs:/<run>/<path>; the files are
        # under that run's artifact root.
        run_id, _, relative = uri[len("runs:/") :].partition("/")
        uri = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{relative}"
    parsed = urlparse(uri)
    path = unquote(parsed.path) if parsed.scheme in ("file", "") else uri
    log.info("%s of %r is version %s at %s", alias, model_name, version.version, path)
    return path, str(version.version)


def _sqlite_registry_lacks_alias(tracking_uri: str, model_name: str, alias: str) -> bool:
    """True when a local ``sqlite:///`` registry certainly has no ``alias`` for
    ``model_name``: its file does not exist yet, or its alias table has no such row.

    Importing MLflow and opening its store (schema checks, and migrations on a new
    file) took 5-7 s of the champion step; the first run of a model name, and every
    run of the benchmark, has no champion to find. Anything else (the alias exists,
    another backend, a schema this query does not know) goes through MlflowClient.
    """
    import sqlite3

    if not tracking_uri.startswith("sqlite:///"):
        return False
    path = Path(unquote(tracking_uri[len("sqlite:///") :]))
    if not path.exists() or path.stat().st_size == 0:
        return True
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute(
                "SELECT 1 FROM registered_model_aliases WHERE name = ? AND alias = ? LIMIT 1", (model_name, alias)
            ).fetchone()
    except sqlite3.Error:  # not (yet) MLflow's schema, locked, ...: ask MLflow
        return False
    return row is None


def resolve_vertex(
    model_name: str, project: str, vertex_region: str, alias: str = "champion", vertex_api_endpoint: str = "",
    credentials=None,
) -> str:
    return find_vertex(model_name, project, vertex_region, alias, vertex_api_endpoint, credentials)[0]


def find_vertex(
    model_name: str, project: str, vertex_region: str, alias: str = "champion", vertex_api_endpoint: str = "",
    credentials=None,
) -> tuple[str, str]:
    """The alias's model directory (``gs://``) and version id, or ``("", "")``."""
    from google.api_core import exceptions

    from cauce.components.register.executor import init_vertex, newest_resource

    aiplatform = init_vertex(project, vertex_region, vertex_api_endpoint, credentials)
    parent = newest_resource(aiplatform.Model.list(filter=f'display_name="{model_name}"'))
    if parent is None:
        return "", ""
    try:
        version = aiplatform.Model(model_name=f"{parent.resource_name}@{alias}")
    except exceptions.NotFound:
        return "", ""
    return version.uri or "", str(version.version_id)


def resolve_champion(
    model_name: str,
    alias: str = "champion",
    target: str = "local",
    mlflow_tracking_uri: str = "",
    project: str = "",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
) -> str:
    """The champion's model directory (a local path or ``gs://`` URI), or ``""``:
    MLflow for ``target="local"``, Vertex AI Model Registry for ``"google-cloud"``."""
    return find_champion(model_name, alias, target, mlflow_tracking_uri, project, vertex_region, vertex_api_endpoint)[0]


def find_champion(
    model_name: str,
    alias: str = "champion",
    target: str = "local",
    mlflow_tracking_uri: str = "",
    project: str = "",
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
) -> tuple[str, str]:
    """:func:`resolve_champion` and the version it found (``""`` when none): the
    version lineage records as the champion a new model was compared with."""
    if not model_name:
        raise CauceError("model_name is empty: name the registered model whose champion to compare with")
    if on_google_cloud(target, project):
        return find_vertex(model_name, project, vertex_region, alias, vertex_api_endpoint)
    return find_mlflow(model_name, alias, mlflow_tracking_uri)


def champion_metadata(model_name: str, alias: str, model_dir: str, version: str = "") -> dict:
    """What the champion's Model artifact records: whether one was found, where, and
    which registry version it is."""
    return {"found": bool(model_dir), "model_name": model_name, "alias": alias, "model_dir": model_dir, "version": version}


def baseline_model_dir(uri: str, metadata: dict) -> str:
    """The model directory evaluate compares with, from a baseline Model artifact: its
    ``uri``, or ``""`` when the champion step found none (``metadata["found"]`` false)."""
    return uri if metadata.get("found", True) else ""
