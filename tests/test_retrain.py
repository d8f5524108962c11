"""The retrain trigger: the monitoring graph runs it only on drift and the flag; a
detached kfp.local run of the compiled spec locally; a PipelineJob through the real Vertex SDK against the local
Vertex server (tests/fixtures/vertex_server.py)."""

import json
import os
import time
from pathlib import Path

import pytest
from kfp import compiler, dsl

from cauce.artifacts import CauceError
from cauce.components.retrain.executor import start_training_run
from tests.fixtures.vertex_server import vertex_server  # noqa: F401
from tests.test_monitor import monitored  # noqa: F401


@dsl.component(install_kfp_package=False)
def say(word: str) -> str:
    return word * 2


@dsl.pipeline(name="tiny-training")
def tiny_training(word: str = "a") -> str:
    return say(word=word).output


@dsl.component(install_kfp_package=False)
def echo_trigger(trigger: dict) -> str:
    import json

    return json.dumps(trigger, sort_keys=True)


@dsl.pipeline(name="tiny-traced-training")
def tiny_traced_training(word: str = "a", trigger: dict = {}) -> str:  # noqa: B006 - a KFP default
    """Declares ``trigger`` as cauce's training pipeline does (its lineage records it)."""
    echo_trigger(trigger=trigger)
    return say(word=word).output


