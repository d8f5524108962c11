"""`cauce models` as a user meets it: the training pipeline runs three times through the
CLI (`cauce run training`, the default subprocess runner; real local engine, Beam,
LightGBM, TFMA, MLflow on sqlite and the local serving process), then `cauce models`
explains, approves and rolls back, each a real `cauce` process.

1. a first run makes version 1, champion and serving; `rollback` has nowhere to go;
2. a run with exactly the parameters version 1's lineage record gives back
   (``rebuild_arguments``), into a scratch registry, rebuilds it: the same split
   fingerprints, transform hash, encoded data and model file bytes;
3. a run with other hyperparameters and require_approval=true leaves version 2
   pending, not deployed; `approve` deploys it through the canary path; `rollback`
   then serves version 1 again while a background client keeps getting 200s.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cauce.components.register.executor import register_mlflow

NAME = "ops-tips"
CAUCE = [sys.executable, "-m", "cauce.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cauce(home: Path, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "CAUCE_HOME": str(home), "COLUMNS": "200"}
    done = subprocess.run([*CAUCE, *args], env=env, capture_output=True, text=True, timeout=timeout)  # noqa: S603
    if check and done.returncode != 0:
        raise AssertionError(f"cauce {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def show(home: Path, ref: str) -> dict:
    return json.loads(cauce(home, "models", "show", ref, "--json").stdout)


def model_file_sha(version: dict) -> str:
    return hashlib.sha256((Path(version["model_dir"]) / "model.joblib").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ops-home")
    yield home
    cauce(home, "stop", NAME, check=False)


@pytest.fixture(scope="module")
def port():
    return _free_port()


def train(home: Path, port: int, *params: str) -> subprocess.CompletedProcess:
    base = [f"port={port}", f"endpoint_name={NAME}", f"model_name={NAME}", "canary_traffic_percentage=50"]
    args = ["run", "training", "--rows", "3000"]
    for param in (*base, *params):
        args += ["--param", param]
    return cauce(home, *args)


# Four pipeline runs and a dozen cauce processes: ~4 minutes alone on the 2-core machine, more when it is shared.
@pytest.mark.timeout(1800)
def test_operating_a_model_over_three_runs(home, port):
    # -- run 1: the first champion -------------------------------------------------------
    train(home, port)
    first = show(home, f"{NAME}/1")
    assert first["status"] == "champion" and first["aliases"] == ["champion"]
    assert [d["traffic"] for d in first["deployments"]] == [100]
    record = first["lineage"]
    assert record["source"]["query"] == "SELECT * FROM `demo.taxi_trips`"
    assert record["source"]["tables"] == ["demo.taxi_trips"]
    assert len(record["source"]["query_sha256"]) == 64 and record["source"]["local_engine"]["sha256"]
    assert set(record["data"]["split_fingerprints"]) == {"train", "eval"}
    assert record["data"]["transform_sha256"].startswith("sha256:")
    assert record["data"]["transform_recipe"]["steps"]
    assert record["run"]["pipeline_job_id"] and record["run"]["pipeline_job_name"].startswith("cauce-training")
    assert record["model"]["framework"] == "sklearn" and record["model"]["seed"] == 42
    # What train was given (nothing: its defaults), beside the estimator's resolved parameters.
    assert record["model"]["hyperparameters_given"] == {} and record["model"]["hyperparameters"]["num_leaves"] == 31
    assert record["evaluation"]["blessed"] is True and record["champion"] == {"found": False, "version": None, "model_dir": None}
    assert record["code"]["images"]["train"] and record["code"]["cauce"]
    explained = cauce(home, "models", "show", NAME).stdout
    for fact in ("version 1", "champion", "demo.taxi_trips", "data train:", "transform:", "seed 42",
                 "the framework's defaults", "blessed", "serving: endpoint"):  # fmt: skip
        assert fact in explained, explained
    # Bad input changes nothing: no previous champion, a version that is not pending.
    refused = cauce(home, "models", "rollback", NAME, check=False)
    assert refused.returncode == 1 and "no previous champion" in refused.stderr
    refused = cauce(home, "models", "approve", f"{NAME}/1", check=False)
    assert refused.returncode == 1 and "is champion, not pending" in refused.stderr
    assert show(home, f"{NAME}/1")["status"] == "champion"

    # -- version 1 rebuilt from its record alone -----------------------------------------
    # Into a registry of its own (waiting for approval: nothing deployed), so the rebuilt
    # bundle is compared with version 1's own files, not merged into version 1 by the
    # registry's content hash.
    from cauce.lineage import rebuild_arguments

    inputs = rebuild_arguments(record)["pipeline"]
    scratch = f"sqlite:///{home / 'rebuild' / 'mlflow.db'}"
    train(home, port, *(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in inputs.items()),
          f"mlflow_tracking_uri={scratch}", "require_approval=true")  # fmt: skip
    rebuilt_version = json.loads(cauce(home, "models", "show", f"{NAME}/1", "--json", "--mlflow-tracking-uri", scratch).stdout)
    rebuilt = rebuilt_version["lineage"]
    assert rebuilt["data"]["split_fingerprints"] == record["data"]["split_fingerprints"]
    assert rebuilt["data"]["transform_sha256"] == record["data"]["transform_sha256"]
    assert rebuilt["data"]["encoded_splits"] == record["data"]["encoded_splits"]
    assert model_file_sha(rebuilt_version) == model_file_sha(first)  # the same model, byte for byte
    assert rebuilt["model"]["content_hash"] == record["model"]["content_hash"]
    assert show(home, f"{NAME}/1")["status"] == "champion"  # the real registry did not notice

    # -- run 2: another model, through the approval gate ---------------------------------
    # Other hyperparameters, allowed to be worse than the champion (the gate
    # under test is the approval, not the margin).
    summary = train(home, port, "require_approval=true", 'hyperparameters={"num_leaves": 15}',
                    'change_thresholds={"auc": -1}').stdout  # fmt: skip
    assert "waiting for approval" in summary and f"cauce models approve {NAME}/2" in summary
    pending = show(home, f"{NAME}/2")
    assert pending["status"] == "pending" and pending["aliases"] == ["pending"] and pending["deployments"] == []
    assert pending["lineage"]["model"]["hyperparameters_given"] == {"num_leaves": 15}
    assert pending["lineage"]["champion"]["found"] and pending["lineage"]["champion"]["version"] == "1"
    assert show(home, NAME)["version"] == "1"  # the champion keeps serving
    explained = cauce(home, "models", "show", f"{NAME}/2").stdout
    # (15.0: KFP delivers the numbers of a dict parameter as floats; train reads them back as ints)
    for fact in ("version 2", "pending", '{"num_leaves": 15.0}', "compared with: version 1", "serving: nowhere"):
        assert fact in explained, explained
    approved = cauce(home, "models", "approve", f"{NAME}/2")
    assert "approved ops-tips/2: champion, replacing version 1" in approved.stdout
    second = show(home, f"{NAME}/2")
    assert second["status"] == "champion" and second["aliases"] == ["champion"] and second["replaced"] == "1"
    assert [d["traffic"] for d in second["deployments"]] == [100]
    assert show(home, f"{NAME}/1")["status"] == "retired"
    again = cauce(home, "models", "approve", f"{NAME}/2", check=False)
    assert again.returncode == 1 and "not pending" in again.stderr
    listed = cauce(home, "models", "list", NAME).stdout
    assert "retired" in listed and "champion" in listed

    # -- rollback while a client keeps asking --------------------------------------------
    url = second["deployments"][0]["url"]
    instance = {"trip_miles": 2.5, "trip_seconds": 720, "fare": 11.0, "pickup_hour": 23, "pickup_latitude": 41.89,
                "payment_type": "Credit Card", "company": "Flash Cab", "pickup_community_area": "8"}
    body = json.dumps({"instances": [instance]}).encode()
    statuses: list[int] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    statuses.append(response.status)
            except Exception as error:  # noqa: BLE001 - every failure counts
                statuses.append(getattr(error, "code", 0))
            time.sleep(0.01)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        rolled = cauce(home, "models", "rollback", NAME)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(timeout=15)
    assert "rolled back ops-tips/2: ops-tips/1 is champion again" in rolled.stdout
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, not all answered: {sorted(set(statuses))}"
    assert show(home, NAME)["version"] == "1"
    assert show(home, f"{NAME}/2")["status"] == "rolled-back"
    assert [d["traffic"] for d in show(home, f"{NAME}/1")["deployments"]] == [100]


# -- the verbs' failure cases on a registry of stand-in bundles (real MLflow, no pipeline) ---


def _bundle(path: Path, auc: float) -> Path:
    path.mkdir(parents=True)
    (path / "cauce_model.json").write_text(json.dumps({"framework": "sklearn", "task": "binary", "metrics": {"eval_auc": auc}}))
    (path / "model.joblib").write_bytes(f"weights {auc}".encode())
    return path


@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_mlflow(_bundle(tmp_path / "m1", 0.8), "churn", uri, alias="champion")
    register_mlflow(_bundle(tmp_path / "m2", 0.9), "churn", uri, alias="pending")
    return tmp_path, uri


def test_reject_records_why_and_only_takes_a_pending_version(registry):
    home, uri = registry
    no_reason = cauce(home, "models", "reject", "churn/2", "--reason", " ", "--mlflow-tracking-uri", uri, check=False)
    assert no_reason.returncode == 1 and "say why" in no_reason.stderr
    rejected = cauce(home, "models", "reject", "churn/2", "--reason", "fails the fairness review", "--mlflow-tracking-uri", uri)
    assert "rejected churn/2" in rejected.stdout
    version = json.loads(cauce(home, "models", "show", "churn/2", "--json", "--mlflow-tracking-uri", uri).stdout)
    assert version["status"] == "rejected" and version["reason"] == "fails the fairness review"
    assert version["aliases"] == []
    for verb in ("approve", "reject"):
        args = ["models", verb, "churn/2", "--mlflow-tracking-uri", uri] + (["--reason", "x"] if verb == "reject" else [])
        refused = cauce(home, *args, check=False)
        assert refused.returncode == 1 and "is rejected, not pending" in refused.stderr


def test_unknown_models_versions_and_refs_are_named(registry):
    home, uri = registry
    cases = {
        ("show", "nope"): "no registered model 'nope'",
        ("show", "churn/7"): "model 'churn' has no version 7",
        ("show", "churn@gone"): "model 'churn' has no alias 'gone'",
        ("approve", "churn"): "names a model, not a version",
        ("show", "churn/x/y"): "does not name a model version",
    }
    for (verb, ref), message in cases.items():
        refused = cauce(home, "models", verb, ref, "--mlflow-tracking-uri", uri, check=False)
        assert refused.returncode == 1 and message in refused.stderr, (verb, ref, refused.stderr)


def test_rollback_without_a_champion_or_a_previous_one_changes_nothing(registry):
    home, uri = registry
    refused = cauce(home, "models", "rollback", "churn", "--mlflow-tracking-uri", uri, check=False)
    assert refused.returncode == 1 and "first champion" in refused.stderr
    listed = cauce(home, "models", "list", "churn", "--mlflow-tracking-uri", uri).stdout
    assert "champion" in listed and "pending" in listed
