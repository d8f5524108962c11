"""Tests of the register component.

MLflow runs for real on a SQLite registry in a temporary folder. Vertex AI has no
emulator: the real ``google-cloud-aiplatform`` SDK talks to the local stand-in in
``tests/fixtures/vertex_server.py`` over its REST transport (no mocks of the SDK).
"""

import json
from pathlib import Path

import pytest
from kfp import dsl, local

from cauce.artifacts import CauceError
from cauce.components.register.component import register
from cauce.components.register.executor import (
    CONTENT_HASH_TAG,
    default_mlflow_uri,
    register_mlflow,
    register_vertex,
    run_register_vertex,
)
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

PROJECT = "test-project"
LOCATION = "us-central1"
SERVING_IMAGE = "ghcr.io/cauce-ml/cauce-serving:test"


def make_model_dir(path: Path, auc: float = 0.91) -> Path:
    """A Model artifact directory as the train step writes it (with a stand-in model file)."""
    path.mkdir(parents=True)
    card = {
        "framework": "scikit-learn",
        "framework_version": "1.9.0",
        "label": "churned",
        "features": ["tenure", "plan"],
        "task": "binary_classification",
        "metrics": {"auc": auc, "accuracy": 0.85},
        "created_at": "2026-01-01T00:00:00Z",
    }
    (path / "cauce_model.json").write_text(json.dumps(card))
    (path / "transform.json").write_text(json.dumps({"features": card["features"]}))
    (path / "model.joblib").write_bytes(f"model weights {auc}".encode())
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # Run from an empty folder so a test can check that nothing lands in the cwd.
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"


def register_on_vertex(server, model_uri: str, display_name: str = "churn", **kwargs) -> dict:
    return register_vertex(
        model_uri=model_uri,
        display_name=display_name,
        project=PROJECT,
        location=LOCATION,
        serving_image=SERVING_IMAGE,
        api_endpoint=server.endpoint,
        **kwargs,
    )


# -- MLflow ----------------------------------------------------------------------------------


def test_mlflow_first_registration_creates_tagged_version_with_alias(tmp_path, tracking_uri):
    from mlflow import MlflowClient

    model_dir = make_model_dir(tmp_path / "model")
    result = register_mlflow(model_dir, "churn", tracking_uri, tags={"team": "growth"}, description="weekly")

    assert result == {
        "registry": "mlflow",
        "model_name": "churn",
        "version": "1",
        "model_uri": "models:/churn/1",
        "alias": "champion",
    }
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version_by_alias("churn", "champion")
    assert version.version == 1
    assert version.description == "weekly"
    assert version.tags["framework"] == "scikit-learn"
    assert version.tags["task"] == "binary_classification"
    assert float(version.tags["metric.auc"]) == 0.91
    assert version.tags["team"] == "growth"
    assert len(version.tags[CONTENT_HASH_TAG]) == 64
    run = client.get_run(version.run_id)
    assert run.data.metrics == {"auc": 0.91, "accuracy": 0.85}
    logged = {artifact.path for artifact in client.list_artifacts(version.run_id, "model")}
    assert logged == {"model/cauce_model.json", "model/transform.json", "model/model.joblib"}
    # Artifacts sit beside the database; nothing was written into the working directory.
    assert (tmp_path / "registry" / "artifacts" / "churn").is_dir()
    assert list(Path.cwd().iterdir()) == []


