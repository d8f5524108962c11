"""`cauce models --target google-cloud`: every verb through the real aiplatform SDK against
the local Vertex stand-in (tests/fixtures/vertex_server.py), on versions registered as the
training pipeline registers them (``run_register_vertex`` with a lineage record), then
served through ``deploy_vertex``'s traffic rules. Each verb's failure cases leave the
registry and the endpoint as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cauce.cli import app
from cauce.components.register.executor import run_register_vertex
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

runner = CliRunner()
PROJECT, REGION = "acme-ml", "us-central1"
NAME, ENDPOINT = "churn", "churn-endpoint"


def target(server) -> list[str]:
    return ["--target", "google-cloud", "--project", PROJECT, "--region", REGION, "--api-endpoint", server.endpoint]


def models(server, *args: str):
    return runner.invoke(app, ["models", *args, *target(server)])


def bundle(path: Path, auc: float) -> Path:
    path.mkdir(parents=True)
    card = {"framework": "sklearn", "task": "binary", "seed": 42, "hyperparameters_given": {"num_leaves": int(auc * 100)},
            "metrics": {"eval_auc": auc}}  # fmt: skip
    (path / "cauce_model.json").write_text(json.dumps(card))
    (path / "model.joblib").write_bytes(f"weights {auc}".encode())
    return path


def register(server, tmp_path: Path, number: int, auc: float, alias: str) -> dict:
    return run_register_vertex(
        model_dir=str(bundle(tmp_path / f"model-{number}", auc)),
        model_uri=f"gs://acme-ml-models/churn/{number}",
        model_name=NAME, project=PROJECT, vertex_region=REGION, vertex_api_endpoint=server.endpoint,
        serving_image="ghcr.io/cauce-ml/cauce-serving:test", alias=alias,
        lineage_dir=str(tmp_path / f"lineage-{number}"),
        run={"pipeline_job_id": f"job-{number}", "pipeline_job_name": f"cauce-training-{number}"},
        deployment={"endpoint_name": ENDPOINT, "machine_type": "n1-standard-2", "canary_traffic_percentage": 50},
    )  # fmt: skip


def shown(server, ref: str) -> dict:
    result = models(server, "show", ref, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def serving(server) -> dict[str, int]:
    """model version -> its share of the endpoint's traffic."""
    [endpoint] = server.endpoints.values()
    return {d["modelVersionId"]: endpoint["trafficSplit"].get(d["id"], 0) for d in endpoint["deployedModels"]}


def test_every_verb_on_vertex(vertex_server, tmp_path):  # noqa: F811
    register(vertex_server, tmp_path, 1, 0.80, "pending")
    register(vertex_server, tmp_path, 2, 0.85, "pending")

    listed = models(vertex_server, "list", NAME)
    assert listed.exit_code == 0, listed.output
    assert re.search(r"1\s.*pending", listed.output) and re.search(r"2\s.*pending", listed.output)
    one = shown(vertex_server, f"{NAME}/1")
    # An alias names one version: "pending" moved to version 2; the status stays on each.
    assert one["status"] == "pending" and one["aliases"] == []
    assert one["lineage"]["run"]["pipeline_job_name"] == "cauce-training-1"
    assert one["lineage"]["model"]["hyperparameters_given"] == {"num_leaves": 80}
    assert one["model_dir"] == "gs://acme-ml-models/churn/1" and one["deployments"] == []
    explained = models(vertex_server, "show", f"{NAME}/1")
    assert "made by: pipeline run cauce-training-1" in explained.output and "serving: nowhere" in explained.output

    # approve: the first champion, deployed (a canary with nothing to protect starts at 100 %)
    approved = models(vertex_server, "approve", f"{NAME}/1")
    assert approved.exit_code == 0, approved.output
    assert f"approved {NAME}/1: champion, serving at" in approved.output
    assert serving(vertex_server) == {"1": 100}
    one = shown(vertex_server, NAME)  # NAME alone: its champion
    assert one["version"] == "1" and one["status"] == "champion" and "champion" in one["aliases"]
    assert [d["traffic"] for d in one["deployments"]] == [100]

    # reject needs a reason and records it; only a pending version
    assert models(vertex_server, "reject", f"{NAME}/2", "--reason", " ").exit_code == 1
    rejected = models(vertex_server, "reject", f"{NAME}/2", "--reason", "fails the fairness review")
    assert rejected.exit_code == 0, rejected.output
    two = shown(vertex_server, f"{NAME}/2")
    assert two["status"] == "rejected" and two["reason"] == "fails the fairness review" and "pending" not in two["aliases"]
    for args in (("approve", f"{NAME}/2"), ("reject", f"{NAME}/2", "--reason", "again")):
        refused = models(vertex_server, *args)
        assert refused.exit_code == 1 and "is rejected, not pending" in refused.output

    # a third version approved through the canary path replaces the champion
    register(vertex_server, tmp_path, 3, 0.90, "pending")
    approved = models(vertex_server, "approve", f"{NAME}/3")
    assert approved.exit_code == 0, approved.output
    assert f"approved {NAME}/3: champion, replacing version 1" in approved.output
    assert serving(vertex_server) == {"3": 100}
    assert shown(vertex_server, f"{NAME}/1")["status"] == "retired"
    three = shown(vertex_server, f"{NAME}/3")
    assert three["status"] == "champion" and three["replaced"] == "1"
    canary = [r.body for r in vertex_server.requests_to("POST", ":deployModel")][-1]
    assert canary["trafficSplit"]["0"] == 50  # the recorded canary share went first
    refused = models(vertex_server, "approve", f"{NAME}/3")
    assert refused.exit_code == 1 and "is champion, not pending" in refused.output

    # rollback serves version 1 again
    rolled = models(vertex_server, "rollback", NAME)
    assert rolled.exit_code == 0, rolled.output
    assert f"rolled back {NAME}/3: {NAME}/1 is champion again" in rolled.output
    assert serving(vertex_server) == {"1": 100}
    assert shown(vertex_server, NAME)["version"] == "1"
    assert shown(vertex_server, f"{NAME}/3")["status"] == "rolled-back"
    listed = models(vertex_server, "list", NAME).output
    assert "rolled-back" in listed and "rejected" in listed


