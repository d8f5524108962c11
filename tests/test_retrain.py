"""The retrain trigger: the monitoring graph runs it only on drift and the flag; a
detached kfp.local run of the compiled spec locally; a PipelineJob through the real Vertex SDK against the local
Vertex server (tests/fixtures/vertex_server.py)."""

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


@pytest.fixture
def tiny_spec(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    compiler.Compiler().compile(tiny_training, str(path))
    return str(path)


def test_local_run_starts_detached_and_finishes(tiny_spec):
    started = start_training_run(tiny_spec, {"word": "ok"})
    _, pid, log = started.split(":", 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.waitpid(int(pid), os.WNOHANG)
            os.kill(int(pid), 0)
        except (ChildProcessError, ProcessLookupError):
            break
        time.sleep(0.2)
    text = Path(log).read_text()
    assert "retraining run finished" in text
    run_dir = Path(text.split("finished: ", 1)[1].split(" in ", 1)[0])
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
    monitored, monitoring_spec, tiny_spec, tmp_path, drifted, retrain_on_drift, retrains  # noqa: F811
):
    """The compiled monitoring spec under kfp.local: retrain runs inside dsl.If on the
    monitor's drift flag and on retrain_on_drift, and is skipped otherwise."""
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
            "training_spec": tiny_spec,
            "training_parameters": {"word": "d"},
        },
        pipeline_root=tmp_path / "runs",
    )
    assert run.task("monitor").parameters["Output"] is drifted
    retrain = run.task("retrain")
    assert (retrain is not None) is retrains
    if retrains:
        assert retrain.parameters["Output"].startswith("local:")
