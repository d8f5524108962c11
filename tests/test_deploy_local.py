"""Local canary deploy: two model versions side by side in the real serving process,
a traffic split, promotion or rollback, while a client keeps sending predictions.

Every model here is a real bundle: the session's trained model, a second version
trained by the real train executor, and broken versions made from the trained one
the way bundles really break (a diverged estimator that predicts NaN, an estimator
saved unfitted, a truncated model file).
"""

import json
import shutil
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest

from cauce.artifacts import CauceError
from cauce.components.deploy.executor import (
    _admin,
    deploy_local,
    local_endpoint,
    post_json,
    smoke_instances_from,
    stop_local,
)

ENDPOINT = "test-canary"


def bundle_copy(model_dir: str, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    return target


@pytest.fixture(scope="module")
def versions(trained_model, tmp_path_factory):
    """{name: model_dir}: v1 (the trained model), v3 (retrained with other hyperparameters),
    and three broken versions of v1."""
    from cauce.components.train.executor import run_train

    raw, transformed, transform, model_dir = trained_model
    root = tmp_path_factory.mktemp("versions")
    run_train(transformed, transform, str(root / "v3"), {"model_type": "logistic_regression", "max_iter": 500, "C": 0.1})

    garbage = bundle_copy(model_dir, root / "predicts-nan")
    estimator = joblib.load(garbage / "model.joblib")
    estimator.coef_ = np.full_like(estimator.coef_, np.nan)  # what a diverged fit leaves behind
    joblib.dump(estimator, garbage / "model.joblib")

    raises = bundle_copy(model_dir, root / "unfitted")
    joblib.dump(type(estimator)(), raises / "model.joblib")  # predict_proba raises NotFittedError

    unloadable = bundle_copy(model_dir, root / "truncated")
    data = (unloadable / "model.joblib").read_bytes()
    (unloadable / "model.joblib").write_bytes(data[: len(data) // 2])

    # Served through their framework, as a bundle written before model.onnx existed: the
    # server runs model.onnx when a bundle has one, which these broken copies would keep.
    for broken in (garbage, raises, unloadable):
        (broken / "model.onnx").unlink()

    return {
        "v1": model_dir,
        "v3": str(root / "v3"),
        "predicts-nan": str(garbage),
        "raises": str(raises),
        "does-not-load": str(unloadable),
        "instances": smoke_instances_from(raw, "eval", model_dir, rows=5),
    }


class Client(threading.Thread):
    """Keeps sending predictions through the endpoint route; records every answer."""

    def __init__(self, url: str, instances: list[dict]):
        super().__init__(daemon=True)
        self.url, self.instances = url, instances
        self.answers: list[tuple[int | None, str | None]] = []
        self.running = threading.Event()
        self.running.set()

    def run(self):
        while self.running.is_set():
            try:
                status, body = post_json(self.url, {"instances": self.instances}, timeout=10)
                self.answers.append((status, body.get("deployed_model_id")))
            except OSError as error:  # a refused or dropped connection counts as a failure
                self.answers.append((None, repr(error)))
            time.sleep(0.002)

    def stop(self) -> list[tuple[int | None, str | None]]:
        self.running.clear()
        self.join(timeout=15)
        return self.answers


@pytest.fixture
def endpoint(versions, free_port):
    state = deploy_local(versions["v1"], ENDPOINT, port=free_port, smoke_instances=versions["instances"])
    yield state
    stop_local(ENDPOINT)


def served(state: dict) -> dict:
    """What the serving process itself says it serves."""
    return _admin(local_endpoint(ENDPOINT), "GET", "/admin/deployments")


def test_broken_canaries_roll_back_while_the_old_version_answers_every_request(endpoint, versions):
    v1 = endpoint["deployed_model_id"]
    client = Client(endpoint["predict_url"], versions["instances"][:2])
    client.start()
    try:
        time.sleep(0.2)
        # A NaN prediction is refused by the serving input rules (400 naming the instance),
        # before it could reach the smoke test's well-formedness check.
        for broken, reason in [("predicts-nan", "HTTP 400"), ("raises", "NotFittedError")]:
            with pytest.raises(CauceError, match="rolled back") as caught:
                deploy_local(
                    versions[broken], ENDPOINT, port=endpoint["port"], smoke_instances=versions["instances"],
                    traffic_percentage=20, promote=True,
                )
            assert reason in str(caught.value)
            assert served(endpoint) == {"deployments": {v1: {"model_dir": versions["v1"]}}, "traffic_split": {v1: 100}}
        with pytest.raises(CauceError, match="did not load.*nothing was deployed"):
            deploy_local(
                versions["does-not-load"], ENDPOINT, port=endpoint["port"], smoke_instances=versions["instances"],
                traffic_percentage=20, promote=True,
            )
        assert served(endpoint)["traffic_split"] == {v1: 100}
        time.sleep(0.2)
    finally:
        answers = client.stop()
    assert len(answers) > 10  # the client really ran across the three deploys
    assert set(answers) == {(200, v1)}  # only 200s, all from version 1, throughout
    assert local_endpoint(ENDPOINT)["deployed_model_id"] == v1 and local_endpoint(ENDPOINT)["pid"] == endpoint["pid"]


def test_a_good_canary_is_promoted_and_the_old_version_undeployed(endpoint, versions):
    v1 = endpoint["deployed_model_id"]
    client = Client(endpoint["predict_url"], versions["instances"][:2])
    client.start()
    try:
        time.sleep(0.2)
        result = deploy_local(
            versions["v3"], ENDPOINT, port=endpoint["port"], smoke_instances=versions["instances"],
            traffic_percentage=30, promote=True,
        )
        time.sleep(0.2)
    finally:
        answers = client.stop()
    v3 = result["deployed_model_id"]
    assert result["rollout"] == "promoted" and result["pid"] == endpoint["pid"] and v3 != v1
    assert result["traffic_split"] == {v3: 100} and result["deployments"] == {v3: versions["v3"]}
    assert served(endpoint) == {"deployments": {v3: {"model_dir": versions["v3"]}}, "traffic_split": {v3: 100}}
    assert {status for status, _ in answers} == {200}
    assert {who for _, who in answers} <= {v1, v3} and answers[0][1] == v1 and answers[-1][1] == v3

    # The request log says which version answered each request.
    log_dir = Path(endpoint["request_log_dir"])
    deadline = time.monotonic() + 5
    while True:
        answered_by = {
            json.loads(line)["deployed_model_id"]
            for path in log_dir.glob("requests-*.jsonl")
            for line in path.read_text().splitlines()
        }
        if {v1, v3} <= answered_by or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {v1, v3} <= answered_by


def test_a_held_canary_splits_traffic_deterministically(endpoint, versions):
    """Without promote the canary keeps its share (like the Vertex path's promote=False):
    every 100 requests through the endpoint, exactly 20 reach it, spread out."""
    v1 = endpoint["deployed_model_id"]
    result = deploy_local(versions["v3"], ENDPOINT, port=endpoint["port"], smoke_instances=None, traffic_percentage=20)
    canary = result["deployed_model_id"]
    assert result["rollout"] == "canary" and result["traffic_split"] == {v1: 80, canary: 20}
    answers = [post_json(endpoint["predict_url"], {"instances": versions["instances"][:1]})[1]["deployed_model_id"] for _ in range(100)]
    assert answers.count(canary) == 20 and answers.count(v1) == 80
    assert not any(first == second == canary for first, second in zip(answers, answers[1:]))


def test_a_canary_needs_a_running_endpoint(versions, free_port):
    with pytest.raises(CauceError, match="first deployment must take 100 %"):
        deploy_local(versions["v1"], "test-canary-first", port=free_port, traffic_percentage=10)
    assert local_endpoint("test-canary-first") is None


def test_a_promoted_canary_with_nothing_serving_starts_at_100_percent(versions, free_port):
    # What a pipeline configured for canaries does on its first run: nothing to protect.
    try:
        result = deploy_local(versions["v1"], "test-canary-promote-first", port=free_port, traffic_percentage=10, promote=True)
        assert list(result["traffic_split"].values()) == [100]
        status, body = post_json(result["predict_url"], {"instances": versions["instances"][:1]})
        assert status == 200 and len(body["predictions"]) == 1
    finally:
        stop_local("test-canary-promote-first")