@pytest.fixture
def tiny_spec(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    compiler.Compiler().compile(tiny_training, str(path))
    return str(path)


@pytest.fixture
def traced_spec(tmp_path) -> str:
    path = tmp_path / "traced.yaml"
    compiler.Compiler().compile(tiny_traced_training, str(path))
    return str(path)


def finished_run(started: str) -> Path:
    """Wait for a detached local run (``local:<pid>:<log>``); its kfp.local run folder."""
    _, pid, log = started.split(":", 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "retraining run finished" not in Path(log).read_text():
        try:
            os.waitpid(int(pid), os.WNOHANG)  # our child: reap it; a step's (not ours): ChildProcessError
        except ChildProcessError:
            pass
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    text = Path(log).read_text()
    assert "retraining run finished" in text, text
    return Path(text.split("finished: ", 1)[1].split(" in ", 1)[0])


def test_local_run_starts_detached_and_finishes(tiny_spec):
    run_dir = finished_run(start_training_run(tiny_spec, {"word": "ok"}))
    assert '"okok"' in (run_dir / "say" / "executor_output.json").read_text()


def test_the_trigger_reaches_a_spec_that_declares_it(tiny_spec, traced_spec):
    from cauce.components.retrain.executor import drift_trigger

    trigger = drift_trigger("/runs/m/drift_report", {"drifted_features": ["fare"], "skew_detected": True}, "cauce-monitoring-1")
    assert trigger["reason"] == "drift" and trigger["drifted_features"] == ["fare"] and trigger["skew_detected"] is True
    run_dir = finished_run(start_training_run(traced_spec, {"word": "ok"}, trigger=trigger))
    echoed = json.loads(json.loads((run_dir / "echo-trigger" / "executor_output.json").read_text())["parameterValues"]["Output"])
    assert echoed == trigger
    # A spec without the parameter runs as before (kfp.local, like Vertex, refuses unknown parameters).
    run_dir = finished_run(start_training_run(tiny_spec, {"word": "ok"}, trigger=trigger))
    assert '"okok"' in (run_dir / "say" / "executor_output.json").read_text()


def test_vertex_submits_the_training_spec(vertex_server, tiny_spec, monkeypatch):  # noqa: F811
    from google.cloud.aiplatform import initializer

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    saved = dict(vars(initializer.global_config))
    try:
        job = start_training_run(
            tiny_spec, {"word": "b"}, target="google-cloud", project="acme-ml",
            vertex_region="us-central1", pipeline_root="gs://acme-ml-pipelines/root",
            vertex_api_endpoint=vertex_server.endpoint,
            # With no service account the SDK looks up the project number on the network.
            service_account="pipelines@acme-ml.iam.gserviceaccount.com",
        )
    finally:
        vars(initializer.global_config).clear()
        vars(initializer.global_config).update(saved)
    [submitted] = vertex_server.pipeline_jobs.values()
    assert job == submitted["name"]
    assert submitted["runtimeConfig"]["parameterValues"] == {"word": "b"}
    assert submitted["labels"]["cauce-trigger"] == "drift"


def test_vertex_passes_the_trigger_to_a_spec_that_declares_it(vertex_server, traced_spec, monkeypatch):  # noqa: F811
    from google.cloud.aiplatform import initializer

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    saved = dict(vars(initializer.global_config))
    trigger = {"reason": "drift", "drift_report_uri": "gs://b/m/drift_report", "drifted_features": ["fare"]}
    try:
        start_training_run(
            traced_spec, {"word": "b"}, target="google-cloud", project="acme-ml", vertex_region="us-central1",
            pipeline_root="gs://acme-ml-pipelines/root", vertex_api_endpoint=vertex_server.endpoint,
            service_account="pipelines@acme-ml.iam.gserviceaccount.com", trigger=trigger,
        )  # fmt: skip
    finally:
        vars(initializer.global_config).clear()
        vars(initializer.global_config).update(saved)
    [submitted] = vertex_server.pipeline_jobs.values()
    assert submitted["runtimeConfig"]["parameterValues"] == {"word": "b", "trigger": trigger}


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(CauceError, match="training_spec is empty"):
        start_training_run("")
    with pytest.raises(CauceError, match="is not a file"):
        start_training_run(str(tmp_path / "missing.yaml"))
    with pytest.raises(CauceError, match="must be a gs:// folder"):
        start_training_run("spec.yaml", target="google-cloud", project="p", pipeline_root="/tmp/root")
    with pytest.raises(CauceError, match="project is empty"):
        start_training_run("spec.yaml", target="google-cloud", pipeline_root="gs://b/root")


@pytest.fixture(scope="module")
def monitoring_spec(tmp_path_factory) -> Path:
    from cauce import spec

    return spec.compile_pipeline("monitoring", tmp_path_factory.mktemp("specs"))


@pytest.mark.parametrize(
    ("drifted", "retrain_on_drift", "retrains"),
    [(True, True, True), (True, False, False), (False, True, False)],
    ids=["drift-and-flag", "drift-no-flag", "flag-no-drift"],
)
def test_the_monitoring_graph_decides_on_retraining(
    monitored, monitoring_spec, traced_spec, tmp_path, drifted, retrain_on_drift, retrains  # noqa: F811
):
    """The compiled monitoring spec under kfp.local: retrain runs inside dsl.If on the
    monitor's drift flag and on retrain_on_drift, and is skipped otherwise; the training
    run it starts gets the drift report as its ``trigger``."""
    from cauce.local import run_spec

    run = run_spec(
        monitoring_spec,
        {
            "baseline_uri": str(monitored / "baseline"),
            "request_log_dir": str(monitored / "logs"),
            "numeric_features": ["fare", "hour"],
            "categorical_features": ["payment"],
            # Only `fare` drifted; a threshold above any divergence hides it.
            "thresholds": {} if drifted else {"fare": 1.0},
            "retrain_on_drift": retrain_on_drift,
            "training_spec": traced_spec,
            "training_parameters": {"word": "d"},
        },
        pipeline_root=tmp_path / "runs",
    )
    assert run.task("monitor").parameters["Output"] is drifted
    retrain = run.task("retrain")
    assert (retrain is not None) is retrains
    if retrains:
        assert retrain.parameters["Output"].startswith("local:")
        run_dir = finished_run(retrain.parameters["Output"])
        output = json.loads((run_dir / "echo-trigger" / "executor_output.json").read_text())
        trigger = json.loads(output["parameterValues"]["Output"])
        report = run.task("monitor").artifacts["drift_report"]
        assert trigger["reason"] == "drift" and trigger["drift_report_uri"] == report["uri"]
        assert trigger["drifted_features"] == ["fare"] and trigger["monitoring_run"].startswith("cauce-monitoring")
