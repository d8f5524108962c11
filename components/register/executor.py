"""Register a trained model in MLflow's model registry or in Vertex AI Model Registry.

Plain Python: the KFP components (component.py) call :func:`register_mlflow` (local
target) and :func:`run_register_vertex` (Google Cloud); tests call
the functions directly. MLflow and the Vertex SDK are imported inside the functions
that use them, so importing this module stays cheap (``cauce.components.deploy.vertex``
imports :func:`init_vertex` from here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from cauce.artifacts import CauceError
from cauce.paths import default_mlflow_uri

MODEL_CARD = "cauce_model.json"
# Version tag holding the hash of the registered directory: how a re-run finds its version.
CONTENT_HASH_TAG = "cauce.content_hash"

# "/" and ":" are refused by MLflow itself; "@" would break `models:/name@alias`, and
# quotes would break the search filter that finds an already registered version.
_MLFLOW_NAME_FORBIDDEN = set("/:@'\"`")
# MLflow reserves "latest" and "v<digits>" (they already mean something in `models:/` URIs).
_MLFLOW_ALIAS = re.compile(r"[A-Za-z0-9_-]+")
_MLFLOW_RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
# Vertex AI rules: version aliases must not look like version ids; labels are lowercase.
_VERTEX_ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]")
_VERTEX_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_VERTEX_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_VERTEX_MAX_LABELS = 64
_VERTEX_DISPLAY_NAME_MAX = 128


# -- the model directory ---------------------------------------------------------------------


def read_model_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Return the parsed ``cauce_model.json`` of a Model artifact directory."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise CauceError(
            f"model directory not found at {directory}: expected the Model artifact of the train step"
        )
    card_path = directory / MODEL_CARD
    if not card_path.is_file():
        raise CauceError(
            f"{MODEL_CARD} not found in model directory {directory}: is this a cauce Model artifact?"
        )
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise CauceError(f"{card_path} is not valid JSON: {error}") from error
    if not isinstance(card, dict):
        raise CauceError(f"{card_path} must hold a JSON object, got {type(card).__name__}")
    return card


CONTENT_LABEL = "cauce-content"  # Vertex label with the model files' hash: makes registering idempotent


# Keys of the model card that say when and how fast a model was made, not what it is:
# left out of the content hash, so retraining the same model on the same data is the
# same registry version (and deploying it again a no-op).
VOLATILE_CARD_KEYS = ("created_at", "training_seconds")


def _content_bytes(path: Path, relative: str):
    """The bytes of one file as the content hash sees them: the model card without its
    volatile keys; a zip archive (``model.keras``, torch's ``model.pt``) as its members'
    names and bytes, without the entries' timestamps; any other file as it is."""
    if relative == MODEL_CARD:
        try:
            card = json.loads(path.read_text())
        except (OSError, ValueError):
            card = None
        if isinstance(card, dict):
            stable = {k: v for k, v in card.items() if k not in VOLATILE_CARD_KEYS}
            yield json.dumps(stable, sort_keys=True, default=str).encode()
            return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.namelist()):
                data = archive.read(member)
                yield f"{member}\0{len(data)}\0".encode()
                yield data
        return
    with path.open("rb") as handle:
        yield from iter(lambda: handle.read(1 << 20), b"")


def content_hash(model_dir: str | os.PathLike) -> str:
    """SHA-256 over every file's relative path and content, in path order: the same
    model trained again (same data, seed and code) hashes the same, whenever it was
    trained (see ``_content_bytes``)."""
    directory = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        content = hashlib.sha256()
        for chunk in _content_bytes(path, relative):
            content.update(chunk)
        # The path and each file's own digest delimit files, so moving bytes between
        # files changes the hash.
        digest.update(f"{relative}\0{content.hexdigest()}\0".encode())
    return digest.hexdigest()


def _card_metrics(card: dict[str, Any]) -> dict[str, float]:
    metrics = card.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise CauceError(f"{MODEL_CARD} 'metrics' must be an object of name: number, got {metrics!r}")
    try:
        return {str(name): float(value) for name, value in metrics.items()}
    except (TypeError, ValueError) as error:
        raise CauceError(f"{MODEL_CARD} 'metrics' must map names to numbers, got {metrics!r}") from error


# -- MLflow ----------------------------------------------------------------------------------


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths are relative to the cwd)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve()


def _check_mlflow_name(model_name: str) -> None:
    if not model_name or not model_name.strip():
        raise CauceError("model_name is empty: give the name to register the model under")
    if model_name != model_name.strip() or _MLFLOW_NAME_FORBIDDEN & set(model_name):
        raise CauceError(
            f"model_name {model_name!r} is not usable in MLflow: no surrounding spaces "
            f"and none of {''.join(sorted(_MLFLOW_NAME_FORBIDDEN))}"
        )