def test_mlflow_same_content_registers_nothing_new(tmp_path, tracking_uri):
    from mlflow import MlflowClient

    model_dir = make_model_dir(tmp_path / "model")
    first = register_mlflow(model_dir, "churn", tracking_uri)
    again = register_mlflow(model_dir, "churn", tracking_uri)

    assert again == first
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert [mv.version for mv in client.search_model_versions("name = 'churn'")] == [1]
    experiment = client.get_experiment_by_name("churn")
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_content_hash_ignores_when_a_model_was_made(tmp_path):
    """The same model trained again (another created_at, training time and zip entry
    timestamps) is the same content; a changed weight or metric is not."""
    import time
    import zipfile

    from cauce.components.register.executor import content_hash

    def bundle(path: Path, created: str, seconds: float, weights: bytes = b"w") -> Path:
        make_model_dir(path)
        card = json.loads((path / "cauce_model.json").read_text())
        (path / "cauce_model.json").write_text(json.dumps({**card, "created_at": created, "training_seconds": seconds}))
        with zipfile.ZipFile(path / "model.keras", "w") as archive:
            archive.writestr(zipfile.ZipInfo("model.weights.h5", time.localtime()[:6]), weights)
        return path

    first = content_hash(bundle(tmp_path / "a", "2026-01-01T00:00:00Z", 1.5))
    time.sleep(2)  # zip timestamps have a 2-second resolution
    assert content_hash(bundle(tmp_path / "b", "2026-03-01T10:00:00Z", 2.7)) == first
    assert content_hash(bundle(tmp_path / "c", "2026-01-01T00:00:00Z", 1.5, weights=b"x")) != first
    changed = bundle(tmp_path / "d", "2026-01-01T00:00:00Z", 1.5)
    card = json.loads((changed / "cauce_model.json").read_text())
    (changed / "cauce_model.json").write_text(json.dumps({**card, "metrics": {"auc": 0.5}}))
    assert content_hash(changed) != first


def test_mlflow_new_content_becomes_version_2_and_takes_the_alias(tmp_path, tracking_uri, monkeypatch):
    import mlflow

    register_mlflow(make_model_dir(tmp_path / "v1", auc=0.80), "churn", tracking_uri)
    second = register_mlflow(make_model_dir(tmp_path / "v2", auc=0.93), "churn", tracking_uri)

    assert (second["version"], second["model_uri"]) == ("2", "models:/churn/2")
    # What a user (or the serving step) does: resolve the alias through MLflow itself.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    resolved = Path(
        mlflow.artifacts.download_artifacts("models:/churn@champion", dst_path=str(tmp_path / "dl"))
    )
    assert json.loads((resolved / "cauce_model.json").read_text())["metrics"]["auc"] == 0.93


def test_default_mlflow_uri_lives_under_cauce_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAUCE_HOME", str(tmp_path / "home"))
    assert default_mlflow_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"


@pytest.mark.parametrize(
    ("prepare", "model_name", "alias", "message"),
    [
        (lambda d: None, "churn", "champion", "model directory not found"),
        (lambda d: d.mkdir(), "churn", "champion", "cauce_model.json not found"),
        (lambda d: make_model_dir(d), "", "champion", "model_name is empty"),
        (lambda d: make_model_dir(d), "team/churn", "champion", "not usable in MLflow"),
        (lambda d: make_model_dir(d), "churn", "latest", "not a valid MLflow alias"),
    ],
)
def test_mlflow_bad_input_raises_cauce_error(tmp_path, tracking_uri, prepare, model_name, alias, message):
    model_dir = tmp_path / "model"
    prepare(model_dir)
    with pytest.raises(CauceError, match=message):
        register_mlflow(model_dir, model_name, tracking_uri, alias=alias)
    assert not (tmp_path / "registry").exists()


# kfp.local warns that our base image is not a plain Python image; use_venv=False runs in this venv.
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_register_component_runs_under_kfp_local(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    # No tracking URI given: the component must fall back to $CAUCE_HOME's SQLite registry.
    monkeypatch.setenv("CAUCE_HOME", str(tmp_path / "home"))
    model_dir = make_model_dir(tmp_path / "model")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "pipeline_root"),
        workspace_root=str(tmp_path / "workspace"),
    )

    @dsl.pipeline
    def register_pipeline() -> str:
        trained = dsl.importer(artifact_uri=str(model_dir), artifact_class=dsl.Model)
        return register(model=trained.output, model_name="churn").outputs["model_uri"]

    run = register_pipeline()

    assert run.output == "models:/churn/1"
    uri = default_mlflow_uri()
    assert uri.startswith(f"sqlite:///{tmp_path / 'home'}")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version_by_alias("churn", "champion").version == 1
    [metadata_file] = (tmp_path / "pipeline_root").rglob("executor_output.json")
    artifacts = json.loads(metadata_file.read_text())["artifacts"]
    assert artifacts["registered_model"]["artifacts"][0]["metadata"]["model_uri"] == "models:/churn/1"
    [registered] = artifacts["registered_model"]["artifacts"]
    # The registered version is a plain Model (no google.VertexModel in MLflow mode), the trained files.
    assert set(artifacts) == {"registered_model", "lineage"}
    assert registered["uri"] == str(model_dir)
    # Registered outside a training run: the lineage record says what it lacks.
    lineage_uri = artifacts["lineage"]["artifacts"][0]["uri"]
    record = json.loads((Path(lineage_uri) / "lineage.json").read_text())
    assert record["model"]["name"] == "churn" and record["source"] is None and record["champion"] is None
    assert client.get_model_version("churn", "1").tags["cauce.lineage_uri"] == str(Path(lineage_uri) / "lineage.json")