def test_vertex_failures_change_nothing(vertex_server, tmp_path):  # noqa: F811
    register(vertex_server, tmp_path, 1, 0.80, "champion")
    register(vertex_server, tmp_path, 2, 0.85, "challenger")
    [model_id] = vertex_server.models
    before = json.dumps(vertex_server.models, sort_keys=True)
    cases = {
        ("show", "nope"): "no model named 'nope'",
        ("list", "nope"): "no model named 'nope'",
        ("show", f"{NAME}/7"): f"model '{NAME}' has no version 7",
        ("show", f"{NAME}@gone"): f"model '{NAME}' has no alias 'gone'",
        ("approve", NAME): "names a model, not a version",
        ("approve", f"{NAME}/2"): "is challenger, not pending",
        ("reject", f"{NAME}/1", "--reason", "x"): "is champion, not pending",
        ("rollback", NAME): "first champion",
        ("rollback", "nope"): "no model named 'nope'",
        ("show", f"{NAME}/x/y"): "does not name a model version",
    }
    for args, message in cases.items():
        refused = models(vertex_server, *args)
        assert refused.exit_code == 1 and message in " ".join(refused.output.split()), (args, refused.output)
    assert json.dumps(vertex_server.models, sort_keys=True) == before
    assert vertex_server.endpoints == {}
    assert not [r for r in vertex_server.requests if r.method in ("PATCH", "DELETE") or r.path.endswith((":deployModel", ":mergeVersionAliases"))]
    assert model_id in vertex_server.models

    # no project or region: refused before any request
    count = len(vertex_server.requests)
    refused = runner.invoke(app, ["models", "list", NAME, "--target", "google-cloud", "--region", REGION])
    assert refused.exit_code == 1 and "needs --project and --region" in refused.output
    refused = runner.invoke(app, ["models", "list", NAME, "--target", "aws"])
    assert refused.exit_code == 1 and "--target must be 'local' or 'google-cloud'" in refused.output
    assert len(vertex_server.requests) == count


def test_rollback_with_no_champion_on_vertex(vertex_server, tmp_path):  # noqa: F811
    register(vertex_server, tmp_path, 1, 0.80, "pending")
    refused = models(vertex_server, "rollback", NAME)
    assert refused.exit_code == 1 and "has no champion" in refused.output


def test_a_failed_deploy_leaves_the_registry_as_it_was(vertex_server, tmp_path):  # noqa: F811
    """approve deploys first and promotes after: a deploy Vertex refuses leaves the
    version pending and the champion serving."""
    register(vertex_server, tmp_path, 1, 0.80, "pending")
    assert models(vertex_server, "approve", f"{NAME}/1").exit_code == 0
    register(vertex_server, tmp_path, 2, 0.85, "pending")
    refused = models(vertex_server, "approve", f"{NAME}/2", "--endpoint", 'bad"name')
    assert refused.exit_code == 1
    assert shown(vertex_server, f"{NAME}/2")["status"] == "pending"
    assert shown(vertex_server, NAME)["version"] == "1" and serving(vertex_server) == {"1": 100}


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    # rich wraps tables and messages at the terminal's width; keep lines whole for the asserts
    monkeypatch.setenv("COLUMNS", "250")
