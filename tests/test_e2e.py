"""End to end: the compiled `training` YAML, loaded back from the file, runs
under kfp.local on a small generated table; then the `monitoring` spec runs on
the requests the deployed model logged. Everything is real: local BigQuery
engine, Beam DirectRunner, scikit-learn, TFMA, MLflow on sqlite, the serving
process on loopback."""

import datetime
import json
from pathlib import Path

import pytest

from cauce import demo, spec
from cauce.components.deploy.executor import post_json, smoke_instances_from, stop_local
from cauce.local import PipelineFailed, run_spec

ENDPOINT = "e2e-tips"
training_run_arguments: dict = {}  # filled by the training_run fixture, reused by the challenger run


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    out = tmp_path_factory.mktemp("specs")
    return {name: spec.compile_pipeline(name, out) for name in ("training", "monitoring")}


@pytest.fixture(scope="module")
def training_run(specs, tmp_path_factory):
    import socket

    database = tmp_path_factory.mktemp("bq") / "local.duckdb"
    demo.ensure_demo_table(database, rows=3000, seed=11)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    arguments = training_run_arguments
    arguments.update({
        **demo.DEMO_PARAMETERS,
        "local_database": str(database),
        "port": port,
        "endpoint_name": ENDPOINT,
        "model_name": "e2e-tips",
        "hyperparameters": {"model_type": "hist_gradient_boosting", "max_iter": 40},
    })
    run = run_spec(specs["training"], arguments, pipeline_root=tmp_path_factory.mktemp("runs"))
    yield run
    stop_local(ENDPOINT)


def test_every_phase_ran_and_produced_real_outputs(training_run):
    extract = training_run.task("extract")
    split_rows = extract.artifacts["dataset"]["metadata"]["split_rows"]
    assert sum(split_rows.values()) == 3000
    assert 0.75 < split_rows["train"] / 3000 < 0.85  # an 80/20 hash split

    validate = training_run.task("validate")  # the demo data passes the gate
    assert validate.parameters["Output"] == 0
    assert validate.artifacts["statistics"]["metadata"]["split_rows"] == split_rows
    assert training_run.task("transform").parameters["features_out"] > 8
    assert training_run.task("train").parameters["eval_auc"] > 0.7  # well above chance (0.5)

    evaluate = training_run.task("evaluate")
    assert evaluate.parameters["Output"] is True  # blessed
    assert evaluate.artifacts["metrics"]["metadata"]["auc"] > 0.7

    register = training_run.task("register")
    assert register.parameters["version"] == "1"
    assert register.parameters["model_uri"].startswith("models:/e2e-tips/")


def test_registered_version_resolves_in_mlflow(training_run):
    from mlflow import MlflowClient

    from cauce.paths import default_mlflow_uri

    client = MlflowClient(tracking_uri=default_mlflow_uri(), registry_uri=default_mlflow_uri())
    version = client.get_model_version_by_alias("e2e-tips", "champion")
    assert str(version.version) == "1"


def test_deployed_model_answers_live_predictions(training_run):
    deploy = training_run.task("deploy")
    url = deploy.parameters["endpoint_url"]
    raw = training_run.task("extract").artifacts["dataset"]["uri"]
    model_dir = training_run.task("train").artifacts["model"]["uri"]
    instances = smoke_instances_from(raw, "eval", model_dir, rows=3)
    status, body = post_json(url, {"instances": instances})
    assert status == 200
    assert [set(p) for p in body["predictions"]] == [{"label", "score"}] * 3


def test_first_model_becomes_champion_without_a_comparison(training_run):
    # Nothing registered before: the champion artifact says so, and evaluate had nothing to compare.
    assert training_run.task("champion").artifacts["champion_model"]["metadata"]["found"] is False
    evaluation = json.loads(
        (Path(training_run.task("evaluate").artifacts["evaluation"]["uri"]) / "evaluation.json").read_text()
    )
    assert evaluation["champion"] is None
    # Registered pending; the deploy step made it champion once it served (issue 16).
    registered = training_run.task("register").artifacts["registered_model"]["metadata"]
    assert registered["alias"] == "pending"
    assert training_run.task("deploy").artifacts["endpoint"]["metadata"]["champion"] == registered["version"]
    from cauce.model_registry import LocalRegistry

    [version] = LocalRegistry().list("e2e-tips")[:1]
    assert (version.aliases, version.status) == (["champion"], "champion")


