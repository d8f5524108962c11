"""The images, built by `make images` on the local Docker engine, run for real: each
family's smoke import as its own non-root user within its size budget; a broken image
fails its smoke check naming the module; the serving image under Vertex's
custom-container contract (model from a gs:// AIP_STORAGE_URI on the Cloud Storage
emulator); and the whole lifecycle with `cauce demo --runner docker`, every step in
its component's image and the model served by the serving image in a container."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cauce import families, images
from cauce.components.deploy.executor import post_json, smoke_instances_from
from tests.fixtures.containers import built_images, docker_engine  # noqa: F401
from tests.fixtures.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _run(engine, image: str, *command: str, user: str | None = None, **kwargs) -> tuple[int, str]:
    container = engine.containers.run(
        image, command=list(command[1:]), entrypoint=command[0], detach=True, network_mode="none", user=user, **kwargs
    )
    try:
        code = container.wait(timeout=300)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("family", images.FAMILIES)
def test_every_image_runs_as_non_root_within_budget_and_imports_what_its_steps_run(family, docker_engine, built_images):  # noqa: F811
    image = built_images[family]
    code, uid = _run(docker_engine, image, "id", "-u")
    assert code == 0 and uid.strip() != "0" and int(uid) == 10001
    code, output = _run(docker_engine, image, "python", "-m", "cauce.families", "smoke", family)
    assert code == 0, output
    assert f"{family} image imports:" in output
    size_mib = docker_engine.images.get(image).attrs["Size"] / 1024**2
    assert size_mib <= families.budgets()[family], f"cauce-{family} is {size_mib:.0f} MiB"


def test_an_image_missing_a_module_fails_its_smoke_check_naming_family_and_module(docker_engine, built_images):  # noqa: F811
    # As root, remove one library the base family's steps import, then run the check the
    # build runs: it must name the family and the module, not fail later at run time.
    code, output = _run(
        docker_engine, built_images["base"], "sh", "-c",
        "rm -rf /opt/cauce/lib/python3.11/site-packages/duckdb && python -m cauce.families smoke base",
        user="0",
    )  # fmt: skip
    assert code == 1
    assert "the base image cannot import" in output and "duckdb" in output and "ModuleNotFoundError" in output


def test_the_serving_image_honours_vertex_custom_container_contract(
    docker_engine, built_images, trained_model, gcs_bucket, free_port  # noqa: F811
):
    raw_dataset, _, _, model_dir = trained_model
    model_uri = gcs_bucket.upload_dir(model_dir, "models/tips/1")
    # Vertex sets these; the routes are the deployment's own, not our defaults.
    environment = {
        "AIP_HTTP_PORT": str(free_port),
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_STORAGE_URI": model_uri,
        "AIP_DEPLOYED_MODEL_ID": "2",
        "STORAGE_EMULATOR_HOST": gcs_bucket.emulator.host,
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "CAUCE_SERVE_HOST": "127.0.0.1",  # host networking here: stay on loopback
    }
    container = docker_engine.containers.run(
        built_images["serving"], detach=True, network_mode="host", environment=environment
    )
    try:
        base = f"http://127.0.0.1:{free_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + environment["AIP_HEALTH_ROUTE"], timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                container.reload()
                assert container.status == "running", container.logs().decode()[-2000:]
                assert time.monotonic() < deadline, container.logs().decode()[-2000:]
                time.sleep(0.2)
        instances = smoke_instances_from(raw_dataset, "eval", model_dir, 3)
        status, body = post_json(base + environment["AIP_PREDICT_ROUTE"], {"instances": instances})
        assert status == 200, body
        from cauce import model as model_bundle

        expected = model_bundle.load(model_dir, serving=True).predict_instances(instances)  # model.onnx, as the image serves it
        assert [p["label"] for p in body["predictions"]] == [p["label"] for p in expected]
        assert [p["score"] for p in body["predictions"]] == pytest.approx([p["score"] for p in expected], abs=1e-12)
        assert body["deployed_model_id"] == "2"
        # The image's own health check (Docker's HEALTHCHECK) reads the same variables.
        health_check = container.attrs["Config"]["Healthcheck"]["Test"]
        assert health_check[0] == "CMD"
        code, output = container.exec_run(health_check[1:])
        assert code == 0, output
    finally:
        container.remove(force=True)


def test_runner_docker_without_an_engine_says_what_is_missing(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock", CAUCE_HOME=str(tmp_path / "home"))
    result = subprocess.run(
        [sys.executable, "-m", "cauce.cli", "run", "monitoring", "--runner", "docker",
         "--param", "baseline_uri=/nowhere", "--param", "request_log_dir=/nowhere"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    message = " ".join((result.stdout + result.stderr).split())
    assert "no Docker engine answers" in message and "make engine" in message
    assert "Traceback" not in message


def test_demo_runs_every_step_in_its_image_and_serves_the_model_from_a_container(
    docker_engine, built_images, tmp_path, free_port  # noqa: F811
):
    home = tmp_path / "home"
    env = dict(os.environ, CAUCE_HOME=str(home))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cauce.cli", "demo", "--runner", "docker", "--rows", "20000", "--port", str(free_port),
         "--requests", "60"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    print(f"cauce demo --runner docker --rows 20000: {time.monotonic() - started:.0f} s")
    try:
        # Every step ran in its component's image (kfp.local's DockerRunner logs each).
        logs = "\n".join(p.read_text() for p in (home / "runs").glob("*.log"))
        for family in ("base", "beam", "tf"):
            assert f"Found image '{built_images[family]}'" in logs
        # The endpoint is the serving image in a container, answering on the host port.
        state = json.loads((home / "serving" / "taxi-tips" / "state.json").read_text())
        assert state["runtime"] == "container" and state["image"] == built_images["serving"]
        container = docker_engine.containers.get(state["container_id"])
        assert container.status == "running" and container.image.tags == [built_images["serving"]]
        [example] = (home / "runs").glob("*/example-request.json")
        status, body = post_json(f"http://127.0.0.1:{free_port}/predict", json.loads(example.read_text()))
        assert status == 200 and len(body["predictions"]) == 2
        # Monitoring read the request log that container wrote.
        assert "monitor:" in output and "sent 60 requests" in output
        logged = [json.loads(line) for path in Path(state["request_log_dir"]).rglob("*.jsonl") for line in path.open()]
        assert len(logged) >= 60
    finally:
        stop = subprocess.run([sys.executable, "-m", "cauce.cli", "stop", "taxi-tips"], env=env, capture_output=True, text=True)
    assert "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert not [c for c in docker_engine.containers.list(all=True) if c.id == state["container_id"]]
