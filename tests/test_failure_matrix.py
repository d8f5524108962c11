"""The failure matrix: what a user or an operator gets wrong, and what breaks underneath,
phase by phase. Every case asserts the message a person reads (it names the parameter,
field, file, construct or process, and what was expected) and that nothing partial or
inconsistent is left: no half-written output, no stopped server, no alias or traffic
split pointing at something nothing serves.

Everything is real: serving processes on loopback, real signals to real processes, the
local engine's DuckDB and sqlglot, the CLI run as a program.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cauce.artifacts import CauceError
from cauce.components.deploy import runtimes
from cauce.components.deploy.executor import (
    deploy_local,
    endpoint_dir,
    local_endpoint,
    post_json,
    smoke_instances_from,
    stop_local,
)

REPO = Path(__file__).resolve().parents[1]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is dead for every purpose here.
    return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture(scope="module")
def bundles(trained_model, tmp_path_factory):
    """The trained model, and a copy whose model files are truncated (do not load): the
    framework's file and model.onnx, which serving loads."""
    raw, _, _, model_dir = trained_model
    root = tmp_path_factory.mktemp("bundles")
    broken = Path(shutil.copytree(model_dir, root / "truncated"))
    for name in ("model.joblib", "model.onnx"):
        payload = (broken / name).read_bytes()
        (broken / name).write_bytes(payload[: len(payload) // 2])
    return {"good": model_dir, "truncated": str(broken), "instances": smoke_instances_from(raw, "eval", model_dir, rows=3)}


@pytest.fixture
def serving(bundles):
    """A served endpoint; stopped afterwards. Yields (endpoint name, state)."""
    name = f"matrix-{time.time_ns()}"
    (port,) = free_ports(1)
    state = deploy_local(bundles["good"], name, port=port, smoke_instances=bundles["instances"])
    yield name, state
    stop_local(name)


def answers(state: dict, instances: list[dict]) -> bool:
    status, body = post_json(state["predict_url"], {"instances": instances}, timeout=5)
    return status == 200 and len(body["predictions"]) == len(instances)


def unchanged(name: str, before: dict, instances: list[dict]) -> None:
    """The endpoint's previous server still runs, answers, and its state file is as it was."""
    assert local_endpoint(name) == {**before, "admin_token": local_endpoint(name)["admin_token"]}
    assert runtimes.of(before).owns(local_endpoint(name))
    assert answers(before, instances)


# --------------------------------------------------------------------------- deploy
def test_deploy_to_a_port_another_process_holds_leaves_the_serving_version_serving(serving, bundles):
    name, before = serving
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(CauceError, match=rf"(?s)port {taken} on 127.0.0.1 is in use by another process.*keeps serving"):
            deploy_local(bundles["good"], name, port=taken, smoke_instances=bundles["instances"])
    unchanged(name, before, bundles["instances"])


def test_deploy_of_a_model_that_does_not_load_on_a_new_port_stops_only_the_new_process(serving, bundles):
    name, before = serving
    (port,) = free_ports(1)
    with pytest.raises(CauceError, match=r"(?s)exited with code 1 before it was healthy.*model .* did not load: .*keeps serving"):
        deploy_local(bundles["truncated"], name, port=port, smoke_instances=bundles["instances"], startup_timeout=60)
    unchanged(name, before, bundles["instances"])
    with socket.socket() as probe:  # the new process is gone: its port is free again
        probe.bind(("127.0.0.1", port))


def test_deploy_of_a_model_that_does_not_load_in_place_changes_nothing(serving, bundles):
    name, before = serving
    with pytest.raises(CauceError, match=r"(?s)did not load.*nothing was deployed"):
        deploy_local(bundles["truncated"], name, port=before["port"], smoke_instances=bundles["instances"])
    unchanged(name, before, bundles["instances"])


def test_redeploy_in_place_with_another_request_log_dir_is_refused_before_anything_stops(serving, bundles, tmp_path):
    name, before = serving
    with pytest.raises(CauceError, match=rf"(?s)already serves on 127.0.0.1:{before['port']}.*keeps serving.*cauce stop {name}"):
        deploy_local(bundles["good"], name, port=before["port"], request_log_dir=str(tmp_path / "elsewhere"))
    unchanged(name, before, bundles["instances"])
    assert not (tmp_path / "elsewhere").exists()


def test_redeploy_to_another_port_stops_the_previous_server_only_after_the_new_one_answers(serving, bundles):
    name, before = serving
    (port,) = free_ports(1)
    after = deploy_local(bundles["good"], name, port=port, smoke_instances=bundles["instances"])
    assert answers(after, bundles["instances"])
    assert not runtimes.of(before).owns({**before, "admin_token": ""})
    assert local_endpoint(name)["port"] == port


def test_deploy_with_a_canary_percentage_of_150_is_refused_before_anything_changes(serving, bundles):
    name, before = serving
    with pytest.raises(CauceError, match=r"traffic_percentage must be an integer in 1\.\.100, got 150"):
        deploy_local(bundles["good"], name, port=before["port"], traffic_percentage=150, promote=True)
    unchanged(name, before, bundles["instances"])


# --------------------------------------------------------------------------- deploy: Vertex AI
# The real aiplatform SDK against the stand-in (tests/fixtures/vertex_server.py), which
# routes predictions by the traffic split and injects the failures.
from tests.fixtures.vertex_server import VertexServerError  # noqa: E402
from tests.test_deploy_vertex import INSTANCES, deploy, register_version  # noqa: E402


def crashing(instances):
    raise RuntimeError("model file is corrupt")


@pytest.fixture
def vertex_serving(vertex_server):
    """Version 1 serving all the traffic of churn-endpoint; version 2 registered."""
    first = deploy(vertex_server, register_version(vertex_server, "gs://bucket/churn/v1"), smoke_instances=INSTANCES)
    version_2 = register_version(vertex_server, "gs://bucket/churn/v2")
    [endpoint] = vertex_server.endpoints.values()
    before = json.loads(json.dumps({k: endpoint[k] for k in ("deployedModels", "trafficSplit")}))
    return vertex_server, first, version_2, endpoint, before


def vertex_unchanged(endpoint: dict, before: dict) -> None:
    assert {k: endpoint[k] for k in ("deployedModels", "trafficSplit")} == before


def test_vertex_a_new_version_whose_predictions_fail_never_takes_the_traffic(vertex_serving):
    """Before: the new version got 100 % at deploy time, and the smoke test ran on it alone."""
    server, first, version_2, endpoint, before = vertex_serving
    server.version_predict_handlers["2"] = crashing
    with pytest.raises(CauceError, match=r"(?s)smoke test failed: .*model file is corrupt.*rolled back: deployment \d+ undeployed"):
        deploy(server, version_2, smoke_instances=INSTANCES)
    vertex_unchanged(endpoint, before)
    [staged] = server.requests_to("POST", ":deployModel")[1:]
    assert staged.body["trafficSplit"][first["deployed_model_id"]] == 90  # the old one kept 90 % meanwhile


def test_vertex_a_new_version_answering_the_wrong_count_is_rolled_back(vertex_serving):
    server, _, version_2, endpoint, before = vertex_serving
    server.version_predict_handlers["2"] = lambda instances: instances[:1]
    with pytest.raises(CauceError, match=r"returned 1 predictions for 2 instances \(deployment \d+\).*rolled back"):
        deploy(server, version_2, smoke_instances=INSTANCES)
    vertex_unchanged(endpoint, before)


def test_vertex_a_deploy_operation_that_fails_changes_nothing(vertex_serving):
    server, _, version_2, endpoint, before = vertex_serving
    server.failing_deploys["2"] = "container did not become healthy within 1800 s"
    with pytest.raises(CauceError, match=r"(?s)deploying .*models/\d+@2 to endpoint 'churn-endpoint' .*failed: .*"
                                         r"container did not become healthy.*rolled back"):  # fmt: skip
        deploy(server, version_2, smoke_instances=INSTANCES)
    vertex_unchanged(endpoint, before)


def test_vertex_a_promotion_that_fails_restores_the_split(vertex_serving):
    server, _, version_2, endpoint, before = vertex_serving
    server.fail_next("PATCH", r"/endpoints/\d+$", VertexServerError(503, "UNAVAILABLE", "the service is unavailable"))
    with pytest.raises(CauceError, match=r"(?s)rolling out .*failed: .*the service is unavailable.*rolled back"):
        deploy(server, version_2, smoke_instances=INSTANCES)
    vertex_unchanged(endpoint, before)


def test_vertex_a_broken_canary_leaves_the_serving_version_at_100(vertex_serving):
    server, _, version_2, endpoint, before = vertex_serving
    server.version_predict_handlers["2"] = crashing
    with pytest.raises(CauceError, match="rolled back"):
        deploy(server, version_2, smoke_instances=INSTANCES, traffic_percentage=20, promote=True)
    vertex_unchanged(endpoint, before)


def test_vertex_the_smoke_test_reaches_the_new_version_and_its_answers_are_its_own(vertex_serving):
    server, first, version_2, endpoint, _ = vertex_serving
    answered = []

    def version_2_answers(instances):
        answered.append(len(instances))
        return [{"label": 1, "score": 0.9} for _ in instances]

    server.version_predict_handlers["2"] = version_2_answers
    result = deploy(server, version_2, smoke_instances=INSTANCES)
    assert answered == [2] and result["traffic_percentage"] == 100 and result["left_deployed"] == []
    assert endpoint["trafficSplit"] == {result["deployed_model_id"]: 100}
    # At 10 % the round robin reaches it within 10 requests (the first deploy sent one).
    assert 2 <= len(server.requests_to("POST", ":predict")) <= 11


def test_vertex_an_old_deployment_that_cannot_be_undeployed_is_named_not_fatal(vertex_serving):
    server, first, version_2, endpoint, _ = vertex_serving
    server.fail_next("POST", r":undeployModel$", VertexServerError(503, "UNAVAILABLE", "try again"))
    result = deploy(server, version_2, smoke_instances=INSTANCES)
    assert result["left_deployed"] == [first["deployed_model_id"]]
    assert endpoint["trafficSplit"] == {result["deployed_model_id"]: 100}  # the new version serves alone


def test_vertex_logging_settings_change_only_after_a_successful_deploy(vertex_serving):
    server, _, version_2, endpoint, _ = vertex_serving
    had = endpoint.get("predictRequestResponseLoggingConfig")
    server.version_predict_handlers["2"] = crashing
    with pytest.raises(CauceError, match="rolled back"):
        deploy(server, version_2, smoke_instances=INSTANCES, request_log_table="bq://test-project.logs.churn",
               request_log_sampling_rate=0.5)  # fmt: skip
    assert endpoint.get("predictRequestResponseLoggingConfig") == had
    assert server.requests_to("PATCH", "") == []


@pytest.mark.parametrize("percentage", [150, 0, -5])
def test_vertex_a_canary_percentage_out_of_range_is_refused_before_any_request(vertex_server, percentage):
    with pytest.raises(CauceError, match=rf"traffic_percentage must be in 1\.\.100, got {percentage}"):
        deploy(vertex_server, "projects/p/locations/l/models/1@1", traffic_percentage=percentage)
    assert vertex_server.requests == []


# --------------------------------------------------------------------------- registry: the champion alias follows what serves
# The training pipeline registers a blessed model "pending" and its deploy step moves
# "champion" to it only once it serves (before: registered champion first, so a failed
# deploy or a canary of 150 left the alias on a version nothing served).
MODEL = "matrix-model"


@pytest.fixture
def registry_setup(trained_model, bundles, tmp_path):
    """An MLflow registry of its own, an endpoint name and port, and distinct model copies."""
    from cauce.model_registry import LocalRegistry

    raw = trained_model[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = f"matrix-reg-{time.time_ns()}"
    (port,) = free_ports(1)

    def variant(tag: str, source: str = bundles["good"]) -> str:
        copy = Path(shutil.copytree(source, tmp_path / tag))
        (copy / "variant.txt").write_text(tag)  # another content hash: another version
        return str(copy)

    yield {"raw": raw, "uri": uri, "name": name, "port": port, "variant": variant, "registry": LocalRegistry(uri)}
    stop_local(name)


def register_pending(setup: dict, model_dir: str) -> dict:
    from cauce.components.register.executor import register_mlflow

    return register_mlflow(model_dir, MODEL, setup["uri"], alias="pending")


def deploy_then_champion(setup: dict, model_dir: str, registered: dict, **kwargs) -> dict:
    from cauce.components.deploy.executor import run_deploy_local

    return run_deploy_local(model_dir, setup["raw"], setup["name"], port=setup["port"], set_champion=True,
                            registered=registered, mlflow_tracking_uri=setup["uri"], **kwargs)  # fmt: skip


def aliases(setup: dict) -> dict[str, tuple[list[str], str]]:
    return {v.version: (v.aliases, v.status) for v in setup["registry"].list(MODEL)}


@pytest.fixture
def champion_serving(registry_setup):
    v1 = registry_setup["variant"]("v1")
    result = deploy_then_champion(registry_setup, v1, register_pending(registry_setup, v1))
    return registry_setup, result


def test_registry_the_first_deploy_makes_the_pending_version_champion(champion_serving):
    setup, result = champion_serving
    assert result["champion"] == "1"
    assert aliases(setup) == {"1": (["champion"], "champion")}  # "pending" dropped


@pytest.mark.parametrize("canary", [150, 0], ids=["canary-150", "canary-0"])
def test_registry_a_bad_canary_share_leaves_champion_on_the_serving_version(champion_serving, canary):
    setup, _ = champion_serving
    before = local_endpoint(setup["name"])
    v2 = setup["variant"]("v2")
    with pytest.raises(CauceError, match=rf"traffic_percentage must be an integer in 1\.\.100, got {canary}"):
        deploy_then_champion(setup, v2, register_pending(setup, v2), canary_traffic_percentage=canary)
    assert aliases(setup) == {"1": (["champion"], "champion"), "2": (["pending"], "pending")}
    assert local_endpoint(setup["name"])["traffic_split"] == before["traffic_split"]


def test_registry_a_model_that_does_not_load_leaves_champion_on_the_serving_version(champion_serving, bundles):
    setup, _ = champion_serving
    broken = setup["variant"]("broken", bundles["truncated"])
    with pytest.raises(CauceError, match=r"did not load.*nothing was deployed"):
        deploy_then_champion(setup, broken, register_pending(setup, broken))
    assert aliases(setup)["1"] == (["champion"], "champion") and aliases(setup)["2"] == (["pending"], "pending")


def test_registry_a_successful_second_deploy_moves_champion_and_retires_the_first(champion_serving):
    setup, _ = champion_serving
    v2 = setup["variant"]("v2")
    result = deploy_then_champion(setup, v2, register_pending(setup, v2))
    assert result["champion"] == "2"
    assert aliases(setup) == {"1": ([], "retired"), "2": (["champion"], "champion")}
    assert setup["registry"].get(MODEL, version="2").replaced == "1"  # what rollback goes back to


def test_registry_a_version_left_pending_by_a_failed_deploy_can_be_approved_later(champion_serving):
    setup, _ = champion_serving
    v2 = setup["variant"]("v2")
    with pytest.raises(CauceError):
        deploy_then_champion(setup, v2, register_pending(setup, v2), canary_traffic_percentage=150)
    result = setup["registry"].approve(f"{MODEL}/2", endpoint_name=setup["name"], port=setup["port"])
    assert result["replaced"] == "1" and aliases(setup)["2"] == (["champion"], "champion")


def test_registry_that_refuses_the_alias_after_a_deploy_names_the_way_out(monkeypatch):
    from cauce.components.deploy import executor

    class Refusing:
        def make_champion(self, name, version):
            raise RuntimeError("registry is read-only")

    monkeypatch.setattr(executor.time, "sleep", lambda seconds: None)
    with pytest.raises(CauceError, match=r"m/4 serves http://x/predict, but the registry's champion alias could not be "
                                         r"moved to it \(registry is read-only\); it stays 'pending': "
                                         r"`cauce models approve m/4` makes it champion"):  # fmt: skip
        executor.make_champion(Refusing(), "m", "4", "http://x/predict")


def test_registry_set_champion_without_the_registered_version_is_refused_before_deploying(registry_setup):
    from cauce.components.deploy.executor import run_deploy_local

    v1 = registry_setup["variant"]("v1")
    with pytest.raises(CauceError, match=r"set_champion needs the registered model's model_name and version"):
        run_deploy_local(v1, registry_setup["raw"], registry_setup["name"], port=registry_setup["port"],
                         set_champion=True, registered={}, mlflow_tracking_uri=registry_setup["uri"])  # fmt: skip


def test_registry_the_training_spec_registers_pending_and_deploy_sets_champion(tmp_path):
    import yaml

    from cauce import spec

    compiled = yaml.safe_load(Path(spec.compile_pipeline("training", tmp_path)).read_text())
    tasks = {}
    for component in [compiled["root"], *compiled["components"].values()]:
        tasks.update((component.get("dag") or {}).get("tasks") or {})

    def constant(task: str, name: str):
        return tasks[task]["inputs"]["parameters"][name]["runtimeValue"]["constant"]

    assert constant("register", "alias") == "pending" and constant("register-vertex", "alias") == "pending"
    assert constant("deploy", "set_champion") is True and constant("deploy-vertex", "set_champion") is True


def test_registry_on_vertex_champion_moves_only_after_the_deploy_served(vertex_server):
    from cauce.components.deploy.executor import make_champion
    from cauce.components.register.executor import register_vertex
    from cauce.model_registry import VertexRegistry

    def register(uri: str) -> str:
        return register_vertex(uri, "churn", "test-project", "us-central1", "ghcr.io/cauce-ml/cauce-serving:test",
                               api_endpoint=vertex_server.endpoint, alias="pending")["model_uri"]  # fmt: skip

    registry = VertexRegistry("test-project", "us-central1", vertex_server.endpoint)
    served = deploy(vertex_server, register("gs://bucket/churn/v1"), smoke_instances=INSTANCES)
    make_champion(registry, "churn", "1", served["endpoint_url"])
    version_2 = register("gs://bucket/churn/v2")
    vertex_server.version_predict_handlers["2"] = crashing
    with pytest.raises(CauceError, match="rolled back"):
        deploy(vertex_server, version_2, smoke_instances=INSTANCES)
    found = {v.version: (v.aliases, v.status) for v in registry.list("churn")}
    assert found == {"1": (["champion"], "champion"), "2": (["pending"], "")}
    del vertex_server.version_predict_handlers["2"]
    served = deploy(vertex_server, version_2, smoke_instances=INSTANCES)
    make_champion(registry, "churn", "2", served["endpoint_url"])
    found = {v.version: (v.aliases, v.status) for v in registry.list("churn")}
    assert found == {"1": ([], "retired"), "2": (["champion"], "champion")}


# --------------------------------------------------------------------------- signals
@pytest.fixture
def bystander():
    """An unrelated process (a sleep in its own session, as a server would be)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def forged_state(name: str, state: dict) -> None:
    directory = endpoint_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_text(json.dumps(state))


def test_a_state_file_naming_another_process_never_gets_it_signalled(bystander):
    # The state a stale endpoint leaves, with its pid reused by someone else's process.
    forged_state("matrix-stale", {"runtime": "process", "pid": bystander.pid, "pid_start_ticks": 1,
                                  "command": [sys.executable, "-m", "cauce.serving"], "port": 1})  # fmt: skip
    assert stop_local("matrix-stale") is False
    assert alive(bystander.pid)
    assert local_endpoint("matrix-stale") is None  # the stale record is cleared


def test_an_edited_state_file_with_the_right_start_time_but_another_command_is_not_signalled(bystander):
    ticks = runtimes._process_start_ticks(bystander.pid)
    forged_state("matrix-edited", {"runtime": "process", "pid": bystander.pid, "pid_start_ticks": ticks,
                                   "command": ["sleep", "300"]})  # fmt: skip
    assert stop_local("matrix-edited") is False
    assert alive(bystander.pid)


def test_a_state_file_naming_pid_1_or_a_non_number_is_not_signalled():
    for pid in (1, 0, -1, "1", None):
        forged_state("matrix-pid", {"runtime": "process", "pid": pid, "pid_start_ticks": 1, "command": ["init"]})
        assert stop_local("matrix-pid") is False


def test_a_garbage_state_file_is_an_error_naming_it():
    directory = endpoint_dir("matrix-garbage")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").write_bytes(b"\x00\xff not json")
    with pytest.raises(CauceError, match=r"endpoint 'matrix-garbage' has an unreadable state file .*state\.json"):
        stop_local("matrix-garbage")


@pytest.mark.parametrize("name", ["../../etc", "/etc", "a b", "", "x/../../y"])
def test_stop_with_an_endpoint_name_that_is_a_path_is_refused(name):
    with pytest.raises(CauceError, match=r"endpoint_name .* must be non-empty letters, digits, '-' or '_'"):
        stop_local(name)


def test_a_sigkilled_server_is_noticed_and_the_next_deploy_starts_fresh(serving, bundles):
    name, before = serving
    os.killpg(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while runtimes.of(before).owns(local_endpoint(name)) and time.monotonic() < deadline:
        runtimes._reap(before["pid"])
        time.sleep(0.05)
    after = deploy_local(bundles["good"], name, port=before["port"], smoke_instances=bundles["instances"])
    assert after["pid"] != before["pid"] and answers(after, bundles["instances"])


# --------------------------------------------------------------------------- signals: partial outputs
TRANSFORM_SCRIPT = """
import sys
from cauce.components.transform.executor import run_transform
from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC
raw, out = sys.argv[1], sys.argv[2]
run_transform(raw, DEMO_LABEL, DEMO_NUMERIC, DEMO_CATEGORICAL, out + "/transformed", out + "/transform", batch_rows=100)
"""


@pytest.fixture(scope="module")
def big_raw_dataset(tmp_path_factory):
    """Enough rows that transform writes for a few seconds (small batches, many files)."""
    sys.path.insert(0, str(REPO))
    from conftest import make_raw_dataset

    return make_raw_dataset(tmp_path_factory.mktemp("big") / "raw", rows=20000)


def transform_killed_mid_write(raw: str, out: Path, sig: signal.Signals) -> tuple[subprocess.CompletedProcess, list[Path]]:
    """Run transform in a real process; once the partial output holds written files,
    send ``sig``. Returns the finished process and the partials seen before the signal."""
    process = subprocess.Popen([sys.executable, "-c", TRANSFORM_SCRIPT, raw, str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(out.glob(".transformed.partial-*/*/part-*")):
        assert process.poll() is None and time.monotonic() < deadline, "transform ended before any file was written"
        time.sleep(0.01)
    seen = list(out.glob(".transformed.partial-*"))
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), seen


def test_sigterm_during_transform_removes_the_partial_output(big_raw_dataset, tmp_path):
    """Before: the `.transformed.partial-*` directory stayed behind. Now SIGTERM unwinds
    the step (cauce.artifacts.Terminated), the partial goes, and the exit status is 143."""
    result, seen = transform_killed_mid_write(big_raw_dataset, tmp_path, signal.SIGTERM)
    assert seen and result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert "stopped by SIGTERM: removed the partial output" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial, no half output


def test_a_partial_left_by_sigkill_is_swept_and_ignored_by_the_rerun(big_raw_dataset, tmp_path):
    from cauce import data
    from cauce.components.transform.executor import run_transform
    from cauce.demo import DEMO_CATEGORICAL, DEMO_LABEL, DEMO_NUMERIC

    result, seen = transform_killed_mid_write(big_raw_dataset, tmp_path, signal.SIGKILL)
    assert result.returncode == -signal.SIGKILL
    assert [p.exists() for p in seen] == [True]  # SIGKILL leaves it: nothing can run
    run_transform(big_raw_dataset, DEMO_LABEL, DEMO_NUMERIC, DEMO_CATEGORICAL,
                  str(tmp_path / "transformed"), str(tmp_path / "transform"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transform", "transformed"]
    assert data.read_schema(str(tmp_path / "transformed"))["splits"]["train"] == 15000


def test_a_partial_of_a_writer_that_still_runs_is_left_alone(bystander, tmp_path):
    from cauce.artifacts import atomic_dir

    host = socket.gethostname()
    live = tmp_path / f".out.partial-{host}-{bystander.pid}-abc123"
    other_host = tmp_path / f".out.partial-elsewhere-{bystander.pid + 1}-abc123"
    dead = tmp_path / f".out.partial-{host}-999999999-abc123"
    for partial in (live, other_host, dead):
        partial.mkdir()
    with atomic_dir(tmp_path / "out") as out:
        (out / "x").write_text("1")
    assert live.is_dir() and other_host.is_dir() and not dead.exists()
    assert (tmp_path / "out" / "x").read_text() == "1"


def test_sigterm_during_an_atomic_file_unwinds_and_handlers_of_others_are_kept(tmp_path):
    from cauce.artifacts import Terminated, atomic_file, sigterm_unwinds

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def theirs(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, theirs)
    try:
        with sigterm_unwinds():
            assert signal.getsignal(signal.SIGTERM) is theirs  # Beam's job cancellation keeps its own
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(Terminated), atomic_file(tmp_path / "never-written") as handle:
        handle.write("partial")
        os.kill(os.getpid(), signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --------------------------------------------------------------------------- serving: the request log
def logged_fares(log_dir: str) -> set[float]:
    fares = set()
    for path in Path(log_dir).glob("requests-*.jsonl"):
        for line in path.read_bytes().splitlines():
            record = json.loads(line)  # every line whole: one write(2) per line
            fares.update(json.loads(instance)["fare"] for instance in record["request_payload"])
    return fares


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "burst"])
def test_no_answered_request_is_missing_from_the_log_after_sigkill(serving, bundles, concurrent):
    """The stated bound (cauce.serving.app.LOG_DURABILITY): zero. Each request carries a
    unique fare; every one that got a 200 is in the log after the server is SIGKILLed
    right after the last answer (before: a burst of 150 kept 23 lines)."""
    from concurrent.futures import ThreadPoolExecutor

    name, state = serving
    base = bundles["instances"][0]

    def send(i: int) -> float | None:
        fare = 1000.0 + i + 0.25
        status, _ = post_json(state["predict_url"], {"instances": [dict(base, fare=fare)]}, timeout=10)
        return fare if status == 200 else None

    if concurrent:
        with ThreadPoolExecutor(32) as pool:
            answered = [fare for fare in pool.map(send, range(150)) if fare is not None]
    else:
        answered = [fare for fare in map(send, range(150)) if fare is not None]
    os.killpg(state["pid"], signal.SIGKILL)
    assert len(answered) == 150
    assert set(answered) <= logged_fares(state["request_log_dir"])


# --------------------------------------------------------------------------- serving: input rules
@pytest.fixture(scope="module")
def apps(trained_model, tmp_path_factory):
    """The real prediction app (no HTTP: its whole request path) for the linear model,
    which takes the fused linear scorer (cauce.features.LinearScorer), and for a gradient-boosted one,
    which takes the estimator's own predict_proba."""
    from cauce import model as model_bundle
    from cauce.components.train.executor import run_train
    from cauce.serving.app import PredictionApp

    raw, transformed, transform, model_dir = trained_model
    boosted = tmp_path_factory.mktemp("boosted") / "model"
    run_train(transformed, transform, str(boosted), {"model_type": "hist_gradient_boosting", "max_iter": 20})
    instance = smoke_instances_from(raw, "eval", model_dir, rows=1)[0]
    return {
        "linear": PredictionApp(model_bundle.load(model_dir)),
        "boosted": PredictionApp(model_bundle.load(str(boosted))),
        "instance": instance,
    }


def predict(app, instances) -> tuple[int, dict]:
    status, body = app.handle("POST", "/predict", json.dumps({"instances": instances}).encode())
    return status, json.loads(body)


# (field, value, where in a request of 1 or 12 instances, expected message)
BAD_VALUES = [
    ("fare", 1e308, r"instance {i} field 'fare': value 1e\+308 is outside what the model can encode"),
    ("fare", -1e308, r"instance {i} field 'fare': value -1e\+308 is outside what the model can encode"),
    ("trip_miles", "inf", r"instance {i} field 'trip_miles' must be a finite number, got 'inf'"),
    ("fare", "nan", r"instance {i} field 'fare' must be a finite number, got 'nan'"),
    ("fare", "-Infinity", r"instance {i} field 'fare' must be a finite number, got '-Infinity'"),
    ("fare", "1e999", r"instance {i} field 'fare' must be a finite number, got '1e999'"),
    ("fare", True, r"instance {i} field 'fare' must be a number \(it was FLOAT64 in training\), got true"),
    ("pickup_hour", False, r"instance {i} field 'pickup_hour' must be a number \(it was INT64 in training\), got false"),
    ("company", True, r"instance {i} field 'company' must be a string, got true: booleans are not taken"),
    ("fare", "cheap", r"instance {i} field 'fare' must be a number, got 'cheap'"),
    ("company", {"name": "x"}, r"instance {i} field 'company' must be a string"),
]


@pytest.mark.parametrize("model", ["linear", "boosted"])
@pytest.mark.parametrize("count", [1, 12], ids=["one-instance", "gathered"])
@pytest.mark.parametrize(("field", "value", "message"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_a_value_outside_the_serving_input_rules_is_a_400_naming_instance_and_field(apps, model, count, field, value, message):
    app = apps[model]
    instances = [dict(apps["instance"]) for _ in range(count)]
    where = count - 1  # the last one: the error must name the right instance, not the first
    instances[where][field] = value
    status, body = predict(app, instances)
    assert status == 400, body
    assert __import__("re").search(message.format(i=where), body["error"]), body["error"]
    # ... and the server keeps answering good requests.
    status, body = predict(app, [apps["instance"]] * count)
    assert status == 200 and all(p["score"] is not None for p in body["predictions"])


@pytest.mark.parametrize("model", ["linear", "boosted"])
def test_documented_coercions_give_the_training_types_answer(apps, model):
    """A number for a category is spelled as training's cast spells it (8 -> "8"); a
    string spelling a number is that number; null is a missing value, as in training."""
    app, instance = apps[model], apps["instance"]
    _, reference = predict(app, [instance])
    as_number = dict(instance, pickup_community_area=int(instance["pickup_community_area"]))
    as_string = dict(instance, fare=str(instance["fare"]))
    for variant in (as_number, as_string):
        status, body = predict(app, [variant])
        assert status == 200 and body["predictions"] == reference["predictions"]
    status, body = predict(app, [dict(instance, fare=None)])
    assert status == 200 and body["predictions"][0]["score"] is not None


def test_json_infinity_is_refused_as_invalid_json(apps):
    status, body = apps["linear"].handle("POST", "/predict", b'{"instances": [{"fare": 1e309}]}')
    assert status == 400 and "request body is not valid JSON: number is infinity" in json.loads(body)["error"]


# --------------------------------------------------------------------------- serving: slow clients
@pytest.fixture
def strict_server(bundles, monkeypatch):
    """A served endpoint with short limits, so slow clients are cut off within seconds."""
    monkeypatch.setenv("CAUCE_SERVE_HEADER_TIMEOUT_S", "1")
    monkeypatch.setenv("CAUCE_SERVE_BODY_TIMEOUT_S", "1")
    monkeypatch.setenv("CAUCE_SERVE_MAX_BUFFERING", "8")
    name = f"matrix-slow-{time.time_ns()}"
    (port,) = free_ports(1)
    state = deploy_local(bundles["good"], name, port=port, smoke_instances=bundles["instances"])
    yield state
    stop_local(name)


def connect(state: dict) -> socket.socket:
    sock = socket.create_connection((state["host"], state["port"]), timeout=15)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_headers_sent_too_slowly_get_the_connection_closed(strict_server):
    with connect(strict_server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert read_all(sock) == b""  # closed by the server (the recv timeout is 15 s)


def test_a_connection_that_sends_nothing_is_closed(strict_server):
    with connect(strict_server) as sock:
        assert read_all(sock) == b""


def test_a_body_sent_too_slowly_is_a_408(strict_server):
    with connect(strict_server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inst")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_slow_uploaders_hold_at_most_the_buffering_limit_and_good_clients_keep_answers(strict_server, bundles):
    """200 slow uploaders (each has sent 64 KiB of a 1.5 MB body) against a limit of 8
    bodies buffered at once: 8 wait for their timeout, the others get 503 at once, and
    a good client's every request is answered meanwhile."""
    head = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1500000\r\n\r\n")  # fmt: skip
    slow = []
    try:
        for _ in range(200):
            sock = connect(strict_server)
            sock.sendall(head + b"[" * 65536)
            slow.append(sock)
        good = [answers(strict_server, bundles["instances"]) for _ in range(100)]
        statuses = [read_all(sock)[:12] for sock in slow]
    finally:
        for sock in slow:
            sock.close()
    assert all(good)
    # Every slow uploader was cut off: refused at once past the limit, or timed out
    # holding a slot (slots free up as holders time out while the 200 connect).
    assert set(statuses) == {b"HTTP/1.1 503", b"HTTP/1.1 408"}
    assert statuses.count(b"HTTP/1.1 503") > statuses.count(b"HTTP/1.1 408")


# --------------------------------------------------------------------------- extract: the local engine
@pytest.fixture(scope="module")
def local_database(tmp_path_factory):
    import duckdb

    path = tmp_path_factory.mktemp("engine") / "local.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE SCHEMA trips")
        connection.execute("CREATE TABLE trips.taxi AS SELECT i AS id, i * 1.5 AS fare FROM range(10) t(i)")
    return str(path)


REFUSED_QUERIES = [
    ("SELECT * FROM read_csv('/etc/passwd')", "the table function READ_CSV"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", "the table function READ_PARQUET"),
    ("SELECT * FROM trips.taxi, read_json('/tmp/x.json')", "the table function READ_JSON"),
    ("SELECT read_text('/etc/passwd')", "the function READ_TEXT"),
    ("SELECT getenv('HOME')", "the function GETENV"),
    ("ATTACH '/tmp/other.db' AS other", "the ATTACH statement"),
    ("COPY trips.taxi TO '/tmp/out.csv'", "the statement COPY"),
    ("INSTALL httpfs", "the statement"),
    ("LOAD httpfs", "the statement LOAD"),
    ("PRAGMA database_list", "the statement PRAGMA"),
    ("SET threads = 1", "the statement SET"),
    ("SELECT 1; SELECT 2", r"multi-statement text \(2 statements\)"),
    ("CREATE TABLE trips.x AS SELECT 1 AS a", "the statement CREATE"),
    ("INSERT INTO trips.taxi VALUES (1, 2.0)", "the statement INSERT"),
    ("DELETE FROM trips.taxi WHERE TRUE", "the statement DELETE"),
    ("SELECT ARRAY_AGG(id ORDER BY fare LIMIT 3) FROM trips.taxi", r"ARRAY_AGG\(\.\.\. LIMIT n\)"),
]


@pytest.mark.parametrize(("sql", "construct"), REFUSED_QUERIES, ids=[q for q, _ in REFUSED_QUERIES])
def test_the_local_engine_refuses_what_bigquery_would_not_run_naming_it(local_database, sql, construct):
    from cauce.components.extract.local_engine import run_query

    with pytest.raises(CauceError, match=construct):
        run_query(local_database, sql)
    # ... and nothing was written anywhere: the database is as it was, no file appeared.
    assert run_query(local_database, "SELECT COUNT(*) AS n FROM trips.taxi").column("n").to_pylist() == [10]
    assert not Path("/tmp/out.csv").exists() and not Path("/tmp/other.db").exists()


def test_a_file_path_as_a_table_name_reads_nothing(local_database):
    """DuckDB reads a file named like a table (its replacement scans); external access
    is off, so the name is just a table that does not exist."""
    from cauce.components.extract.local_engine import run_query

    with pytest.raises(CauceError, match=r"(?s)local query failed: .*(/etc/passwd|external access)"):
        run_query(local_database, "SELECT * FROM `/etc/passwd`")


def test_a_select_with_cte_union_and_unnest_still_runs(local_database):
    from cauce.components.extract.local_engine import run_query

    table = run_query(
        local_database,
        "WITH low AS (SELECT id FROM trips.taxi WHERE id < 2) SELECT id FROM low UNION ALL "
        "SELECT x FROM UNNEST([7, 8]) AS x ORDER BY id",
    )
    assert table.column("id").to_pylist() == [0, 1, 7, 8]


# --------------------------------------------------------------------------- extract: NULL keys
@pytest.fixture(scope="module")
def nullable_keys(tmp_path_factory):
    """1000 rows whose key is NULL in every other row (half_null) or in 5 of them (few_null)."""
    import duckdb

    path = tmp_path_factory.mktemp("nullkeys") / "local.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE SCHEMA trips")
        connection.execute("CREATE TABLE trips.half_null AS SELECT CASE WHEN i % 2 = 0 THEN NULL ELSE i END AS id, "
                           "i * 1.5 AS fare FROM range(1000) t(i)")  # fmt: skip
        connection.execute("CREATE TABLE trips.few_null AS SELECT CASE WHEN i < 5 THEN NULL ELSE i END AS id, "
                           "i * 1.5 AS fare FROM range(1000) t(i)")  # fmt: skip
    return str(path)


def test_a_key_column_half_null_fails_extract_naming_the_count(nullable_keys, tmp_path):
    """Before: the NULL-key rows all fell into one split, silently (half the data in eval)."""
    from cauce.components.extract.executor import run_extract

    with pytest.raises(CauceError, match=r"key_column 'id' is NULL in 500 of 1,000 rows \(50\.0%\), more than "
                                         r"max_null_key_fraction=0\.01: .*belong to no split"):  # fmt: skip
        run_extract("trips.half_null", "id", tmp_path / "dataset", local_database=nullable_keys)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial


def test_a_few_null_keys_are_dropped_counted_and_stated(nullable_keys, tmp_path, caplog):
    from cauce import data
    from cauce.components.extract.executor import run_extract

    result = run_extract("trips.few_null", "id", tmp_path / "dataset", local_database=nullable_keys)
    assert result.metadata["null_key_rows"] == 5 and sum(result.split_rows.values()) == 995
    assert data.read_schema(tmp_path / "dataset")["null_key_rows"] == 5
    assert "key_column 'id' is NULL in 5 of 1000 rows (0.50%): those rows belong to no split and were dropped" in caplog.text
    again = run_extract("trips.few_null", "id", tmp_path / "again", local_database=nullable_keys)
    assert again.split_rows == result.split_rows  # the same rows in the same splits on every run


def test_max_null_key_fraction_0_refuses_any_null_key_and_1_keeps_going(nullable_keys, tmp_path):
    from cauce.components.extract.executor import run_extract

    with pytest.raises(CauceError, match=r"NULL in 5 of 1,000 rows \(0\.5%\), more than max_null_key_fraction=0"):
        run_extract("trips.few_null", "id", tmp_path / "strict", local_database=nullable_keys, max_null_key_fraction=0)
    result = run_extract("trips.half_null", "id", tmp_path / "lax", local_database=nullable_keys, max_null_key_fraction=1)
    assert result.metadata["null_key_rows"] == 500 and sum(result.split_rows.values()) == 500


@pytest.mark.parametrize("fraction", [1.5, -0.1, True, "0.1"])
def test_max_null_key_fraction_out_of_range_is_refused_before_the_query(nullable_keys, tmp_path, fraction):
    from cauce.components.extract.executor import run_extract

    with pytest.raises(CauceError, match=r"max_null_key_fraction must be a fraction in \[0, 1\]"):
        run_extract("trips.few_null", "id", tmp_path / "dataset", local_database=nullable_keys, max_null_key_fraction=fraction)
    assert not (tmp_path / "dataset").exists()


# --------------------------------------------------------------------------- recipe, train, evaluate, monitor
# Each bad input fails with a message naming the step, field, column or metric and what
# was expected, and the step leaves nothing in its output folder (no artifact, no partial).
def nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a failed step left output behind"


RECIPE_ERRORS = [
    ([{"type": "zscore", "columns": ["no_such"]}], r"feature column\(s\) \['no_such'\] not found in split 'eval' .*columns present"),
    ([{"type": "derive", "name": "x", "expression": "fare +* 2"}, {"type": "zscore", "columns": ["x"]}],
     r"recipe step 1 \(derive\) field 'expression': 'fare \+\* 2' is not a valid expression \(invalid syntax at column 7\)"),
    ([{"type": "derive", "name": "x", "expression": "exec(fare)"}, {"type": "zscore", "columns": ["x"]}],
     r"recipe step 1 \(derive\) field 'expression': 'exec\(fare\)' calls 'exec'; the functions are \["),
    ([{"type": "derive", "name": "x", "expression": "fare.__class__"}, {"type": "zscore", "columns": ["x"]}],
     r"'fare\.__class__' uses unsupported syntax 'Attribute'"),
    ([{"type": "cast", "columns": ["fare"], "to": "blob"}, {"type": "zscore", "columns": ["fare"]}],
     r"recipe step 1 \(cast\) field 'to' must be one of \['int', 'float', 'string', 'bool', 'timestamp'\], got 'blob'"),
    ([{"type": "cast", "columns": ["company"], "to": "float", "on_invalid": "error"}, {"type": "zscore", "columns": ["company"]}],
     r"recipe step 1 \(cast\): column 'company' row 0 holds '.*', which is not a valid float \(on_invalid: error\)"),
    ([{"type": "zscore", "columns": ["tipped_well"]}],
     r"recipe step 1 \(zscore\) reads the label column 'tipped_well': serving requests do not carry it"),
    ([{"type": "bucketize", "columns": ["fare"], "buckets": 0}],
     r"recipe step 1 \(bucketize\) field 'buckets' must be at least 2 and at most 1000, got 0"),
    ([{"type": "zscore", "columns": ["fare"], "colour": "red"}],
     r"recipe step 1 \(zscore\) has unknown field 'colour'; allowed fields: \['columns', 'suffix', 'type'\]"),
    ([{"type": "zscore", "columns": ["company"]}],
     r"numeric feature 'company' holds a non-numeric value '.*'; expected numbers \(cast it in the query"),
    ([{"type": "replace_text", "columns": ["company"], "pattern": "(", "replacement": "", "regex": True},
      {"type": "vocabulary", "columns": ["company"]}],
     r"recipe step 1 \(replace_text\) field 'pattern': '\(' is not a valid RE2 regular expression"),
    ([{"type": "drop_columns", "columns": ["fare"]}], r"recipe has no analyzer step: add one of \['zscore', 'min_max'"),
    ([], r"recipe field 'steps' must list at least 1 item"),
]


@pytest.mark.parametrize(("steps", "message"), RECIPE_ERRORS, ids=[
    "unknown-column", "bad-expression", "forbidden-function", "dunder-attribute", "cast-to-blob", "cast-invalid-value",
    "label-as-feature", "zero-buckets", "unknown-field", "text-as-number", "bad-regex", "no-analyzer", "no-steps",
])  # fmt: skip
def test_recipe_errors_name_the_step_and_field_and_write_nothing(trained_model, tmp_path, steps, message):
    from cauce.components.transform.executor import run_transform

    raw = trained_model[0]
    with pytest.raises(CauceError, match=message):
        run_transform(raw, "tipped_well", [], [], str(tmp_path / "transformed"), str(tmp_path / "transform"),
                      recipe={"steps": steps})  # fmt: skip
    nothing_written(tmp_path)


def test_recipe_that_is_not_yaml_is_refused_naming_it(trained_model, tmp_path):
    from cauce.components.transform.executor import run_transform

    with pytest.raises(CauceError, match=r"recipe is not valid YAML/JSON: while parsing a flow node"):
        run_transform(trained_model[0], "tipped_well", [], [], str(tmp_path / "a"), str(tmp_path / "b"), recipe="steps: [[[")
    nothing_written(tmp_path)


TRAIN_ERRORS = [
    ({"hyperparameters": {"model_type": "magic"}},
     r"hyperparameters\.model_type 'magic' is not supported for task 'binary'; expected one of \['hist_gradient_boosting'"),
    ({"hyperparameters": {"model_type": "logistic_regression", "max_iter": -1}},
     r"invalid hyperparameters for 'logistic_regression': The 'max_iter' parameter .* Got -1"),
    ({"hyperparameters": {"model_type": "logistic_regression", "frobs": 1}},
     r"unknown hyperparameter\(s\) \['frobs'\] for model_type 'logistic_regression'; valid: \['C'"),
    ({"framework": "jax"}, r"framework 'jax' is not supported; expected one of \['sklearn', 'keras', 'torch'\]"),
    ({"task": "ranking"}, r"task 'ranking' is not supported; expected one of \['binary', 'multiclass', 'regression'\]"),
    ({"train_split": "nope"}, r"split 'nope' not found in dataset .*transformed; available splits: \['eval', 'train'\]"),
]


@pytest.mark.parametrize(("arguments", "message"), TRAIN_ERRORS, ids=[
    "unknown-model-type", "negative-max-iter", "unknown-hyperparameter", "unknown-framework", "unknown-task", "missing-split",
])  # fmt: skip
def test_train_errors_name_the_parameter_and_leave_no_model(trained_model, tmp_path, arguments, message):
    from cauce.components.train.executor import run_train

    _, transformed, transform, _ = trained_model
    with pytest.raises(CauceError, match=message):
        run_train(transformed, transform, str(tmp_path / "model"), **arguments)
    nothing_written(tmp_path)


def test_train_on_a_dataset_that_is_not_there_names_it(trained_model, tmp_path):
    from cauce.components.train.executor import run_train

    with pytest.raises(CauceError, match=rf"dataset directory {tmp_path}/nope does not exist"):
        run_train(str(tmp_path / "nope"), trained_model[2], str(tmp_path / "model"), {})
    nothing_written(tmp_path)


EVALUATE_ERRORS = [
    ({"thresholds": {"aucc": 0.5}},
     r"thresholds: unknown metric 'aucc' for a binary model; valid metric names: \['auc', 'auc_precision_recall'"),
    ({"thresholds": {"auc": "high"}}, r"thresholds\['auc'\] lower_bound must be a number, got 'high'"),
    ({"slice_features": ["nope"]}, r"slice feature\(s\) \['nope'\] not found in split 'eval'; columns present"),
    ({"split": "nope"}, r"split 'nope' not found in dataset .*; available splits: \['eval', 'train'\]"),
    ({"champion_model_dir": "/nonexistent/champion"},
     r"/nonexistent/champion/cauce_model\.json not found: /nonexistent/champion is not a cauce model directory"),
    ({"champion": True, "change_thresholds": {"zz": 0.1}}, r"change_thresholds: unknown metric 'zz'; valid metric names"),
]


@pytest.mark.parametrize(("arguments", "message"), EVALUATE_ERRORS, ids=[
    "unknown-metric", "threshold-not-a-number", "unknown-slice", "missing-split", "champion-not-a-model", "unknown-margin",
])  # fmt: skip
def test_evaluate_errors_name_the_metric_or_column_and_write_nothing(trained_model, tmp_path, arguments, message):
    from cauce.components.evaluate.executor import run_evaluate

    raw, _, _, model_dir = trained_model
    if arguments.pop("champion", False):
        arguments["champion_model_dir"] = model_dir
    with pytest.raises(CauceError, match=message):
        run_evaluate(model_dir, raw, tmp_path / "evaluation", **arguments)
    nothing_written(tmp_path)


def test_evaluate_a_folder_that_is_not_a_model(trained_model, tmp_path):
    from cauce.components.evaluate.executor import run_evaluate

    raw = trained_model[0]
    with pytest.raises(CauceError, match=rf"{raw}/cauce_model\.json not found: {raw} is not a cauce model directory"):
        run_evaluate(raw, raw, tmp_path / "evaluation")
    nothing_written(tmp_path)


@pytest.fixture
def request_logs(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    return logs


def monitor_in(trained_model, logs: Path, out: Path, **arguments):
    from cauce.components.monitor.executor import run_monitor
    from cauce.demo import DEMO_CATEGORICAL, DEMO_NUMERIC

    features = {"numeric_features": DEMO_NUMERIC, "categorical_features": DEMO_CATEGORICAL}
    features.update({k: arguments.pop(k) for k in list(arguments) if k in features})
    return run_monitor(arguments.pop("baseline", trained_model[0]), arguments.pop("split", "train"), str(logs), str(out),
                       **features, **arguments)  # fmt: skip


MONITOR_ERRORS = [
    ('garbage\n', {}, r"requests-1\.jsonl:1 is not valid JSON \(Expecting value"),
    ('{"not": "a request"}\n', {}, r"requests-1\.jsonl:1 is not a request record: it has no request_payload \(keys: \['not'\]\)"),
    ('[1, 2]\n', {}, r"requests-1\.jsonl:1 is not a request record \(a JSON object\)"),
    ('{"request_payload": ["[1, 2]"]}\n', {}, r"request_payload at .*requests-1\.jsonl:1 holds list instances; the monitor needs named features"),
    ("", {"thresholds": {"fare": -1}}, r"thresholds\['fare'\] must be a number >= 0, got -1"),
    ("", {"thresholds": {"nope": 0.1}}, r"thresholds name feature\(s\) \['nope'\] that are not monitored; monitored: \["),
    ("", {"window_start": "yesterday"}, r"window_start must be an ISO-8601 time such as 2024-05-01T00:00:00Z, got 'yesterday'"),
    ("", {"window_start": "2024-05-02T00:00:00Z", "window_end": "2024-05-01T00:00:00Z"},
     r"window_start '2024-05-02T00:00:00Z' is not before window_end '2024-05-01T00:00:00Z'"),
    ("", {"numeric_features": ["nope"], "categorical_features": []}, r"column\(s\) \['nope'\] not found in split 'train' of "),
    ("", {"numeric_features": [], "categorical_features": []}, r"numeric_features and categorical_features are both empty: nothing to monitor"),
    ("", {"split": "nope"}, r"split 'nope' not found in dataset .*; available splits: \['eval', 'train'\]"),
    ("", {"baseline": "/nonexistent/baseline"}, r"dataset directory /nonexistent/baseline does not exist"),
    ("", {"alert_webhook": "ftp://x"}, r"alert_webhook 'ftp://x' must be an http:// or https:// URL"),
]


@pytest.mark.parametrize(("log", "arguments", "message"), MONITOR_ERRORS, ids=[
    "garbage-line", "record-without-payload", "record-not-an-object", "instances-not-objects", "negative-threshold",
    "threshold-of-unmonitored-feature", "window-not-a-time", "window-reversed", "unknown-feature", "no-features",
    "missing-split", "missing-baseline", "webhook-not-http",
])  # fmt: skip
def test_monitor_errors_name_the_file_line_or_parameter_and_write_nothing(trained_model, request_logs, tmp_path, log, arguments, message):
    """Before: a log line in another shape was skipped (reported as "no requests"), and a
    reversed window was a window with no requests."""
    if log:
        (request_logs / "requests-1.jsonl").write_text(log)
    with pytest.raises(CauceError, match=message):
        monitor_in(trained_model, request_logs, tmp_path / "report", **arguments)
    assert not (tmp_path / "report").exists() and not list(tmp_path.glob(".report.partial-*"))


def test_monitor_a_line_still_being_written_is_not_an_error(trained_model, request_logs, bundles, tmp_path):
    """The serving process appends whole lines; a last line without its newline is one
    being written, left for the next run, and says nothing is broken."""
    instance = json.dumps(bundles["instances"][0])
    record = {"endpoint": "e", "deployed_model_id": "1", "logging_time": "2024-05-01T00:00:00Z", "request_id": 1,
              "request_payload": [instance], "response_payload": ["{}"]}  # fmt: skip
    (request_logs / "requests-1.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(record)[:40])
    result = monitor_in(trained_model, request_logs, tmp_path / "report")
    assert result["num_features"] == 8 and (tmp_path / "report").is_dir()


# --------------------------------------------------------------------------- CLI
def cauce(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cauce.cli", *arguments], capture_output=True, text=True, timeout=timeout)


def one_clear_line(result: subprocess.CompletedProcess, pattern: str) -> None:
    """Exit 1, the cause in one or two lines, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output and "see the log" not in output, output
    assert __import__("re").search(pattern, output), output


def test_cli_param_of_the_wrong_json_type_names_the_parameter():
    one_clear_line(cauce("run", "training", "--param", "thresholds=[1,2]"), r"parameter 'thresholds' expects a JSON object, got '\[1,2\]'")


def test_cli_param_that_is_not_json_names_the_parameter():
    one_clear_line(cauce("run", "training", "--param", "numeric_features=fare"), r"parameter 'numeric_features' expects List, got 'fare'")


@pytest.mark.parametrize("content", [b"\x00\x01\x02\xff\xfe binary", b"{{{ not: [yaml", b"just a string\n"], ids=["binary", "garbage", "scalar"])
def test_cli_validate_on_a_file_that_is_not_a_spec(tmp_path, content):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    one_clear_line(cauce("validate", str(path)), r"is not a pipeline\s+spec")


def test_cli_serve_with_a_model_dir_that_is_not_a_model(tmp_path):
    one_clear_line(cauce("serve", "--model-dir", str(tmp_path), "--port", str(free_ports(1)[0])), r"model .* did not load")


def test_cli_serve_on_a_taken_port(bundles):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        one_clear_line(cauce("serve", "--model-dir", bundles["good"], "--port", str(port)), rf"cannot listen on 127.0.0.1:{port}: Address already in use")


def test_cli_stop_with_a_path_for_an_endpoint():
    one_clear_line(cauce("stop", "../../etc"), r"endpoint_name '../../etc' must be non-empty letters, digits, '-' or '_'")


def test_cli_verbose_shows_the_traceback_and_the_default_does_not():
    quiet = cauce("stop", "../../etc")
    one_clear_line(quiet, r"endpoint_name '../../etc' must be non-empty")
    assert len((quiet.stdout + quiet.stderr).strip().splitlines()) <= 2
    for arguments in (("--verbose", "stop", "../../etc"), ("-v", "stop", "../../etc")):
        loud = cauce(*arguments)
        assert loud.returncode == 1
        assert "Traceback (most recent call last):" in loud.stderr and "raise CauceError" in loud.stderr
        assert loud.stderr.rstrip().endswith("must be non-empty letters, digits, '-' or '_'")


def test_cli_an_unforeseen_exception_is_one_line_and_its_traceback_with_verbose(tmp_path):
    """A bug, not a user error: still one line (naming the exception), not Typer's
    screen of framed source; CAUCE_VERBOSE=1 or --verbose shows where it came from."""
    script = tmp_path / "boom.py"
    script.write_text("import sys\nfrom cauce import cli\n\n@cli.app.command('boom')\ndef boom():\n"
                      "    raise KeyError('stage')\n\ncli.app(sys.argv[1:])\n")  # fmt: skip
    quiet = subprocess.run([sys.executable, str(script), "boom"], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "╭" not in quiet.stderr
    assert quiet.stderr.splitlines()[0] == "error: KeyError: 'stage'"
    loud = subprocess.run([sys.executable, str(script), "boom"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CAUCE_VERBOSE": "1"})  # fmt: skip
    assert loud.returncode == 1 and "Traceback (most recent call last):" in loud.stderr and "in boom" in loud.stderr


def test_a_failed_run_surfaces_the_exception_when_no_step_logged_one(tmp_path):
    from cauce.local import _last_error

    log = tmp_path / "run.log"
    log.write_text("")
    assert _last_error(log, TypeError("thresholds: expected a dict")) == "TypeError: thresholds: expected a dict"
    log.write_text("step extract\ncauce.artifacts.CauceError: source names no table\n")
    assert _last_error(log, TypeError("x")) == "source names no table"