def _check_mlflow_alias(alias: str) -> None:
    if not _MLFLOW_ALIAS.fullmatch(alias or "") or _MLFLOW_RESERVED_ALIAS.fullmatch(alias):
        raise CauceError(
            f"alias {alias!r} is not a valid MLflow alias: use letters, digits, '_' and '-', "
            "and not 'latest' or 'v<number>'"
        )


# Version tags and labels that tell a version's story to `cauce models` (MLflow tag /
# Vertex label spelling): its status, the champion it replaced, its lineage record.
STATUS_TAG = "cauce.status"
REPLACED_TAG = "cauce.replaced"
LINEAGE_TAG = "cauce.lineage_uri"
MODEL_DIR_TAG = "cauce.model_dir"
REASON_TAG = "cauce.reason"
# pending: blessed, waiting for `cauce models approve`; retired: replaced as champion;
# rolled-back: champion until `cauce models rollback` restored the one it replaced.
STATUSES = ("pending", "champion", "challenger", "rejected", "retired", "rolled-back")
ALIASES = ("champion", "challenger", "pending")


def mlflow_client(tracking_uri: str = "") -> Any:
    """An MLflow client on ``tracking_uri`` (empty: cauce's sqlite default) for both
    tracking and the registry. A new sqlite database is made from MLflow's own schema
    (``mlflow_schema``), in its folder, never the cwd."""
    tracking_uri = tracking_uri or default_mlflow_uri()
    database = _sqlite_path(tracking_uri)
    if database is not None:
        from cauce.components.register import mlflow_schema

        mlflow_schema.seed(database)  # creates the folder; skipped for an existing database
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def mlflow_alias_version(client: Any, model_name: str, alias: str) -> str:
    """The version ``alias`` points at, or ``""``."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return ""
        raise


def register_mlflow(
    model_dir: str | os.PathLike,
    model_name: str,
    tracking_uri: str,
    alias: str = "champion",
    tags: dict[str, str] | None = None,
    description: str = "",
    lineage: dict[str, Any] | None = None,
    lineage_file: str = "",
    evaluation_dir: str = "",
) -> dict[str, str]:
    """Register ``model_dir`` as a new version of ``model_name`` and point ``alias`` at it.

    The directory's files are logged as the artifacts (under ``model/``) of a run in the
    experiment named after the model; the version's source is ``runs:/<run_id>/model``.
    Version tags carry the card's framework, task, label and metrics (``metric.<name>``),
    the user's ``tags`` and the directory's content hash. Registering the same content
    again creates nothing and returns the existing version; the alias is (re)pointed at
    the returned version either way, so ``models:/<name>@<alias>`` is this model afterwards.

    An empty ``tracking_uri`` means :func:`default_mlflow_uri`. For ``sqlite:///`` URIs the
    artifacts go to ``artifacts/`` beside the database file, never into the cwd.
    """
    card = read_model_card(model_dir)
    metrics = _card_metrics(card)
    _check_mlflow_name(model_name)
    _check_mlflow_alias(alias)
    tracking_uri = tracking_uri or default_mlflow_uri()
    database = _sqlite_path(tracking_uri)
    client = mlflow_client(tracking_uri)
    digest = content_hash(model_dir)
    already_registered = client.search_model_versions(
        f"name = '{model_name}' and tag.`{CONTENT_HASH_TAG}` = '{digest}'"
    )
    replaced = mlflow_alias_version(client, model_name, "champion") if alias == "champion" else ""
    if already_registered:
        version = str(min(int(mv.version) for mv in already_registered))
    else:
        run_id = _log_model_run(
            client, model_dir, model_name, metrics, digest, database, card, lineage, lineage_file, evaluation_dir
        )
        from cauce import lineage as lineage_record

        version_tags = {
            **{
                key: str(card[key])
                for key in ("framework", "framework_version", "task", "label")
                if card.get(key)
            },
            **{f"metric.{name}": repr(value) for name, value in metrics.items()},
            **{str(key): str(value) for key, value in (tags or {}).items()},
            **{f"cauce.{key}": value for key, value in lineage_record.summary_tags(lineage or {}).items()},
            CONTENT_HASH_TAG: digest,
            MODEL_DIR_TAG: str(Path(model_dir).resolve()),
        }
        if lineage_file:
            version_tags[LINEAGE_TAG] = str(lineage_file)
        _ensure_registered_model(client, model_name, description)
        model_version = client.create_model_version(
            name=model_name,
            source=f"runs:/{run_id}/model",
            run_id=run_id,
            tags=version_tags,
            description=description,
        )
        version = str(model_version.version)
    client.set_registered_model_alias(model_name, alias, version)
    set_mlflow_status(client, model_name, version, alias, replaced=replaced)
    return {
        "registry": "mlflow",
        "model_name": model_name,
        "version": version,
        "model_uri": f"models:/{model_name}/{version}",
        "alias": alias,
    }


def set_mlflow_status(client: Any, model_name: str, version: str, status: str, replaced: str = "", reason: str = "") -> None:
    """Record ``version``'s status; a new champion records the version it replaced (what
    `cauce models rollback` goes back to), and that one becomes ``retired``."""
    client.set_model_version_tag(model_name, version, STATUS_TAG, status)
    if reason:
        client.set_model_version_tag(model_name, version, REASON_TAG, reason)
    if status == "champion" and replaced and replaced != version:
        client.set_model_version_tag(model_name, version, REPLACED_TAG, replaced)
        client.set_model_version_tag(model_name, replaced, STATUS_TAG, "retired")


def _log_model_run(
    client: Any,
    model_dir: str | os.PathLike,
    model_name: str,
    metrics: dict[str, float],
    digest: str,
    database: Path | None,
    card: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    lineage_file: str = "",
    evaluation_dir: str = "",
) -> str:
    """Log the model directory and its metrics as a finished run; return the run id.

    The run is the training run's experiment run (experiment = the model's name): with
    the bundle's card it also logs the hyperparameters, seed and source as params, the
    per-epoch training curves as metric histories, the evaluation (overall and per
    slice) as ``eval.*`` metrics with its report, and the lineage record, and tags the
    run with the pipeline run and the URIs of the run's artifacts."""
    from mlflow.entities import Metric, Param, RunTag

    experiment = client.get_experiment_by_name(model_name)
    if experiment is None:
        # Without an explicit location a local run's artifacts would land in ./mlruns of the cwd.
        artifact_location = (database.parent / "artifacts" / model_name).as_uri() if database else None
        experiment_id = client.create_experiment(model_name, artifact_location=artifact_location)
    elif experiment.lifecycle_stage == "deleted":
        raise CauceError(
            f"MLflow experiment {model_name!r} is deleted: restore it or register under another model_name"
        )
    else:
        experiment_id = experiment.experiment_id
    run_info = (lineage or {}).get("run") or {}
    run = client.create_run(experiment_id, run_name=run_info.get("pipeline_job_name") or f"register-{digest[:12]}")
    run_id = run.info.run_id
    try:
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
        timestamp = run.info.start_time
        logged = [Metric(name, value, timestamp, 0) for name, value in metrics.items()]
        params, tags = _experiment_params(card or {}, lineage or {})
        logged += _curve_metrics(card or {}, timestamp)
        evaluation = (lineage or {}).get("evaluation") or {}
        logged += _evaluation_metrics(evaluation, timestamp)
        # MLflow takes at most 1000 metrics and 100 params per batch.
        for start in range(0, len(logged), 1000):
            client.log_batch(run_id, metrics=logged[start : start + 1000])
        params_list = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(params_list), 100):
            client.log_batch(run_id, params=params_list[start : start + 100])
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        if lineage_file:
            client.log_artifact(run_id, str(lineage_file), artifact_path="lineage")
        if evaluation_dir:
            for name in ("evaluation.json", "report.html"):
                if (Path(evaluation_dir) / name).is_file():
                    client.log_artifact(run_id, str(Path(evaluation_dir) / name), artifact_path="evaluation")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _experiment_params(card: dict[str, Any], lineage: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Params (what the run was given) and tags (where its pieces are) of the experiment run."""
    params = {
        key: str(card[key])[:6000] for key in ("framework", "model_type", "task", "seed") if card.get(key) is not None
    }
    # hp.*: what train was given (the comparable knobs); resolved.*: the estimator's full set.
    for name, value in sorted((card.get("hyperparameters_given") or {}).items()):
        params[f"hp.{name}"] = json.dumps(value, default=str)[:6000]
    for name, value in sorted((card.get("hyperparameters") or {}).items()):
        params[f"resolved.{name}"] = json.dumps(value, default=str)[:6000]
    source = lineage.get("source") or {}
    if source.get("query_sha256"):
        params["source.query_sha256"] = source["query_sha256"]
    for name, value in sorted((source.get("query_parameters") or {}).items()):
        params[f"source.param.{name}"] = json.dumps(value, default=str)[:6000]
    tags = {}
    run = lineage.get("run") or {}
    for key in ("pipeline_job_id", "pipeline_job_name"):
        if run.get(key):
            tags[f"cauce.{key}"] = str(run[key])
    data = lineage.get("data") or {}
    for key, value in (("cauce.dataset_uri", data.get("dataset_uri")), ("cauce.evaluation_uri", (lineage.get("evaluation") or {}).get("uri"))):
        if value:
            tags[key] = str(value)
    if "blessed" in (lineage.get("evaluation") or {}):
        tags["cauce.blessed"] = str(bool(lineage["evaluation"]["blessed"])).lower()
    return params, tags


def _metric_key(text: str) -> str:
    # MLflow metric names: letters, digits, '_', '-', '.', ' ', '/'.
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def _curve_metrics(card: dict[str, Any], timestamp: int) -> list[Any]:
    """Per-epoch training curves as metric histories (step = epoch)."""
    from mlflow.entities import Metric

    curves = card.get("training_curves") or {}
    logged = []
    for name, values in sorted(curves.items() if isinstance(curves, dict) else []):
        if isinstance(values, list):
            logged += [
                Metric(_metric_key(f"curve.{name}"), float(value), timestamp, step)
                for step, value in enumerate(values)
                if isinstance(value, (int, float))
            ]
    return logged


def _evaluation_metrics(evaluation: dict[str, Any], timestamp: int) -> list[Any]:
    """Evaluate's metrics on the version's run: ``eval.<metric>`` overall and
    ``eval.slice/<feature>/<value>/<metric>`` per slice."""
    from mlflow.entities import Metric

    logged = [
        Metric(_metric_key(f"eval.{name}"), float(value), timestamp, 0)
        for name, value in sorted((evaluation.get("metrics") or {}).items())
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    for entry in evaluation.get("slices") or []:
        where = f"eval.slice/{entry.get('feature')}/{entry.get('value')}"
        logged += [
            Metric(_metric_key(f"{where}/{name}"), float(value), timestamp, 0)
            for name, value in sorted((entry.get("metrics") or {}).items())
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
    return logged


def _ensure_registered_model(client: Any, model_name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=description or None)
    except MlflowException as error:
        # Creating first and tolerating "exists" is safe when two runs register at once.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


# -- Vertex AI -------------------------------------------------------------------------------


def init_vertex(project: str, location: str, api_endpoint: str = "", credentials: Any = None) -> Any:
    """Point the ``google.cloud.aiplatform`` SDK at ``project``/``location`` and return the module.

    With ``api_endpoint`` (e.g. ``http://127.0.0.1:PORT`` of a local stand-in) the SDK uses
    its REST transport, which accepts a scheme in the endpoint, and anonymous credentials
    unless ``credentials`` are given. Beware: ``aiplatform.init`` is process-wide and keeps
    an endpoint set earlier when called later without one.
    """
    if not project:
        raise CauceError("project is empty: give the Google Cloud project to use Vertex AI in")
    if not location:
        raise CauceError("location is empty: give the Vertex AI region, e.g. us-central1")

    from google.cloud import aiplatform

    if api_endpoint:
        from google.auth.credentials import AnonymousCredentials

        aiplatform.init(
            project=project,
            location=location,
            api_endpoint=api_endpoint,
            api_transport="rest",
            credentials=credentials or AnonymousCredentials(),
        )
    else:
        aiplatform.init(project=project, location=location, credentials=credentials)
    return aiplatform


def check_display_name(display_name: str, parameter: str) -> None:
    """Vertex display names: 1 to 128 characters. We also refuse double quotes, which
    would break the ``display_name="..."`` filter used to find the resource again."""
    if not display_name or not display_name.strip():
        raise CauceError(f"{parameter} is empty: Vertex AI needs a display name")
    if len(display_name) > _VERTEX_DISPLAY_NAME_MAX:
        raise CauceError(
            f"{parameter} {display_name!r} is {len(display_name)} characters long; "
            f"Vertex AI allows at most {_VERTEX_DISPLAY_NAME_MAX}"
        )
    if '"' in display_name or "\\" in display_name:
        raise CauceError(f"{parameter} {display_name!r} must not contain double quotes or backslashes")


def check_vertex_labels(labels: dict[str, str]) -> None:
    if len(labels) > _VERTEX_MAX_LABELS:
        raise CauceError(f"labels has {len(labels)} entries; Vertex AI allows at most {_VERTEX_MAX_LABELS}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _VERTEX_LABEL_KEY.fullmatch(key):
            raise CauceError(
                f"label key {key!r} is invalid: Vertex AI label keys start with a lowercase letter and "
                "hold at most 63 lowercase letters, digits, '_' or '-'"
            )
        if not isinstance(value, str) or not _VERTEX_LABEL_VALUE.fullmatch(value):
            raise CauceError(
                f"label {key}={value!r} is invalid: Vertex AI label values hold at most 63 lowercase "
                "letters, digits, '_' or '-'"
            )


def vertex_label_value(text: str) -> str:
    """Turn free text (e.g. a framework name) into a valid Vertex label value."""
    return re.sub(r"[^a-z0-9_-]", "-", text.lower())[:63]


def newest_resource(resources: list[Any]) -> Any | None:
    """The most recently updated Vertex resource: our pick when several share a display name."""
    return max(resources, key=lambda resource: resource.update_time, default=None)


def register_vertex(
    model_uri: str,
    display_name: str,
    project: str,
    location: str,
    serving_image: str,
    api_endpoint: str = "",
    alias: str = "champion",
    labels: dict[str, str] | None = None,
    description: str = "",
    predict_route: str = "/predict",
    health_route: str = "/health",
    credentials: Any = None,
) -> dict[str, str]:
    """Upload ``model_uri`` (a ``gs://`` directory) to Vertex AI Model Registry.

    If a model named ``display_name`` exists, the upload becomes its next version
    (the newest such model when there are several); otherwise a new model is created.
    The new version becomes the default version and takes ``alias`` from whichever
    version held it, and serves with ``serving_image`` under the Vertex custom-container
    contract (``predict_route``, ``health_route``).
    """
    check_display_name(display_name, "display_name")
    labels = dict(labels or {})
    check_vertex_labels(labels)
    if not _VERTEX_ALIAS.fullmatch(alias or ""):
        raise CauceError(
            f"alias {alias!r} is not a valid Vertex AI version alias: it must start with a lowercase "
            "letter, end with a lowercase letter or digit, and hold letters, digits and '-' (2-128 characters)"
        )
    if not model_uri.startswith("gs://"):
        # The SDK would otherwise try to copy a local path into a staging bucket.
        raise CauceError(
            f"model_uri {model_uri!r} is not a gs:// URI: Vertex AI serves models from Cloud Storage"
        )
    if not serving_image:
        raise CauceError("serving_image is empty: give the container image that serves the model")
    for parameter, route in (("predict_route", predict_route), ("health_route", health_route)):
        if not route.startswith("/"):
            raise CauceError(f"{parameter} {route!r} must be an HTTP path starting with '/'")

    aiplatform = init_vertex(project, location, api_endpoint, credentials)
    parent = newest_resource(aiplatform.Model.list(filter=f'display_name="{display_name}"'))
    content = labels.get(CONTENT_LABEL)
    if parent is not None and content:
        # Idempotent: a retried or cached-out step finds the version it registered
        # before (same content label) and only moves the alias back to it.
        registry = aiplatform.models.ModelRegistry(parent.resource_name)
        same = registry.list_versions(filter=f'labels.{CONTENT_LABEL}="{content}"')
        if same:
            version_id = max(same, key=lambda version: int(version.version_id)).version_id
            registry.add_version_aliases([alias], version_id)
            return {
                "registry": "vertex",
                "resource_name": parent.resource_name,
                "version_id": version_id,
                "model_uri": f"{parent.resource_name}@{version_id}",
                "alias": alias,
                "reused": True,
            }
    model = aiplatform.Model.upload(
        display_name=display_name,
        parent_model=parent.resource_name if parent else None,
        is_default_version=True,
        # A fresh list: the SDK appends "default" to the list it is given.
        version_aliases=[alias],
        labels=labels,
        description=description or None,
        serving_container_image_uri=serving_image,
        serving_container_predict_route=predict_route,
        serving_container_health_route=health_route,
        artifact_uri=model_uri,
        sync=True,
    )
    return {
        "registry": "vertex",
        "resource_name": model.resource_name,
        "version_id": model.version_id,
        "model_uri": f"{model.resource_name}@{model.version_id}",
        "alias": alias,
    }


# -- evaluations in Vertex AI Model Registry -------------------------------------------------

# The metrics schemas Vertex AI's evaluation tab reads, per task, and the fields of each
# that evaluate's metrics fill (the schema's names; the rest stays in the metadata).
VERTEX_METRICS_SCHEMAS = {
    "binary": "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml",
    "multiclass": "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml",
    "regression": "gs://google-cloud-aiplatform/schema/modelevaluation/regression_metrics_1.0.0.yaml",
}
_VERTEX_METRIC_FIELDS = {
    "binary": {"auc": "auRoc", "auc_precision_recall": "auPrc", "binary_crossentropy": "logLoss"},
    "multiclass": {"sparse_categorical_crossentropy": "logLoss"},
    "regression": {"root_mean_squared_error": "rootMeanSquaredError", "mean_absolute_error": "meanAbsoluteError"},
}
EVALUATION_DISPLAY_NAME = "cauce-evaluate"


def vertex_evaluation_metrics(task: str, metrics: dict[str, Any], confusion: dict[str, Any] | None = None) -> dict[str, Any]:
    """evaluate's metrics in the fields of the task's Vertex metrics schema: AUC ROC/PR and
    log loss, binary precision/recall at the decision threshold as a confidence metric,
    the confusion matrix; RMSE and MAE for regression."""
    values = {
        field: float(metrics[name])
        for name, field in _VERTEX_METRIC_FIELDS.get(task, {}).items()
        if isinstance(metrics.get(name), (int, float)) and not isinstance(metrics.get(name), bool)
    }
    if task == "binary" and all(isinstance(metrics.get(k), (int, float)) for k in ("precision", "recall")):
        threshold = float((confusion or {}).get("threshold", 0.5))
        values["confidenceMetrics"] = [
            {"confidenceThreshold": threshold, "precision": float(metrics["precision"]), "recall": float(metrics["recall"])}
        ]
    if confusion and confusion.get("labels") and confusion.get("matrix"):
        values["confusionMatrix"] = {
            "annotationSpecs": [{"displayName": str(label)} for label in confusion["labels"]],
            "rows": [[float(count) for count in row] for row in confusion["matrix"]],
        }
    return values


def import_vertex_evaluation(
    project: str, location: str, model_version: str, summary: dict[str, Any], evaluation_uri: str = "",
    run_name: str = "", api_endpoint: str = "", credentials: Any = None,
) -> dict[str, Any]:
    """Import evaluate's ``summary`` (``evaluation.json``) as the evaluation of
    ``model_version`` (``projects/.../models/<id>@<version>``) in Vertex AI Model
    Registry: overall (``ModelService.ImportModelEvaluation``) and one slice per slice
    value (``BatchImportModelEvaluationSlices``), with the task's metrics schema. Every
    TFMA metric, the blessing and its reasons go into the evaluation's metadata.

    A retried step finds the evaluation it imported before (same display name, which
    names the pipeline run) and imports nothing. Returns ``{"name", "slices", "reused"}``."""
    from google.cloud.aiplatform import utils
    from google.cloud.aiplatform_v1.types import ModelEvaluation, ModelEvaluationSlice
    from google.protobuf import struct_pb2

    task = summary.get("task") or "binary"
    if task not in VERTEX_METRICS_SCHEMAS:
        raise CauceError(f"evaluation task {task!r} has no Vertex AI metrics schema; expected one of {sorted(VERTEX_METRICS_SCHEMAS)}")
    schema = VERTEX_METRICS_SCHEMAS[task]
    aiplatform = init_vertex(project, location, api_endpoint, credentials)
    client = aiplatform.initializer.global_config.create_client(
        client_class=utils.ModelClientWithOverride, location_override=location, credentials=credentials,
    )  # fmt: skip
    display_name = f"{EVALUATION_DISPLAY_NAME} {run_name}".strip()[:128]
    for existing in client.list_model_evaluations(parent=model_version):
        if existing.display_name == display_name:
            return {"name": existing.name, "slices": 0, "reused": True}

    def struct(value: dict[str, Any]) -> struct_pb2.Value:
        message = struct_pb2.Value()
        message.struct_value.update(json.loads(json.dumps(value, default=str)))
        return message

    slices = summary.get("slices") or []
    metadata = {
        "blessed": bool(summary.get("blessed")), "reasons": list(summary.get("reasons") or []),
        "metrics": summary.get("metrics") or {}, "thresholds": summary.get("thresholds") or {},
        "evaluation_uri": evaluation_uri, "pipeline_job_name": run_name, "rows": summary.get("rows"),
        "split": summary.get("split"), "label": summary.get("label"),
    }  # fmt: skip
    evaluation = client.import_model_evaluation(
        parent=model_version,
        model_evaluation=ModelEvaluation(
            display_name=display_name,
            metrics_schema_uri=schema,
            metrics=struct(vertex_evaluation_metrics(task, summary.get("metrics") or {}, summary.get("confusion_matrix"))),
            slice_dimensions=sorted({str(entry.get("feature")) for entry in slices}),
            metadata=struct(metadata),
        ),
    )
    if slices:
        client.batch_import_model_evaluation_slices(
            parent=evaluation.name,
            model_evaluation_slices=[
                ModelEvaluationSlice(
                    slice_=ModelEvaluationSlice.Slice(dimension=str(entry.get("feature")), value=str(entry.get("value"))),
                    metrics_schema_uri=schema,
                    metrics=struct(vertex_evaluation_metrics(task, entry.get("metrics") or {})),
                )
                for entry in slices
            ],
        )
    return {"name": evaluation.name, "slices": len(slices), "reused": False}


# -- the component's entry point -------------------------------------------------------------


def run_register_vertex(
    model_dir: str,
    model_uri: str,
    model_name: str,
    project: str,
    vertex_region: str = "us-central1",
    vertex_api_endpoint: str = "",
    serving_image: str = "",
    alias: str = "champion",
    lineage_dir: str = "",
    lineage_uri: str = "",
    credentials: Any = None,
    **lineage_inputs: Any,
) -> dict[str, str]:
    """What the ``register_vertex`` component does: upload the Model artifact to Vertex AI
    Model Registry as the next version of ``model_name``, labelled with its framework,
    task and content hash, its metrics in the description.

    With ``lineage_dir`` the lineage record is written there (``lineage_uri`` is where
    the registry will find it, a ``gs://`` folder on Vertex) and the version carries
    its core as labels (``cauce-run-id``, ``cauce-source-sha256``, ...,
    ``cauce-status``) and the record's URI in its description.

    ``model_dir`` is the artifact's local path (a ``/gcs/`` mount on Vertex) and
    ``model_uri`` its ``gs://`` URI. The result has ``model_uri``
    (``<resource>@<version>``), ``version`` (the version id) and ``vertex_uri``, the REST
    URL a ``google.VertexModel`` artifact carries.
    """
    from cauce.artifact_types import vertex_resource_uri
    from cauce.images import SERVING_IMAGE

    card = read_model_card(model_dir)
    labels = {key: vertex_label_value(str(card[key])) for key in ("framework", "task") if card.get(key)}
    # Label values hold at most 63 characters: 40 hex digits of the hash are plenty.
    labels[CONTENT_LABEL] = content_hash(model_dir)[:40]
    metrics = _card_metrics(card)
    description = ", ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items()))
    description = f"metrics: {description}" if description else ""
    replaced = ""
    if lineage_dir:
        from cauce import lineage

        record, _ = gather_lineage(model_dir, model_uri, model_name, lineage_dir, status=alias, **lineage_inputs)
        labels.update(vertex_lineage_labels(lineage.summary_tags(record)))
        labels[vertex_label_key(STATUS_TAG)] = alias
        description = f"{description}; lineage: {lineage_uri or lineage_dir}".lstrip("; ")
        if alias == "champion":
            from cauce.components.champion.executor import find_vertex

            replaced = find_vertex(model_name, project, vertex_region, "champion", vertex_api_endpoint, credentials)[1]
    result = register_vertex(
        model_uri=model_uri,
        display_name=model_name,
        project=project,
        location=vertex_region,
        serving_image=serving_image or SERVING_IMAGE,
        api_endpoint=vertex_api_endpoint,
        alias=alias,
        labels=labels,
        description=description,
        credentials=credentials,
    )
    if replaced and replaced != result["version_id"]:
        set_vertex_status(
            project, vertex_region, result["resource_name"], result["version_id"], "champion",
            replaced=replaced, api_endpoint=vertex_api_endpoint, credentials=credentials,
        )  # fmt: skip
    evaluation_file = Path(lineage_inputs.get("evaluation_dir") or "-") / "evaluation.json"
    if evaluation_file.is_file():  # the version's evaluation tab: evaluate's metrics, overall and per slice
        imported = import_vertex_evaluation(
            project, vertex_region, result["model_uri"], json.loads(evaluation_file.read_text()),
            evaluation_uri=lineage_inputs.get("evaluation_uri") or str(evaluation_file.parent),
            run_name=str((lineage_inputs.get("run") or {}).get("pipeline_job_name") or ""),
            api_endpoint=vertex_api_endpoint, credentials=credentials,
        )  # fmt: skip
        result = {**result, "evaluation": imported["name"]}
    return {
        **result,
        "version": result["version_id"],
        "vertex_uri": vertex_resource_uri(result["resource_name"], vertex_region),
    }


# -- lineage: what the components hand over --------------------------------------------------


def gather_lineage(
    model_dir: str,
    model_uri: str,
    model_name: str,
    lineage_dir: str,
    status: str,
    dataset: dict[str, Any] | None = None,
    evaluation_dir: str = "",
    evaluation_uri: str = "",
    champion: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
    deployment: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], str]:
    """Build the version's lineage record from the run's artifacts (see cauce.lineage)
    and write it as ``lineage.json`` into ``lineage_dir``; return it and the file."""
    from cauce import lineage

    evaluation = None
    if evaluation_dir and (Path(evaluation_dir) / "evaluation.json").is_file():
        evaluation = {**json.loads((Path(evaluation_dir) / "evaluation.json").read_text()), "uri": evaluation_uri or evaluation_dir}
    record = lineage.build_record(
        model_name=model_name,
        model_card=read_model_card(model_dir),
        model_uri=model_uri,
        content_hash=content_hash(model_dir),
        dataset=dataset,
        evaluation=evaluation,
        champion=champion,
        run=run,
        code=code,
        trigger=trigger,
        deployment=deployment,
        status=status,
        transform_recipe=_transform_recipe(model_dir),
    )
    return record, str(lineage.write_record(record, lineage_dir))


def _transform_recipe(model_dir: str) -> dict[str, Any] | None:
    """The unfitted recipe of the bundle's fitted transform (what transform refits)."""
    try:
        recipe = json.loads((Path(model_dir) / "transform.json").read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None
    return recipe if isinstance(recipe, dict) else None


def run_register_mlflow(
    model_dir: str,
    model_name: str,
    tracking_uri: str = "",
    alias: str = "champion",
    lineage_dir: str = "",
    lineage_uri: str = "",
    **lineage_inputs: Any,
) -> dict[str, str]:
    """What the ``register`` component does: write the lineage record into
    ``lineage_dir`` and register the model with it (tags, run artifact, experiment run)."""
    record, lineage_file = gather_lineage(
        model_dir, model_dir, model_name, lineage_dir, status=alias, **lineage_inputs
    ) if lineage_dir else (None, "")
    return register_mlflow(
        model_dir, model_name, tracking_uri, alias=alias, lineage=record,
        lineage_file=lineage_file, evaluation_dir=lineage_inputs.get("evaluation_dir", ""),
    )  # fmt: skip


def vertex_label_key(tag: str) -> str:
    """The Vertex label key of an MLflow-style ``cauce.<name>`` tag: ``cauce-<name>``."""
    return re.sub(r"[^a-z0-9-]", "-", tag.lower())[:63]


def vertex_lineage_labels(summary: dict[str, str]) -> dict[str, str]:
    """Lineage summary tags as Vertex labels (lowercase, at most 63 characters; hashes
    keep their first 40 hex digits, as the content label does)."""
    return {vertex_label_key(f"cauce.{key}"): vertex_label_value(value)[:40 if "sha" in key else 63] for key, value in summary.items()}


def update_vertex_version(aiplatform: Any, versioned_name: str, labels: dict[str, str] | None = None,
                          version_description: str | None = None) -> None:
    """Merge ``labels`` into one version's own labels and/or set its version description,
    with the SDK's ``ModelRegistry.update_version`` (``Model.update`` writes the model,
    not the version)."""
    resource_name, _, version_id = versioned_name.partition("@")
    registry = aiplatform.models.ModelRegistry(resource_name)
    merged = None
    if labels:
        merged = {**dict(registry.get_model(version_id).labels or {}), **labels}
        check_vertex_labels(merged)
    registry.update_version(version_id, version_description=version_description or None, labels=merged)


def set_vertex_status(
    project: str, location: str, resource_name: str, version_id: str, status: str, replaced: str = "",
    reason: str = "", api_endpoint: str = "", credentials: Any = None,
) -> None:
    """Vertex twin of :func:`set_mlflow_status`: labels ``cauce-status`` (and
    ``cauce-replaced`` on a new champion, the replaced one becoming ``retired``); a
    reason goes into the version description, which has room for it."""
    aiplatform = init_vertex(project, location, api_endpoint, credentials)
    labels = {vertex_label_key(STATUS_TAG): status}
    if status == "champion" and replaced and replaced != version_id:
        labels[vertex_label_key(REPLACED_TAG)] = replaced
    update_vertex_version(
        aiplatform, f"{resource_name}@{version_id}", labels=labels,
        version_description=f"{status}: {reason}" if reason else None,
    )  # fmt: skip
    if status == "champion" and replaced and replaced != version_id:
        update_vertex_version(aiplatform, f"{resource_name}@{replaced}", labels={vertex_label_key(STATUS_TAG): "retired"})
