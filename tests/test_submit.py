"""`cauce submit` without --dry-run: the real Vertex AI SDK creates the PipelineJob on
the local Vertex REST server (tests/fixtures/vertex_server.py), including the Cloud
Storage calls the SDK makes for the pipeline root."""

import pytest
import yaml
from typer.testing import CliRunner

from cauce import spec
from cauce.cli import app
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

runner = CliRunner()
SERVICE_ACCOUNT = "pipelines@acme-ml.iam.gserviceaccount.com"


@pytest.fixture
def vertex(vertex_server, monkeypatch):  # noqa: F811
    from google.cloud.aiplatform import initializer

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    # `cauce submit` calls aiplatform.init, whose settings (this server's endpoint among
    # them) are process-wide: put them back afterwards. (The object itself must stay:
    # `aiplatform.init` is a method bound to it.)
    saved = dict(vars(initializer.global_config))
    yield vertex_server
    vars(initializer.global_config).clear()
    vars(initializer.global_config).update(saved)


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def submit(server, pipeline, *extra):
    return runner.invoke(
        app,
        ["submit", pipeline, "--project", "acme-ml", "--region", "europe-west4", "--pipeline-root",
         "gs://acme-ml-pipelines/root", "--api-endpoint", server.endpoint, "--service-account", SERVICE_ACCOUNT, *extra],
    )  # fmt: skip


def test_submit_creates_the_pipeline_job_on_vertex(vertex, tmp_path):
    compiled = spec.compile_pipeline("training", tmp_path)
    result = submit(
        vertex, "training", "--spec", compiled, "--param", "endpoint_name=tips", "--param", "port=9000",
        "--param", 'dataflow={"temp_location": "gs://acme-ml-tmp/dataflow"}',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [job] = vertex.pipeline_jobs.values()
    assert f"submitted: {job['name']}" in result.output
    assert job["name"].startswith("projects/acme-ml/locations/europe-west4/pipelineJobs/cauce-training-")
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    values = job["runtimeConfig"]["parameterValues"]
    assert values["endpoint_name"] == "tips" and values["port"] == 9000  # typed by the signature
    assert (values["target"], values["project"], values["vertex_region"]) == ("google-cloud", "acme-ml", "europe-west4")
    # Dataflow runs in the job's region unless the dataflow options name one.
    assert values["dataflow"] == {"region": "europe-west4", "temp_location": "gs://acme-ml-tmp/dataflow"}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://acme-ml-pipelines/root"
    compiled_spec = yaml.safe_load(compiled.read_text())  # the spec file, not a fresh compile
    for key in ("pipelineInfo", "deploymentSpec", "components"):
        assert job["pipelineSpec"][key].keys() == compiled_spec[key].keys()
    assert job["pipelineSpec"]["deploymentSpec"] == compiled_spec["deploymentSpec"]
    # The SDK created the missing bucket and let the job's service account use it.
    members = {m for binding in vertex.buckets["acme-ml-pipelines"] for m in binding["members"]}
    assert f"serviceAccount:{SERVICE_ACCOUNT}" in members


def test_submit_sets_only_the_parameters_a_pipeline_has(vertex):
    result = submit(vertex, "monitoring", "--param", "baseline_uri=gs://b/data", "--param", "request_log_dir=gs://b/logs")
    assert result.exit_code == 0, result.output
    [job] = vertex.pipeline_jobs.values()
    # monitoring has target, project and vertex_region (retraining, Vertex Model Monitoring) but no dataflow
    values = job["runtimeConfig"]["parameterValues"]
    assert set(values) == {"baseline_uri", "request_log_dir", "target", "project", "vertex_region"}
    assert (values["target"], values["project"], values["vertex_region"]) == ("google-cloud", "acme-ml", "europe-west4")


def test_submit_errors_name_the_problem(vertex, tmp_path):
    result = submit(vertex, "monitoring")
    # request_log_dir is optional now: the log may be a BigQuery table or the endpoint's own.
    assert result.exit_code == 1 and "needs --param baseline_uri=..." in flat(result.output)
    monitoring = spec.compile_pipeline("monitoring", tmp_path)
    result = submit(vertex, "training", "--spec", monitoring)
    assert result.exit_code == 1 and "is the pipeline 'cauce-monitoring', not 'cauce-training'" in flat(result.output)
    vertex.pipeline_jobs["taken"] = {}
    result = submit(vertex, "training", "--region", "mars-north1")
    assert result.exit_code == 1 and "cannot build the Vertex job: Unsupported region" in flat(result.output)
    assert list(vertex.pipeline_jobs) == ["taken"]


def test_submit_makes_the_job_a_run_of_a_vertex_ai_experiment(vertex):
    """`--experiment` on Vertex: PipelineJob.submit(experiment=...) creates the experiment
    (an ML Metadata context, system.Experiment) when missing and adds the job's run
    context to it, so the runs compare side by side in Vertex AI Experiments."""
    from google.cloud import aiplatform

    args = ["--param", "baseline_uri=gs://b/data", "--param", "request_log_dir=gs://b/logs", "--experiment", "drift-checks"]
    for _ in range(2):
        result = submit(vertex, "monitoring", *args)
        assert result.exit_code == 0, result.output
    store = "projects/acme-ml/locations/europe-west4/metadataStores/default"
    experiment = vertex.contexts[f"{store}/contexts/drift-checks"]
    assert experiment["schemaTitle"] == "system.Experiment"
    runs = [job["jobDetail"]["pipelineRunContext"]["name"] for job in vertex.pipeline_jobs.values()]
    assert len(runs) == 2 and experiment["childContexts"] == runs
    assert len(vertex.requests_to("POST", "/metadataStores/default/contexts")) == 1  # found the second time
    # What a user sees through the SDK: the experiment and its pipeline runs.
    listed = aiplatform.Experiment("drift-checks", project="acme-ml", location="europe-west4")
    assert listed.name == "drift-checks"


def test_a_bad_experiment_name_is_refused_before_any_request(vertex):
    result = submit(vertex, "monitoring", "--param", "baseline_uri=gs://b/data", "--param", "request_log_dir=gs://b/logs",
                    "--experiment", "Drift Checks")  # fmt: skip
    assert result.exit_code == 1 and "is not a Vertex AI experiment name" in flat(result.output)
    assert vertex.pipeline_jobs == {} and vertex.contexts == {}
