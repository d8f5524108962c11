"""The release build (cloudbuild-release.yaml) rehearsed on this machine with the real
Docker engine and a real image registry (Docker's distribution, on loopback): each
image step builds its family with the production Dockerfile, checks it by running it,
pushes it and records the pushed digest; the compile step names every image by that
digest and validates the specs strictly; the templates are uploaded to a KFP registry
stand-in and the training run submitted to the Vertex stand-in; and the compiled
training spec then runs with kfp.local's DockerRunner on the images pulled by digest,
ending with the model served by the serving image in a container.

Only what no registry here can serve differs, by build arguments (see
containers/local/build-images.sh): the Python base image, Beam's SDK image and
PyTorch's CPU index are local stand-ins.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from cauce import __version__, images, spec
from tests.fixtures import cloudbuild
from tests.fixtures.containers import built_images, docker_engine, local_registry  # noqa: F401
from tests.fixtures.kfp_registry import kfp_registry  # noqa: F401
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 1500  # a cold build of the tf image on two cores


@pytest.fixture(scope="module")
def local_build_env(docker_engine):  # noqa: F811
    """The environment a build step gets here: the stand-ins' build arguments, with
    torch's CPU wheel served from a loopback index for as long as the module runs."""
    subprocess.run([str(ROOT / "containers/local/standins.sh")], check=True, capture_output=True, text=True)
    sdk_standin = subprocess.run(
        [str(ROOT / "containers/local/standins.sh"), "--beam-sdk-image"], check=True, capture_output=True, text=True
    ).stdout.strip()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "build/local-index"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {
            "DOCKER_BUILDKIT": "0",
            "DOCKER_BUILD_ARGS": f"--network host --build-arg TORCH_INDEX_URL=http://127.0.0.1:{server.server_port}/ "
            f"--build-arg BEAM_SDK_IMAGE={sdk_standin}",
        }
    finally:
        server.shutdown()


@pytest.fixture
def release(tmp_path, kfp_registry, vertex_server, local_registry, local_build_env):  # noqa: F811
    home = tmp_path / "home"
    (home / ".config/kfp").mkdir(parents=True)
    (home / ".config/kfp/registry_context.json").write_text(json.dumps(kfp_registry.context()))
    env = {**local_build_env, "HOME": str(home), "STORAGE_EMULATOR_HOST": vertex_server.endpoint}
    overrides = {
        "_RELEASE_DIR": str(tmp_path / "release"),
        "_IMAGE_REGISTRY": f"{local_registry}/cauce",
        "_KFP_HOST": kfp_registry.host,
        "_VERTEX_API_ENDPOINT": vertex_server.endpoint,
    }
    config = cloudbuild.load("cloudbuild-release.yaml")

    def run(step_id, built_in, more_overrides=None):
        values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", **built_in}, {**overrides, **(more_overrides or {})})
        return cloudbuild.run_step(config, step_id, values, env=env, timeout=STEP_TIMEOUT)

    return run, tmp_path