def test_a_worse_challenger_is_registered_but_not_deployed(training_run, specs, tmp_path):
    """Second run of the same compiled spec with a deliberately weak model: the gate
    compares it with the champion, registers it as challenger, and the endpoint keeps
    serving the champion."""
    from mlflow import MlflowClient

    from cauce.components.deploy.executor import local_endpoint
    from cauce.paths import default_mlflow_uri

    serving_before = local_endpoint(ENDPOINT)
    run = run_spec(
        specs["training"],
        dict(training_run_arguments, hyperparameters={"model_type": "hist_gradient_boosting", "max_iter": 1, "max_leaf_nodes": 2}),
        pipeline_root=tmp_path / "runs",
    )
    champion = run.task("champion").artifacts["champion_model"]  # the first run's model, as a Model artifact
    assert champion["metadata"]["found"] is True
    assert json.loads((Path(champion["uri"]) / "cauce_model.json").read_text())["label"] == demo.DEMO_LABEL
    assert run.task("evaluate").parameters["Output"] is False
    evaluation = json.loads((Path(run.task("evaluate").artifacts["evaluation"]["uri"]) / "evaluation.json").read_text())
    assert any("vs champion" in reason for reason in evaluation["reasons"])
    assert run.task("deploy") is None
    registered = run.task("register").artifacts["registered_model"]["metadata"]
    assert registered["alias"] == "challenger" and registered["version"] == "2"
    client = MlflowClient(tracking_uri=default_mlflow_uri(), registry_uri=default_mlflow_uri())
    assert str(client.get_model_version_by_alias("e2e-tips", "champion").version) == "1"
    assert local_endpoint(ENDPOINT)["pid"] == serving_before["pid"]  # the champion still serves


@pytest.mark.parametrize("drifted", [False, True], ids=["same-traffic", "drifted-traffic"])
def test_monitoring_spec_reports_drift_on_logged_requests(training_run, specs, tmp_path, drifted):
    deploy = training_run.task("deploy")
    raw = training_run.task("extract").artifacts["dataset"]["uri"]
    model_dir = training_run.task("train").artifacts["model"]["uri"]
    instances = smoke_instances_from(raw, "eval", model_dir, rows=300)
    if drifted:  # longer trips paid in cash: both kinds of feature move
        instances = [dict(i, trip_miles=(i["trip_miles"] or 0) * 4 + 10, payment_type="Cash") for i in instances]
    window_start = datetime.datetime.now(datetime.timezone.utc).isoformat()
    status, _ = post_json(deploy.parameters["endpoint_url"], {"instances": instances})
    assert status == 200

    run = run_spec(
        specs["monitoring"],
        {"baseline_uri": raw, "request_log_dir": deploy.parameters["request_log_dir"], "window_start": window_start,
         **demo.DEMO_MONITORING_PARAMETERS},
        pipeline_root=tmp_path / "runs",
    )
    monitor = run.task("monitor")
    report_dir = Path(monitor.artifacts["drift_report"]["uri"])
    report = json.loads((report_dir / "report.json").read_text()) if report_dir.is_dir() else json.loads(report_dir.read_text())
    assert monitor.parameters["Output"] is drifted  # the drift flag the graph branches on
    if drifted:
        assert {"trip_miles", "payment_type"} <= set(monitor.artifacts["drift_report"]["metadata"]["drifted_features"])
    assert run.task("retrain") is None  # retrain_on_drift is off: the dsl.If skips it
    assert report is not None


def test_bad_input_fails_the_pipeline_with_a_clear_message(specs, tmp_path):
    database = tmp_path / "local.duckdb"
    demo.ensure_demo_table(database, rows=200, seed=1)
    # preflight, the first step, refuses it before any work, naming the columns there are
    with pytest.raises(PipelineFailed, match="label 'no_such_label' is not a column of the source; columns: unique_key STRING"):
        run_spec(
            specs["training"],
            # 200 rows: the eval split cannot cover training's 77 community areas, so validate
            # would (rightly) stop the run first; "warn" lets it reach transform's label check.
            {**demo.DEMO_PARAMETERS, "local_database": str(database), "label": "no_such_label", "endpoint_name": "e2e-bad",
             "validation_policy": "warn"},
            pipeline_root=tmp_path / "runs",
        )
    # The failed step left no artifact that a later step could take for good.
    # The run folder, not the run's .log file beside it.
    run_dir = next(path for path in (tmp_path / "runs").glob("cauce-training-*") if path.is_dir())
    assert not (run_dir / "transform" / "transformed").exists()
    assert not list((run_dir / "transform").glob(".*partial*"))
