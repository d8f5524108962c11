"""Compiled specs: strict offline validation, parameter parsing, and the CLI
entrypoints that compile, validate and (dry-run) submit them."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from cauce import spec
from cauce.artifacts import CauceError
from cauce.cli import app
from cauce.pipelines import PIPELINES

runner = CliRunner()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("specs")
    return {name: spec.compile_pipeline(name, out) for name in PIPELINES}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_validates_strictly(compiled, name):
    info = spec.validate_spec(compiled[name])
    assert info["name"] == f"cauce-{name}"
    assert all(image.startswith("ghcr.io/cauce-ml/cauce-") for image in info["images"])


def test_training_spec_shape(compiled):
    info = spec.validate_spec(compiled["training"])
    # The train tasks sit in the framework branches (one per image family: test_preflight.py).
    assert {"preflight", "extract", "transform", "evaluate"} <= set(info["tasks"])
    for parameter in ("target", "project", "runner", "dataflow", "mlflow_tracking_uri", "thresholds", "framework"):
        assert parameter in info["parameters"]
    text = compiled["training"].read_text()
    # No credentials or local paths baked into the spec that goes to Vertex.
    for secret_like in ("private_key", "client_secret", "access_token", "/root/", "/tmp/"):
        assert secret_like not in text


def test_dataflow_workers_run_the_beam_image_the_spec_was_compiled_with(compiled):
    from cauce.images import BEAM_IMAGE

    document = yaml.safe_load(compiled["training"].read_text())
    parameters = document["root"]["inputDefinitions"]["parameters"]
    # Fixed at compile time: the running step does not know which release compiled it.
    transform_inputs = document["root"]["dag"]["tasks"]["transform"]["inputs"]["parameters"]
    assert transform_inputs["beam_image"]["runtimeValue"]["constant"] == BEAM_IMAGE
    # Every Dataflow option reaches the pipeline, as one object the transform step checks.
    assert transform_inputs["dataflow"]["componentInputParameter"] == "dataflow"
    assert parameters["dataflow"]["parameterType"] == "STRUCT" and "transform_recipe" in parameters
    assert not [name for name in parameters if name.startswith("dataflow_")]


def test_vertex_pipeline_job_builds_offline_with_real_parameters(compiled):
    job = spec._build_vertex_job(compiled["training"], {"project": "p", "target": "google-cloud", "port": 9000})
    values = job._gca_resource.runtime_config.parameter_values
    assert values["target"] == "google-cloud" and values["port"] == 9000


def test_unknown_parameter_is_rejected_by_the_vertex_sdk(compiled):
    with pytest.raises(ValueError):
        spec._build_vertex_job(compiled["training"], {"no_such_parameter": 1})


def test_unknown_fields_and_two_documents_are_rejected(compiled, tmp_path):
    document = yaml.safe_load(compiled["training"].read_text())
    document["notAField"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    with pytest.raises(CauceError, match="notAField"):
        spec.validate_spec(bad)
    two = tmp_path / "two.yaml"
    two.write_text(compiled["training"].read_text() + "\n---\nplatforms: {kubernetes: {}}\n")
    with pytest.raises(CauceError, match="2 YAML documents"):
        spec.validate_spec(two)


def test_image_digests_are_a_compile_time_setting(tmp_path, monkeypatch):
    import importlib

    import cauce.images

    digest = "us-docker.pkg.dev/p/r/cauce-base@sha256:" + "a" * 64
    monkeypatch.setenv("CAUCE_IMAGE_BASE", digest)
    assert cauce.images.image_for("base") == digest
    importlib.reload(cauce.images)
    assert cauce.images.BASE_IMAGE == digest
    monkeypatch.delenv("CAUCE_IMAGE_BASE")
    importlib.reload(cauce.images)


def test_parse_params_types_values_by_the_signature():
    values = spec.parse_params("training", ["port=9000", "thresholds={\"auc\": 0.8}", "model_name=007", "slice_features=[\"company\"]"])
    assert values == {"port": 9000, "thresholds": {"auc": 0.8}, "model_name": "007", "slice_features": ["company"]}
    with pytest.raises(CauceError, match="no parameter 'bogus'"):
        spec.parse_params("training", ["bogus=1"])
    with pytest.raises(CauceError, match="'port' expects Integer"):
        spec.parse_params("training", ["port=eighty"])
    with pytest.raises(CauceError, match="name=value"):
        spec.parse_params("training", ["port"])


def test_cli_compile_and_validate(tmp_path):
    result = runner.invoke(app, ["compile", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitoring.yaml", "training.yaml"]
    result = runner.invoke(app, ["validate", str(tmp_path / "training.yaml")])
    assert result.exit_code == 0 and "valid" in result.output


def test_cli_submit_dry_run_builds_the_vertex_job():
    result = runner.invoke(
        app,
        ["submit", "training", "--project", "acme-ml", "--region", "europe-west4",
         "--pipeline-root", "gs://acme-ml-pipelines/root", "--param", "endpoint_name=tips", "--dry-run"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output[: result.output.rindex("}") + 1])
    parameters = body["runtimeConfig"]["parameterValues"]
    assert parameters["project"] == "acme-ml" and parameters["target"] == "google-cloud"
    assert parameters["endpoint_name"] == "tips"
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://acme-ml-pipelines/root"


def test_cli_submit_refuses_a_local_pipeline_root():
    result = runner.invoke(app, ["submit", "training", "--project", "p", "--region", "r", "--pipeline-root", "/tmp/x", "--dry-run"])
    assert result.exit_code == 1 and "gs://" in result.output
