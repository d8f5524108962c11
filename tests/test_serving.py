"""The serving process (local deploy) over real HTTP on loopback."""

import json
import math
import os
import time
import urllib.request

import pytest

from cauce import data
from cauce.artifacts import CauceError
from cauce.components.deploy.executor import (
    deploy_local,
    local_endpoint,
    post_json,
    smoke_instances_from,
    stop_local,
)
from cauce.serving.app import MAX_BODY_BYTES


@pytest.fixture(scope="module")
def endpoint(trained_model):
    raw, _, _, model_dir = trained_model
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    instances = smoke_instances_from(raw, "eval", model_dir, rows=5)
    state = deploy_local(model_dir, "test-serving", port=port, smoke_instances=instances)
    yield state, instances
    stop_local("test-serving")


def test_predictions_match_the_model_in_process(endpoint, trained_model):
    state, instances = endpoint
    from cauce import model

    status, body = post_json(state["predict_url"], {"instances": instances, "parameters": {}})
    assert status == 200
    expected = model.load(trained_model[3]).predict_instances(instances)
    assert body["predictions"] == expected
    assert all(p["label"] in (0, 1) and 0 <= p["score"] <= 1 for p in body["predictions"])


def test_kserve_v1_route_and_health(endpoint):
    state, instances = endpoint
    base = state["predict_url"].rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/health") as response:
        assert response.status == 200
    status, body = post_json(f"{base}/v1/models/model:predict", {"instances": instances[:1]})
    assert status == 200 and len(body["predictions"]) == 1


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"rows": []}).encode(), 400, '{"instances": [...]}'),
        (json.dumps({"instances": []}).encode(), 400, "instances is empty"),
        (json.dumps({"instances": [{"fare": 1.0}]}).encode(), 400, "missing field 'trip_miles'"),
        (json.dumps({"instances": [[1, 2, 3]]}).encode(), 400, "must be a JSON object"),
    ],
)
def test_malformed_requests_get_400_with_a_clear_message(endpoint, payload, status, message):
    state, _ = endpoint
    request = urllib.request.Request(state["predict_url"], data=payload, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.code == status
    assert message in json.loads(caught.value.read())["error"]


def test_wrong_type_and_oversized_requests(endpoint):
    state, instances = endpoint
    status, body = post_json(state["predict_url"], {"instances": [dict(instances[0], fare="cheap")]})
    assert status == 400 and "'fare' must be a number, got 'cheap'" in body["error"]
    big = {"instances": [instances[0]] * (MAX_BODY_BYTES // len(json.dumps(instances[0])) + 10)}
    status, body = post_json(state["predict_url"], big)
    assert status == 413 and "limit" in body["error"]


def logged_records(log_dir: str, at_least: int = 1, timeout: float = 5.0) -> list[dict]:
    """The request log's records, once it holds ``at_least`` (a line is written before
    its response is sent, so a caller that got its answer finds it at once)."""
    deadline = time.monotonic() + timeout
    while True:
        records = [json.loads(line) for name in sorted(os.listdir(log_dir)) for line in open(os.path.join(log_dir, name))]
        if len(records) >= at_least or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_requests_are_logged_in_vertex_logging_shape(endpoint):
    state, instances = endpoint
    before = len(logged_records(state["request_log_dir"], timeout=0))
    status, body = post_json(state["predict_url"], {"instances": instances[:3]})
    last = logged_records(state["request_log_dir"], at_least=before + 1)[-1]
    assert set(last) == {"endpoint", "deployed_model_id", "logging_time", "request_id", "request_payload", "response_payload"}
    assert [json.loads(x) for x in last["request_payload"]] == instances[:3]
    assert [json.loads(x) for x in last["response_payload"]] == body["predictions"]
    assert last["deployed_model_id"] == body["deployed_model_id"] == state["deployed_model_id"]
    assert last["endpoint"] == "test-serving"


def test_redeploy_swaps_the_model_inside_the_running_server(endpoint, trained_model, tmp_path):
    """A new version at 100 % goes into the running process next to the old one,
    passes its smoke test, takes all the traffic, and the old one is undeployed:
    no restart, so the endpoint never stops answering. (The same model again would be a
    no-op: a new version is a bundle with other content, here one more file.)"""
    import shutil

    state, instances = endpoint
    new_version = tmp_path / "v2"
    shutil.copytree(trained_model[3], new_version)
    (new_version / "NOTES.txt").write_text("version 2\n")
    again = deploy_local(str(new_version), "test-serving", port=state["port"], smoke_instances=instances)
    assert again["pid"] == state["pid"] and again["rollout"] == "replaced"
    assert again["deployed_model_id"] != state["deployed_model_id"]
    assert again["traffic_split"] == {again["deployed_model_id"]: 100}
    assert list(again["deployments"]) == [again["deployed_model_id"]]
    assert "admin_token" not in again and local_endpoint("test-serving")["deployed_model_id"] == again["deployed_model_id"]
    status, body = post_json(state["predict_url"], {"instances": instances[:1]})
    assert status == 200 and body["deployed_model_id"] == again["deployed_model_id"]
    endpoint[0].update(again)


def test_a_broken_model_never_reports_success(tmp_path, free_port):
    (tmp_path / "cauce_model.json").write_text(json.dumps({"framework": "sklearn", "label": "y", "features": []}))
    with pytest.raises(CauceError, match="exited with code"):
        deploy_local(str(tmp_path), "test-broken", port=free_port)
    assert local_endpoint("test-broken") is None


def test_smoke_instances_are_json_clean(trained_model):
    raw, _, _, model_dir = trained_model
    instances = smoke_instances_from(raw, "eval", model_dir, rows=200)
    assert not any(isinstance(v, float) and math.isnan(v) for i in instances for v in i.values())
    assert set(instances[0]) == set(data.read_schema(raw)["columns"]) - {"unique_key", "trip_start_timestamp", "tipped_well"}


def test_response_and_log_line_are_cut_from_one_serialization(trained_model, tmp_path):
    """In process: the body and the logged response strings of binary and regression
    predictions come from one serialization of the list; they must be exactly what
    serializing the response and each prediction on its own gives, for every size."""
    import datetime as dt

    import orjson

    from cauce import model
    from cauce.serving.app import PredictionApp, RequestLog

    raw, _, _, model_dir = trained_model
    instances = smoke_instances_from(raw, "eval", model_dir, rows=40)
    app = PredictionApp(model.load(model_dir), request_log=RequestLog(tmp_path, "unit"), deployed_model_id='v"1')
    deployment = app.deployments['v"1']
    assert deployment.numeric_predictions
    for rows in (1, 9, 40):
        status, body = app.handle("POST", "/predict", orjson.dumps({"instances": instances[:rows]}))
        predictions = deployment.model.predict_instances(instances[:rows])
        assert status == 200 and body == orjson.dumps({"predictions": predictions, "deployed_model_id": 'v"1'})
    regression = [{"value": 1.5}, {"value": -2e-9}, {"value": None}]
    assert deployment.response(regression)[1] == [orjson.dumps(p).decode() for p in regression]
    app.request_log.close()
    lines = [json.loads(line) for line in next(tmp_path.glob("requests-*.jsonl")).read_text().splitlines()]
    assert [len(line["response_payload"]) for line in lines] == [1, 9, 40]
    assert [json.loads(x) for x in lines[-1]["response_payload"]] == json.loads(body)["predictions"]
    assert [json.loads(x) for x in lines[-1]["request_payload"]] == instances
    logged = dt.datetime.fromisoformat(lines[-1]["logging_time"])
    assert logged.tzinfo is not None and abs(dt.datetime.now(dt.timezone.utc) - logged).total_seconds() < 60


def test_linear_scorer_of_an_older_bundle_comes_from_its_estimator(trained_model, tmp_path):
    """A bundle written before linear.json and model.onnx loads with scikit-learn: the
    fused linear scorer then takes the estimator's coefficients (tests/test_linear_scorer.py
    covers the scorer itself), and the serving app keeps it."""
    import shutil
    from pathlib import Path

    from cauce import model
    from cauce.serving.app import Deployment

    raw, _, _, model_dir = trained_model
    old = Path(shutil.copytree(model_dir, tmp_path / "old"))
    (old / model.LINEAR_FILE).unlink()
    (old / model.ONNX_FILE).unlink()
    instances = smoke_instances_from(raw, "eval", model_dir, rows=300)
    loaded = Deployment("old", model.load(old, serving=True)).model
    assert type(loaded) is model.SklearnModel and "linear" in vars(loaded)
    reference = model.SklearnModel(metadata=loaded.metadata, transform=loaded.transform, estimator=loaded.estimator)
    for rows in (1, 2, 7, 32, 300):
        got, expected = loaded.predict_instances(instances[:rows]), reference.predict_instances(instances[:rows])
        assert all(abs(a["score"] - b["score"]) <= 2e-6 for a, b in zip(got, expected))
    features = reference.transform.transform_instances(instances)
    assert loaded.scores_from_features(features).tolist() == loaded.linear.score_instances(instances)


def test_linear_scorer_is_not_used_when_it_does_not_match_the_estimator(trained_model):
    from pathlib import Path

    from cauce import model

    loaded = model.load(trained_model[3])
    reference = model.SklearnModel(metadata=loaded.metadata, transform=loaded.transform, estimator=loaded.estimator)
    original = reference.estimator.predict_proba
    reference.estimator.predict_proba = lambda x: original(x) * 0.5  # an estimator the coefficients do not describe
    assert "linear" not in vars(model.with_linear_scorer(reference, Path(trained_model[3])))


# ---- several deployments in one process: traffic split, direct route, admin routes ----
# These drive the app in-process through its ASGI interface (no socket): that is the
# only way to present a non-loopback client address on a machine whose only network
# is loopback; everything behind the interface is the real app and real models.

ADMIN_TOKEN = "t" * 32


def asgi(app, method: str, path: str, payload=None, client=("127.0.0.1", 40000), token: str | None = ADMIN_TOKEN):
    import asyncio

    body = b"" if payload is None else json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "method": method, "path": path, "client": client, "headers": headers}
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.fixture
def two_versions(trained_model):
    """An app serving the trained model as "a" with a second deployment "b" beside it."""
    from cauce import model
    from cauce.serving.app import PredictionApp, load_deployment

    model_dir = trained_model[3]
    app = PredictionApp(model.load(model_dir), deployed_model_id="a", model_dir=model_dir, admin_token=ADMIN_TOKEN)
    app.add_deployment(load_deployment("b", model_dir))
    return app, smoke_instances_from(trained_model[0], "eval", model_dir, rows=2)


def test_traffic_split_is_an_exact_smooth_round_robin(two_versions):
    app, instances = two_versions
    body = json.dumps({"instances": instances}).encode()
    app.set_traffic_split({"a": 70, "b": 30})
    answered = [json.loads(app.handle("POST", "/predict", body)[1])["deployed_model_id"] for _ in range(200)]
    assert answered.count("b") == 60 and answered.count("a") == 140
    assert not any(first == second == "b" for first, second in zip(answered, answered[1:]))  # spread, not in bursts
    for bad, message in [({"a": 70, "b": 20}, "sum to 100"), ({"a": 100, "c": 0}, "not deployed"), ({"a": 50.5, "b": 49.5}, "integer")]:
        with pytest.raises(CauceError, match=message):
            app.set_traffic_split(bad)
    assert app.traffic_split == {"a": 70, "b": 30}


def test_direct_route_answers_from_that_deployment_whatever_its_share(two_versions):
    app, instances = two_versions
    body = json.dumps({"instances": instances}).encode()
    assert app.traffic_split == {"a": 100}
    status, payload = app.handle("POST", "/v1/deployments/b:predict", body)
    assert status == 200 and json.loads(payload)["deployed_model_id"] == "b"
    assert json.loads(payload)["predictions"] == json.loads(app.handle("POST", "/predict", body)[1])["predictions"]
    status, payload = app.handle("POST", "/v1/deployments/nope:predict", body)
    assert status == 404 and "no deployment 'nope'" in json.loads(payload)["error"]
    assert app.handle("POST", "/v1/deployments/b:predict", b"{bad")[0] == 400  # same validation as /predict


def test_admin_routes_refuse_when_disabled_off_loopback_or_without_the_token(two_versions, trained_model):
    from cauce.serving.app import PredictionApp

    app, _ = two_versions
    disabled = PredictionApp(app.model)  # how the serving image runs: no --admin
    status, body = asgi(disabled, "GET", "/admin/deployments")
    assert status == 403 and "disabled" in body["error"]
    status, body = asgi(app, "GET", "/admin/deployments", client=("203.0.113.7", 40000))
    assert status == 403 and "loopback" in body["error"]
    status, body = asgi(app, "PUT", "/admin/traffic", {"traffic_split": {"b": 100}}, client=("10.1.2.3", 1))
    assert status == 403 and app.traffic_split == {"a": 100}
    for token in (None, "wrong"):
        status, body = asgi(app, "DELETE", "/admin/deployments/b", token=token)
        assert status == 401 and "b" in app.deployments
    assert asgi(app, "GET", "/admin/deployments", client=("::1", 40000))[0] == 200


def test_admin_routes_deploy_split_and_undeploy(two_versions, trained_model, tmp_path):
    app, instances = two_versions
    status, body = asgi(app, "PUT", "/admin/traffic", {"traffic_split": {"a": 50, "b": 50}})
    assert status == 200 and body["traffic_split"] == {"a": 50, "b": 50}
    status, body = asgi(app, "DELETE", "/admin/deployments/b")
    assert status == 400 and "still takes 50 %" in body["error"]
    (tmp_path / "cauce_model.json").write_text(json.dumps({"framework": "sklearn", "label": "y", "features": []}))
    status, body = asgi(app, "POST", "/admin/deployments", {"deployed_model_id": "c", "model_dir": str(tmp_path)})
    assert status == 400 and "did not load" in body["error"] and set(app.deployments) == {"a", "b"}
    status, body = asgi(app, "POST", "/admin/deployments", {"deployed_model_id": "c", "model_dir": trained_model[3]})
    assert status == 200 and set(body["deployments"]) == {"a", "b", "c"} and body["traffic_split"] == {"a": 50, "b": 50}
    assert asgi(app, "PUT", "/admin/traffic", {"traffic_split": {"c": 100}})[0] == 200
    assert asgi(app, "DELETE", "/admin/deployments/a")[0] == 200
    status, body = asgi(app, "POST", "/predict", {"instances": instances}, token=None)
    assert status == 200 and body["deployed_model_id"] == "c"