# -- Vertex AI -------------------------------------------------------------------------------


def test_vertex_first_registration_creates_a_model(vertex_server):  # noqa: F811
    result = register_on_vertex(
        vertex_server, "gs://bucket/churn/v1", labels={"team": "growth"}, description="weekly churn model"
    )

    [model_id] = vertex_server.models
    resource_name = f"projects/{PROJECT}/locations/{LOCATION}/models/{model_id}"
    assert result == {
        "registry": "vertex",
        "resource_name": resource_name,
        "version_id": "1",
        "model_uri": f"{resource_name}@1",
        "alias": "champion",
    }
    [upload] = vertex_server.requests_to("POST", "/models:upload")
    assert "parentModel" not in upload.body
    sent = upload.body["model"]
    assert sent["displayName"] == "churn"
    assert sent["artifactUri"] == "gs://bucket/churn/v1"
    assert sent["labels"] == {"team": "growth"}
    assert sent["description"] == "weekly churn model"
    assert sent["containerSpec"] == {
        "imageUri": SERVING_IMAGE,
        "predictRoute": "/predict",
        "healthRoute": "/health",
    }
    assert sorted(sent["versionAliases"]) == ["champion", "default"]


def test_vertex_second_registration_is_version_2_of_the_same_model(vertex_server):  # noqa: F811
    from google.cloud import aiplatform

    first = register_on_vertex(vertex_server, "gs://bucket/churn/v1")
    second = register_on_vertex(vertex_server, "gs://bucket/churn/v2")

    assert second["resource_name"] == first["resource_name"]
    assert (second["version_id"], second["model_uri"]) == ("2", f"{first['resource_name']}@2")
    uploads = vertex_server.requests_to("POST", "/models:upload")
    assert uploads[1].body["parentModel"] == first["resource_name"]
    # The alias and the default moved to version 2; version 1 kept nothing.
    champion = aiplatform.Model(f"{first['resource_name']}@champion")
    assert (champion.version_id, champion.uri) == ("2", "gs://bucket/churn/v2")
    [model_id] = vertex_server.models
    assert vertex_server.models[model_id]["1"]["versionAliases"] == []
    assert sorted(vertex_server.models[model_id]["2"]["versionAliases"]) == ["champion", "default"]


def test_vertex_other_display_name_is_another_model(vertex_server):  # noqa: F811
    churn = register_on_vertex(vertex_server, "gs://bucket/churn/v1")
    upsell = register_on_vertex(
        vertex_server, "gs://bucket/upsell/v1", display_name="upsell", alias="candidate"
    )

    assert upsell["resource_name"] != churn["resource_name"]
    assert (upsell["version_id"], upsell["alias"]) == ("1", "candidate")


def test_run_register_sends_card_labels_and_metrics_to_vertex(tmp_path, vertex_server):  # noqa: F811
    result = run_register_vertex(
        model_dir=str(make_model_dir(tmp_path / "model")),
        model_uri="gs://bucket/churn/v1",
        model_name="churn",
        project=PROJECT,
        vertex_region=LOCATION,
        vertex_api_endpoint=vertex_server.endpoint,
        serving_image=SERVING_IMAGE,
    )

    assert result["version"] == result["version_id"] == "1"
    assert result["vertex_uri"] == f"https://{LOCATION}-aiplatform.googleapis.com/v1/{result['resource_name']}"
    [upload] = vertex_server.requests_to("POST", "/models:upload")
    labels = upload.body["model"]["labels"]
    assert {k: v for k, v in labels.items() if k != "cauce-content"} == {
        "framework": "scikit-learn",
        "task": "binary_classification",
    }
    assert len(labels["cauce-content"]) == 40
    assert upload.body["model"]["description"] == "metrics: accuracy=0.85, auc=0.91"


