"""`cauce submit --kfp-host`: the real kfp.Client submits the compiled spec to a local
stand-in of the Kubeflow Pipelines v2 API (tests/fixtures/kfp_server.py), which reads
every request with the kfp_server_api models and the PipelineSpec proto.

The spec Kubeflow receives is compared with the one Vertex receives (the Vertex stand-in,
tests/fixtures/vertex_server.py) as parsed ``PipelineSpec`` messages: identical, byte for
byte in their deterministic proto serialization. The JSON texts on the wire differ and
cannot be compared as bytes: kfp.Client re-encodes the spec from the proto
(``MessageToDict``: int64 as strings, default values left out), the Vertex SDK sends it as
a ``google.protobuf.Struct`` (every number a double).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from cauce import kubeflow, spec
from cauce.cli import app
from tests.fixtures.kfp_server import kfp_multi_user_server, kfp_server, parse_pipeline_spec  # noqa: F401
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

runner = CliRunner()
MONITORING = ["--param", "baseline_uri=gs://b/data", "--param", "request_log_dir=gs://b/logs"]


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def submit(host: str, pipeline: str = "monitoring", *extra: str):
    args = MONITORING if pipeline == "monitoring" else []
    return runner.invoke(app, ["submit", pipeline, "--kfp-host", host, *args, "--poll-interval", "0.01", *extra])


def run_id(output: str) -> str:
    return re.search(r"submitted: run (\S+)", output)[1]


def one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    return flat(result.output)


@pytest.fixture(scope="module")
def training_spec(tmp_path_factory):
    return spec.compile_pipeline("training", tmp_path_factory.mktemp("spec"))


@pytest.fixture
def vertex(vertex_server, monkeypatch):  # noqa: F811
    from google.cloud.aiplatform import initializer

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", vertex_server.endpoint)
    saved = dict(vars(initializer.global_config))  # aiplatform.init's settings are process-wide
    yield vertex_server
    vars(initializer.global_config).clear()
    vars(initializer.global_config).update(saved)


def _proto(spec_json) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(spec_json, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)


@pytest.mark.parametrize("caching", ["--enable-caching", "--no-enable-caching"])
def test_kubeflow_gets_the_spec_and_parameters_vertex_gets(kfp_server, vertex, training_spec, caching):  # noqa: F811
    common = ["--spec", str(training_spec), "--project", "acme-ml", "--region", "europe-west4",
              "--pipeline-root", "gs://acme-ml-pipelines/root", "--param", "endpoint_name=tips",
              "--param", "port=9000", caching]  # fmt: skip
    result = runner.invoke(
        app, ["submit", "training", *common, "--api-endpoint", vertex.endpoint, "--service-account", "p@acme-ml.iam.gserviceaccount.com"]
    )
    assert result.exit_code == 0, result.output
    result = submit(kfp_server.endpoint, "training", *common, "--service-account", "pipeline-runner")
    assert result.exit_code == 0, result.output

    [job] = vertex.pipeline_jobs.values()
    [run] = kfp_server.runs.values()
    sent_to_vertex = _proto(job["pipelineSpec"])
    sent_to_kubeflow = kfp_server.pipeline_specs[run["run_id"]]
    assert sent_to_kubeflow.SerializeToString(deterministic=True) == sent_to_vertex.SerializeToString(deterministic=True)
    # Both are the compiled file with only the submit-time caching choice applied...
    compiled = yaml.safe_load(training_spec.read_text())
    kubeflow.set_caching(compiled, caching == "--enable-caching")
    assert sent_to_kubeflow == _proto(compiled)
    # ...on the tasks of every DAG, the condition branches' too (kfp.Client alone sets the root's).
    dags = [sent_to_kubeflow.root.dag] + [c.dag for c in sent_to_kubeflow.components.values() if c.HasField("dag")]
    assert len(dags) > 1
    assert {t.caching_options.enable_cache for d in dags for t in d.tasks.values()} == {caching == "--enable-caching"}

    parameters = run["runtime_config"]["parameters"]
    assert parameters == job["runtimeConfig"]["parameterValues"]
    assert parameters["port"] == 9000 and isinstance(parameters["port"], int)  # typed by the signature
    assert (parameters["project"], parameters["target"]) == ("acme-ml", "google-cloud")  # --project: Google Cloud data
    assert run["runtime_config"]["pipeline_root"] == job["runtimeConfig"]["gcsOutputDirectory"]
    assert run["service_account"] == "pipeline-runner"
    assert run["display_name"].startswith("cauce-training-")
    assert kfp_server.experiments[run["experiment_id"]]["display_name"] == "Default"
    assert f"submitted: run {run['run_id']} (experiment {run['experiment_id']})" in result.output
    assert f"{kfp_server.endpoint}/#/runs/details/{run['run_id']}" in result.output


def test_submit_files_runs_under_the_named_experiment(kfp_server):  # noqa: F811
    for _ in range(2):
        result = submit(kfp_server.endpoint, "monitoring", "--experiment", "nightly-drift")
        assert result.exit_code == 0, result.output
    [experiment] = [e for e in kfp_server.experiments.values() if e["display_name"] == "nightly-drift"]
    assert [r["experiment_id"] for r in kfp_server.runs.values()] == [experiment["experiment_id"]] * 2
    assert len(kfp_server.requests_to("POST", "/apis/v2beta1/experiments")) == 1  # found by name the second time
    # Without --project nothing Google Cloud is implied: the parameters are the ones given.
    [parameters] = {json.dumps(r["runtime_config"]["parameters"], sort_keys=True) for r in kfp_server.runs.values()}
    assert json.loads(parameters) == {"baseline_uri": "gs://b/data", "request_log_dir": "gs://b/logs"}


def test_wait_prints_each_state_and_succeeds(kfp_server):  # noqa: F811
    result = submit(kfp_server.endpoint, "monitoring", "--wait")
    assert result.exit_code == 0, result.output
    run = run_id(result.output)
    assert f"run {run}: RUNNING" in result.output and f"run {run}: SUCCEEDED" in result.output
    assert len(kfp_server.requests_to("GET", f"/apis/v2beta1/runs/{run}")) == kfp_server.polls_to_finish


@pytest.mark.parametrize("state", ["FAILED", "CANCELED"])
def test_wait_exits_nonzero_naming_the_run_when_it_does_not_succeed(kfp_server, state):  # noqa: F811
    kfp_server.final_state, kfp_server.final_error = state, "train: the pod was OOMKilled"
    result = submit(kfp_server.endpoint, "monitoring", "--wait")
    output = one_line_error(result)
    run = run_id(result.output)
    assert f"run {run}: {state}" in output
    assert f"error: run {run} ended {state}: train: the pod was OOMKilled ({kfp_server.endpoint}/#/runs/details/{run})" in output


def test_wait_gives_up_after_the_timeout(kfp_server):  # noqa: F811
    kfp_server.polls_to_finish = 10**6
    result = submit(kfp_server.endpoint, "monitoring", "--wait", "--timeout", "0.05")
    assert f"is still RUNNING after 0.05 s; it goes on: {kfp_server.endpoint}/#/runs/details/" in one_line_error(result)


def test_namespaces_on_a_multi_user_deployment(kfp_multi_user_server):  # noqa: F811
    server = kfp_multi_user_server
    result = submit(server.endpoint, "monitoring", "--namespace", "team-a", "--experiment", "drift")
    assert result.exit_code == 0, result.output
    [experiment] = server.experiments.values()
    assert (experiment["display_name"], experiment["namespace"]) == ("drift", "team-a")
    [run] = server.runs.values()
    assert run["experiment_id"] == experiment["experiment_id"]

    output = one_line_error(submit(server.endpoint, "monitoring"))
    assert "is a multi-user deployment: give --namespace (your profile's namespace)" in output
    output = one_line_error(submit(server.endpoint, "monitoring", "--namespace", "team-b"))
    assert f"Kubeflow Pipelines at {server.endpoint} refused the run (namespace 'team-b') (403 Forbidden):" in output
    assert "not authorized to list experiments in namespace 'team-b'" in output
    assert len(server.runs) == 1


def test_bad_namespace_and_target_options_are_one_line_errors(kfp_server):  # noqa: F811
    output = one_line_error(submit(kfp_server.endpoint, "monitoring", "--namespace", "Team_A"))
    assert "--namespace 'Team_A' is not a Kubernetes namespace name" in output
    output = one_line_error(submit(kfp_server.endpoint, "monitoring", "--namespace", "team-a"))
    assert "is a single-user deployment and has no namespaces: leave out --namespace" in output
    output = one_line_error(runner.invoke(app, ["submit", "monitoring", *MONITORING, "--namespace", "team-a"]))
    assert "--namespace is for Kubeflow Pipelines: add --kfp-host URL" in output
    output = one_line_error(runner.invoke(app, ["submit", "monitoring", *MONITORING, "--project", "acme-ml"]))
    assert "Vertex AI needs --region, --pipeline-root (or submit to Kubeflow Pipelines with --kfp-host URL)" in output
    assert not kfp_server.runs


def test_unreachable_or_wrong_host_is_a_one_line_error(kfp_server):  # noqa: F811
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    output = one_line_error(submit(closed))
    assert f"error: cannot reach Kubeflow Pipelines at {closed}:" in output and "Connection refused" in output
    output = one_line_error(submit(kfp_server.endpoint + "/not-kfp"))
    assert f"{kfp_server.endpoint}/not-kfp does not serve the Kubeflow Pipelines API (GET /apis/v2beta1/healthz answered 404)" in output
    output = one_line_error(submit("localhost:8888"))
    assert "--kfp-host must be an http:// or https:// URL, got 'localhost:8888'" in output


def test_dry_run_sends_nothing(kfp_server):  # noqa: F811
    result = submit(kfp_server.endpoint, "monitoring", "--dry-run", "--experiment", "drift")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output[result.output.index("{") : result.output.rindex("}") + 1])
    assert body["experiment"] == "drift" and body["runtime_config"]["parameters"]["baseline_uri"] == "gs://b/data"
    assert "dry run" in result.output and not kfp_server.requests


# -- the stand-in refuses what the real apiserver refuses ---------------------------------------------


def _post(server, path: str, body) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.endpoint + path, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as response:  # noqa: S310 (loopback stand-in)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_stand_in_rejects_malformed_requests(kfp_server, training_spec):  # noqa: F811
    compiled = yaml.safe_load(training_spec.read_text())
    run = {"display_name": "r", "pipeline_spec": compiled, "runtime_config": {"parameters": {}}}
    assert _post(kfp_server, "/apis/v2beta1/runs", run)[0] == 200

    cases = [
        ({**run, "displayname": "r"}, 400, 'unknown field "displayname" in V2beta1Run'),
        ({**run, "runtime_config": {"parameters": {}, "root": "gs://x"}}, 400, 'unknown field "root" in V2beta1RuntimeConfig'),
        ({**run, "display_name": ""}, 400, "Run name cannot be empty"),
        ({**run, "display_name": 7}, 400, "expected a string"),
        ({**run, "state": "DONE"}, 400, "invalid value 'DONE' for enum V2beta1RuntimeState"),
        ({k: v for k, v in run.items() if k != "pipeline_spec"}, 400, "neither a pipeline_spec nor a pipeline_version_reference"),
        ({**run, "pipeline_version_reference": {"pipeline_id": "p"}}, 400, "set one"),
        ({**run, "pipeline_spec": {**compiled, "pipelineInfo": {"name": "x", "owner": "me"}}}, 400, "Failed to parse the pipeline spec"),
        ({**run, "pipeline_spec": {**compiled, "deploymentSpec": {"executors": {"e": {"kontainer": {}}}}}}, 400, "Failed to parse the pipeline spec"),
        ({**run, "experiment_id": "no-such-experiment"}, 404, "Experiment no-such-experiment not found"),
        ({**run, "plugins_output": {}}, 400, "plugins_output is server-owned"),
    ]  # fmt: skip
    for body, status, message in cases:
        answer_status, answer = _post(kfp_server, "/apis/v2beta1/runs", body)
        assert (answer_status, answer["code"] in (3, 5)) == (status, True), (body.keys(), answer)
        assert message in answer["message"], answer
    assert _post(kfp_server, "/apis/v2beta1/experiments", {"description": "no name"})[1]["message"].endswith(
        "Experiment must have a non-empty name"
    )
    assert _post(kfp_server, "/apis/v2beta1/experiments", {"display_name": "Default"})[0] == 409
    assert _post(kfp_server, "/apis/v2beta1/experiments", {"display_name": "x", "namespaces": "y"})[0] == 400


def test_stand_in_fails_a_run_whose_parameters_do_not_fit_like_the_root_driver(kfp_server, training_spec):  # noqa: F811
    compiled = yaml.safe_load(training_spec.read_text())
    parameters = {"port": "9000", "no_such_parameter": 1}
    status, run = _post(
        kfp_server, "/apis/v2beta1/runs", {"display_name": "r", "pipeline_spec": compiled, "runtime_config": {"parameters": parameters}}
    )
    assert status == 200
    connection = kubeflow.connect(kfp_server.endpoint)
    final = kubeflow.wait(connection, run["run_id"], poll_interval=0.01)
    assert final.state == "FAILED"
    assert "unknown parameter 'no_such_parameter'" in final.error.message
    assert "parameter 'port' is NUMBER_INTEGER, got '9000'" in final.error.message
    with pytest.raises(Exception, match="Failed to parse the pipeline spec"):
        parse_pipeline_spec({**compiled, "root": {**compiled["root"], "dag": {"taks": {}}}})
