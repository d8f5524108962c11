"""The serving process (local deploy) over real HTTP on loopback."""

import json
import math
import os
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


def test_requests_are_logged_in_vertex_logging_shape(endpoint):
    state, instances = endpoint
    post_json(state["predict_url"], {"instances": instances[:3]})
    log_dir = state["request_log_dir"]
    records = [json.loads(line) for name in os.listdir(log_dir) for line in open(os.path.join(log_dir, name))]
    last = records[-1]
    assert set(last) == {"endpoint", "deployed_model_id", "logging_time", "request_id", "request_payload", "response_payload"}
    assert [json.loads(x) for x in last["request_payload"]] == instances[:3]
    assert len(last["response_payload"]) == 3


def test_redeploy_replaces_the_running_server(endpoint, trained_model):
    state, instances = endpoint
    again = deploy_local(trained_model[3], "test-serving", port=state["port"], smoke_instances=instances)
    assert again["pid"] != state["pid"]
    assert local_endpoint("test-serving")["pid"] == again["pid"]
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


def test_linear_fast_path_reproduces_the_estimator(trained_model):
    """The serving shortcut for linear models gives the estimator's own predictions
    for every batch size, and is only taken when it matches the estimator."""
    from cauce import model
    from cauce.serving.fast import accelerate

    raw, _, _, model_dir = trained_model
    instances = smoke_instances_from(raw, "eval", model_dir, rows=300)
    reference = model.load(model_dir)
    fast = accelerate(model.load(model_dir))
    assert "_outputs" in vars(fast)  # the logistic regression of the fixture takes the fast path
    for rows in (1, 2, 7, 32, 300):
        assert fast.predict_instances(instances[:rows]) == reference.predict_instances(instances[:rows])
    features = reference.transform.transform_instances(instances)
    assert (fast.scores_from_features(features) == reference.scores_from_features(features)).all()


def test_linear_fast_path_falls_back_when_it_does_not_match(trained_model):
    from cauce import model
    from cauce.serving.fast import accelerate

    loaded = model.load(trained_model[3])
    original = loaded.estimator.predict_proba
    loaded.estimator.predict_proba = lambda x: original(x) * 0.5  # an estimator the direct formula does not describe
    assert "_outputs" not in vars(accelerate(loaded))