def test_vertex_registering_the_same_model_again_uploads_nothing(tmp_path, vertex_server):  # noqa: F811
    """A retried step finds its version by the content label; only the alias moves back."""
    arguments = dict(model_name="churn", project=PROJECT, vertex_region=LOCATION,
                     vertex_api_endpoint=vertex_server.endpoint, serving_image=SERVING_IMAGE)
    first = run_register_vertex(model_dir=str(make_model_dir(tmp_path / "v1", auc=0.9)), model_uri="gs://b/v1", **arguments)
    second = run_register_vertex(model_dir=str(make_model_dir(tmp_path / "v2", auc=0.8)), model_uri="gs://b/v2",
                          alias="challenger", **arguments)
    again = run_register_vertex(model_dir=str(tmp_path / "v1"), model_uri="gs://b/v1-retry", alias="challenger", **arguments)
    assert (first["version"], second["version"], again["version"]) == ("1", "2", "1")
    assert again["reused"] is True
    assert len(vertex_server.requests_to("POST", "/models:upload")) == 2
    (model_id,) = vertex_server.models
    versions = vertex_server.models[model_id]
    assert "challenger" in versions["1"]["versionAliases"] and "challenger" not in versions["2"]["versionAliases"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"display_name": ""}, "display_name is empty"),
        ({"display_name": "x" * 129}, "at most 128"),
        ({"labels": {"Team": "growth"}}, "label key 'Team' is invalid"),
        ({"labels": {"team": "Growth"}}, "label team='Growth' is invalid"),
        ({"labels": {"team": "g" * 64}}, "is invalid"),
        ({"alias": "2"}, "not a valid Vertex AI version alias"),
        ({"model_uri": "/tmp/churn"}, "not a gs:// URI"),
        ({"serving_image": ""}, "serving_image is empty"),
        ({"project": ""}, "project is empty"),
    ],
)
def test_vertex_bad_input_raises_before_any_request(vertex_server, overrides, message):  # noqa: F811
    arguments = {
        "model_uri": "gs://bucket/churn/v1",
        "display_name": "churn",
        "project": PROJECT,
        "location": LOCATION,
        "serving_image": SERVING_IMAGE,
        "api_endpoint": vertex_server.endpoint,
        **overrides,
    }
    with pytest.raises(CauceError, match=message):
        register_vertex(**arguments)
    assert vertex_server.requests == []


# -- evaluations in Vertex AI Model Registry --------------------------------------------------


def write_evaluation(directory: Path) -> Path:
    """An ``evaluation.json`` as evaluate writes it (binary, one slice feature)."""
    directory.mkdir(parents=True)
    summary = {
        "task": "binary", "blessed": True, "reasons": [], "split": "eval", "rows": 600, "label": "churned",
        "metrics": {"auc": 0.91, "auc_precision_recall": 0.88, "binary_crossentropy": 0.35, "precision": 0.8,
                    "recall": 0.7, "binary_accuracy": 0.86, "example_count": 600},
        "slices": [
            {"feature": "plan", "value": "basic", "metrics": {"auc": 0.9, "binary_crossentropy": 0.4, "precision": 0.8, "recall": 0.6}},
            {"feature": "plan", "value": "pro", "metrics": {"auc": 0.93, "binary_crossentropy": 0.3, "precision": 0.9, "recall": 0.8}},
        ],
        "thresholds": {"auc": {"lower_bound": 0.5}},
        "confusion_matrix": {"threshold": 0.5, "labels": ["0", "1"], "matrix": [[300, 40], [50, 210]]},
    }  # fmt: skip
    (directory / "evaluation.json").write_text(json.dumps(summary))
    return directory