def _registry_digest(registry: str, repository: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{registry}/v2/{repository}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        method="HEAD",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def test_release_rehearsal_pushes_by_digest_and_the_specs_run_on_those_images(
    release, local_registry, kfp_registry, vertex_server, docker_engine, built_images, free_port  # noqa: F811
):
    run, tmp_path = release
    tag_build = {"SHORT_SHA": "abc1234", "TAG_NAME": f"v{__version__}"}
    result = run("check-version", tag_build)
    assert result.returncode == 0 and f"cauce {__version__}" in result.stdout, result.stderr

    # 1. build, check, push, record: one step per family, as Cloud Build runs them.
    pushed = {}
    for family in images.FAMILIES:
        result = run(f"image-{family}", tag_build)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert f"cauce-{family}: " in result.stdout and "smoke check passed" in result.stdout
        recorded = (tmp_path / f"release/images/{family}.env").read_text().strip()
        reference = recorded.removeprefix(f"export CAUCE_IMAGE_{family.upper()}=")
        assert reference.startswith(f"{local_registry}/cauce/cauce-{family}@sha256:")
        # The recorded digest is what the registry serves under both tags.
        for tag in ("abc1234", __version__):
            assert _registry_digest(local_registry, f"cauce/cauce-{family}", tag) == reference.split("@", 1)[1]
        pushed[family] = reference

    # 2. compile and export against the digests; specs validated strictly by `cauce compile`.
    result = run("compile", tag_build)
    assert result.returncode == 0, result.stdout + result.stderr
    training_spec = tmp_path / "release/pipelines/training.yaml"
    step_images = set(spec.validate_spec(training_spec)["images"])
    assert step_images and step_images <= set(pushed.values())
    exported = (tmp_path / "release/components/extract/component.yaml").read_text()
    assert pushed["base"] in exported and f"# cauce-version: {__version__}" in exported

    # 3. templates to the KFP registry, the training run to Vertex: the very spec compiled.
    result = run("upload", tag_build)
    assert result.returncode == 0, result.stdout + result.stderr
    assert kfp_registry.content("cauce-training", "latest").decode() == training_spec.read_text()
    result = run("submit-training", tag_build, {"_SUBMIT_TRAINING": "true", "_TRAINING_SOURCE": "acme-ml.trips.taxi"})
    assert result.returncode == 0, result.stdout + result.stderr
    [job] = vertex_server.pipeline_jobs.values()
    submitted = {e["container"]["image"] for e in job["pipelineSpec"]["deploymentSpec"]["executors"].values()}
    assert submitted == step_images

    # 4. the same spec runs locally on those digests, pulled from the registry.
    for family in pushed:  # drop the pushed names: the run must pull by digest
        for tag in (f"{local_registry}/cauce/cauce-{family}:abc1234", f"{local_registry}/cauce/cauce-{family}:{__version__}"):
            docker_engine.images.remove(tag)
    env = {f"CAUCE_IMAGE_{family.upper()}": reference for family, reference in pushed.items()}
    result = subprocess.run(
        [str(ROOT / ".venv/bin/cauce"), "run", "training", "--runner", "docker", "--rows", "5000",
         "--param", f"port={free_port}", "--param", "endpoint_name=rehearsal"],
        env={**os.environ, **env, "CAUCE_HOME": str(tmp_path / "cauce-home")},
        capture_output=True, text=True, timeout=STEP_TIMEOUT,
    )  # fmt: skip
    try:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        state = json.loads((tmp_path / "cauce-home/serving/rehearsal/state.json").read_text())
        assert state["runtime"] == "container" and state["image"] == pushed["serving"]
        logs = "\n".join(p.read_text() for p in (tmp_path / "cauce-home/runs").glob("*.log"))
        assert f"Found image '{pushed['base']}'" in logs and f"Found image '{pushed['tf']}'" in logs
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/health", timeout=5) as response:
            assert response.status == 200
    finally:
        subprocess.run(
            [str(ROOT / ".venv/bin/cauce"), "stop", "rehearsal"],
            env={**os.environ, "CAUCE_HOME": str(tmp_path / "cauce-home")}, capture_output=True,
        )  # fmt: skip


def test_a_refused_push_leaves_no_digest_and_nothing_compiles(release, built_images, free_port):  # noqa: F811
    run, tmp_path = release
    # Nothing listens on free_port: the push is refused after the image built and passed.
    refusing = {"_IMAGE_REGISTRY": f"127.0.0.1:{free_port}/cauce"}
    result = run("image-base", {"SHORT_SHA": "abc1234"}, refusing)
    assert result.returncode != 0
    assert "smoke check passed" in result.stdout  # built and checked, then the push failed
    assert not (tmp_path / "release/images/base.env").exists()
    result = run("compile", {"SHORT_SHA": "abc1234"}, refusing)
    assert result.returncode != 0 and "images/base.env" in result.stderr
    assert not list((tmp_path / "release").glob("pipelines/*.yaml"))


def test_release_config_names_the_pushed_registry_through_one_substitution():
    config = cloudbuild.load("cloudbuild-release.yaml")
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", "SHORT_SHA": "abc1234"})
    assert values["_IMAGE_REGISTRY"] == "us-central1-docker.pkg.dev/acme-ml/cauce"
    for family in images.FAMILIES:
        assert cloudbuild.command(config, f"image-{family}", values)[3] == values["_IMAGE_REGISTRY"]
    assert yaml.safe_load((ROOT / "cloudbuild-release.yaml").read_text())["substitutions"]["_IMAGE_REGISTRY"]