def test_register_vertex_imports_the_evaluation_overall_and_per_slice(tmp_path, vertex_server):  # noqa: F811
    from google.cloud import aiplatform

    arguments = dict(
        model_dir=str(make_model_dir(tmp_path / "model")), model_uri="gs://bucket/churn/v1", model_name="churn",
        project=PROJECT, vertex_region=LOCATION, vertex_api_endpoint=vertex_server.endpoint,
        serving_image=SERVING_IMAGE, lineage_dir=str(tmp_path / "lineage"),
        evaluation_dir=str(write_evaluation(tmp_path / "evaluation")), evaluation_uri="gs://bucket/run/evaluation",
        run={"pipeline_job_id": "123", "pipeline_job_name": "cauce-training-20260101"},
    )  # fmt: skip
    result = run_register_vertex(**arguments)

    [imported] = vertex_server.requests_to("POST", "/evaluations:import")
    assert imported.path.endswith(f"/models/{next(iter(vertex_server.models))}@1/evaluations:import")
    [evaluation] = vertex_server.evaluations.values()
    assert evaluation["_version"] == "1" and evaluation["name"] == result["evaluation"]
    assert evaluation["metricsSchemaUri"].endswith("/classification_metrics_1.0.0.yaml")
    assert evaluation["displayName"] == "cauce-evaluate cauce-training-20260101"
    assert evaluation["metrics"]["auRoc"] == 0.91 and evaluation["metrics"]["auPrc"] == 0.88
    assert evaluation["metrics"]["logLoss"] == 0.35
    assert evaluation["metrics"]["confidenceMetrics"] == [{"confidenceThreshold": 0.5, "precision": 0.8, "recall": 0.7}]
    assert evaluation["metrics"]["confusionMatrix"]["rows"] == [[300, 40], [50, 210]]
    assert evaluation["sliceDimensions"] == ["plan"]
    assert evaluation["metadata"]["blessed"] is True and evaluation["metadata"]["metrics"]["binary_accuracy"] == 0.86
    assert evaluation["metadata"]["evaluation_uri"] == "gs://bucket/run/evaluation"
    slices = vertex_server.evaluation_slices[evaluation["name"]]
    assert [(s["slice"]["dimension"], s["slice"]["value"], s["metrics"]["auRoc"]) for s in slices] == [
        ("plan", "basic", 0.9), ("plan", "pro", 0.93),
    ]  # fmt: skip

    # What the evaluation tab shows, read back through the SDK.
    model = aiplatform.Model(result["model_uri"])
    [read] = model.list_model_evaluations()
    assert read.resource_name == evaluation["name"] and read.metrics["auRoc"] == 0.91

    # A retried step imports nothing twice.
    again = run_register_vertex(**arguments)
    assert again["evaluation"] == result["evaluation"] and again["version"] == "1"
    assert len(vertex_server.requests_to("POST", "/evaluations:import")) == 1
    assert len(vertex_server.requests_to("POST", "/slices:batchImport")) == 1


def test_regression_evaluation_uses_the_regression_schema(tmp_path, vertex_server):  # noqa: F811
    from cauce.components.register.executor import import_vertex_evaluation

    register_on_vertex(vertex_server, "gs://bucket/price/v1", display_name="price")
    [model_id] = vertex_server.models
    summary = {"task": "regression", "metrics": {"root_mean_squared_error": 2.5, "mean_absolute_error": 1.5,
               "mean_squared_error": 6.25}, "slices": []}  # fmt: skip
    imported = import_vertex_evaluation(
        PROJECT, LOCATION, f"projects/{PROJECT}/locations/{LOCATION}/models/{model_id}@1", summary,
        api_endpoint=vertex_server.endpoint,
    )  # fmt: skip
    evaluation = vertex_server.evaluations[imported["name"]]
    assert evaluation["metricsSchemaUri"].endswith("/regression_metrics_1.0.0.yaml")
    assert evaluation["metrics"] == {"rootMeanSquaredError": 2.5, "meanAbsoluteError": 1.5}
    assert vertex_server.requests_to("POST", "/slices:batchImport") == []
    with pytest.raises(CauceError, match="no Vertex AI metrics schema"):
        import_vertex_evaluation(PROJECT, LOCATION, "x", {"task": "ranking"}, api_endpoint=vertex_server.endpoint)


def test_the_stand_in_refuses_evaluation_bodies_the_service_would_not_parse(vertex_server):  # noqa: F811
    import urllib.error
    import urllib.request

    register_on_vertex(vertex_server, "gs://bucket/churn/v1")
    [model_id] = vertex_server.models
    url = f"{vertex_server.endpoint}/v1/projects/{PROJECT}/locations/{LOCATION}/models/{model_id}@1/evaluations:import"
    for body in ({"modelEvaluation": {"metricsSchemaUri": "gs://s.yaml", "metrics": {"auRoc": 0.9}, "auc": 0.9}},
                 {"modelEvaluation": {"metrics": {"auRoc": 0.9}}}):  # fmt: skip
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)  # noqa: S310 - the local stand-in
        assert refused.value.code == 400
    assert vertex_server.evaluations == {}
