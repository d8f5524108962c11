"""The Cloud Build configs: their shape (images, args, order, substitutions, no secrets),
and their steps run here for real (tests/fixtures/cloudbuild.py): the PR checks'
compile and catalogue steps, and the release flow against local stand-ins: a
``docker`` that records its calls, an Artifact Registry KFP repository, and Vertex AI.
"""

import json
import os
import re

import pytest
import yaml

from cauce import __version__, images
from tests.fixtures import cloudbuild
from tests.fixtures.kfp_registry import kfp_registry  # noqa: F401
from tests.fixtures.vertex_server import vertex_server  # noqa: F401

PYTHON_IMAGE = re.compile(r"python:3\.11\.\d+-bookworm")
SECRET_LIKE = ("password", "secret", "token", "key.json", "private_key", "credentials.json")
CONFIGS = ("cloudbuild.yaml", "cloudbuild-release.yaml")


def _code(name: str) -> str:
    """The config without its comments."""
    text = (cloudbuild.ROOT / name).read_text()
    return "\n".join(line.split(" # ")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_substitution_is_defined_and_nothing_secret_is_inline(name):
    config = cloudbuild.load(name)
    used = cloudbuild.references(_code(name))
    user = {n for n in used if n.startswith("_")}
    assert user <= set(config["substitutions"]), user - set(config["substitutions"])
    assert used - user <= cloudbuild.BUILT_IN
    for secret_like in SECRET_LIKE:
        assert secret_like not in _code(name).lower()
    assert "secretEnv" not in config and "availableSecrets" not in config
    # A named service account, and logs where a user-managed account may write them.
    assert config["serviceAccount"] == "projects/${PROJECT_ID}/serviceAccounts/${_BUILD_SERVICE_ACCOUNT}"
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", "SHORT_SHA": "abc1234"})
    assert values["_BUILD_SERVICE_ACCOUNT"].endswith("@acme-ml.iam.gserviceaccount.com")
    ids = [step["id"] for step in config["steps"]]
    assert len(ids) == len(set(ids))
    for step in config["steps"]:
        assert set(step.get("waitFor", [])) <= set(ids[: ids.index(step["id"])])  # only on earlier steps


def test_pr_checks_lint_test_compile_and_check_the_catalogue():
    config = cloudbuild.load("cloudbuild.yaml")
    steps = {step["id"]: step for step in config["steps"]}
    assert list(steps) == ["setup", "lint", "unit-tests", "compile", "catalogue"]
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml"})
    for step in config["steps"]:
        assert PYTHON_IMAGE.fullmatch(cloudbuild.substitute(step["name"], values))
        assert step.get("waitFor", ["setup"]) == ["setup"] or step["id"] == "setup"
    assert (steps["setup"]["entrypoint"], steps["setup"]["args"]) == ("make", ["setup"])
    assert (steps["lint"]["entrypoint"], steps["lint"]["args"]) == ("make", ["lint"])
    assert steps["unit-tests"]["entrypoint"] == ".venv/bin/pytest"
    assert cloudbuild.command(config, "catalogue", values) == [".venv/bin/cauce", "export", "--check"]
    script = steps["compile"]["args"][-1]
    for needed in ("cauce compile", "cauce submit training", "--dry-run"):
        assert needed in script
    assert "upload" not in yaml.safe_dump(config) and "docker" not in yaml.safe_dump(config)


def test_pr_compile_and_catalogue_steps_run(tmp_path):
    config = cloudbuild.load("cloudbuild.yaml")
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml"}, {"_OUT_DIR": str(tmp_path)})
    result = cloudbuild.run_step(config, "compile", values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "pipelines").iterdir()) == ["monitoring.yaml", "training.yaml"]
    assert result.stdout.count("compiled") == 2 and "dry run" in result.stdout
    body = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    assert body["runtimeConfig"]["gcsOutputDirectory"] == "gs://acme-ml-cauce/pipeline-root"
    result = cloudbuild.run_step(config, "catalogue", values)
    assert result.returncode == 0 and "up to date" in result.stdout, result.stdout + result.stderr


def test_release_steps_order_images_and_args():
    config = cloudbuild.load("cloudbuild-release.yaml")
    ids = [step["id"] for step in config["steps"]]
    image_steps = [f"image-{family}" for family in images.FAMILIES]
    assert ids == ["setup", "check-version", "test", *image_steps, "compile", "upload", "submit-training"]
    steps = {step["id"]: step for step in config["steps"]}
    values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", "SHORT_SHA": "abc1234", "TAG_NAME": "v1.2.3"})
    assert (steps["test"]["entrypoint"], steps["test"]["args"]) == ("make", ["test"])  # what CI runs
    for family in images.FAMILIES:
        step = steps[f"image-{family}"]
        assert step["name"] == "gcr.io/cloud-builders/docker" and step["waitFor"] == ["test"]
        assert cloudbuild.command(config, step["id"], values) == [
            "bash", "containers/build-image.sh", family,
            "us-central1-docker.pkg.dev/acme-ml/cauce", "build/release/images", "abc1234", "v1.2.3",
        ]  # fmt: skip
        assert (cloudbuild.ROOT / "containers" / f"{family}.Dockerfile").exists()
    assert steps["compile"]["waitFor"] == image_steps  # every digest exists before compiling
    compile_script = steps["compile"]["args"][-1]
    assert f"for family in {' '.join(images.FAMILIES)}; do source" in compile_script
    assert "cauce compile --require-digests" in compile_script and "cauce export --require-digests" in compile_script
    assert "cauce upload" in steps["upload"]["args"][-1] and '--host "${_KFP_HOST}"' in steps["upload"]["args"][-1]
    assert values["_KFP_HOST"] == "https://us-central1-kfp.pkg.dev/acme-ml/cauce-pipelines"
    for step_id in ("setup", "check-version", "test", "compile", "upload", "submit-training"):
        assert PYTHON_IMAGE.fullmatch(cloudbuild.substitute(steps[step_id]["name"], values))
    paths = config["artifacts"]["objects"]["paths"]
    assert "${_RELEASE_DIR}/pipelines/*.yaml" in paths and "${_RELEASE_DIR}/components/*/*.yaml" in paths


@pytest.fixture
def release(tmp_path, kfp_registry, vertex_server):  # noqa: F811
    """A release build's environment: the docker stand-in on PATH, a HOME whose KFP
    registry context points at the local registry, Cloud Storage calls to the local
    Vertex server, and the release folder in tmp_path."""
    home = tmp_path / "home"
    (home / ".config/kfp").mkdir(parents=True)
    (home / ".config/kfp/registry_context.json").write_text(json.dumps(kfp_registry.context()))
    cloudbuild.fake_docker(tmp_path / "bin")
    env = {
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.log"),
        "STORAGE_EMULATOR_HOST": vertex_server.endpoint,
    }
    overrides = {
        "_RELEASE_DIR": str(tmp_path / "release"),
        "_KFP_HOST": kfp_registry.host,
        "_VERTEX_API_ENDPOINT": vertex_server.endpoint,
    }
    config = cloudbuild.load("cloudbuild-release.yaml")

    def run(step_id, built_in, more_overrides=None, more_env=None):
        values = cloudbuild.resolve(config, {"PROJECT_ID": "acme-ml", **built_in}, {**overrides, **(more_overrides or {})})
        return cloudbuild.run_step(config, step_id, values, env={**env, **(more_env or {})})

    return run, tmp_path


def test_release_flow_runs_against_local_registry_and_vertex(release, kfp_registry, vertex_server):  # noqa: F811
    run, tmp_path = release
    tag_build = {"SHORT_SHA": "abc1234", "TAG_NAME": f"v{__version__}"}

    result = run("check-version", tag_build)
    assert result.returncode == 0 and f"cauce {__version__}" in result.stdout, result.stderr
    for family in images.FAMILIES:
        result = run(f"image-{family}", tag_build)
        assert result.returncode == 0, result.stdout + result.stderr
    docker_calls = (tmp_path / "docker.log").read_text().splitlines()
    assert sum(call.startswith("build ") for call in docker_calls) == len(images.FAMILIES)
    assert f"push us-central1-docker.pkg.dev/acme-ml/cauce/cauce-base:{__version__}" in docker_calls
    assert "push us-central1-docker.pkg.dev/acme-ml/cauce/cauce-base:abc1234" in docker_calls

    result = run("compile", tag_build)
    assert result.returncode == 0, result.stdout + result.stderr
    training = (tmp_path / "release/pipelines/training.yaml").read_text()
    executors = yaml.safe_load(training)["deploymentSpec"]["executors"].values()
    digests = {executor["container"]["image"] for executor in executors}
    assert digests and all("/cauce-" in d and "@sha256:" in d for d in digests)
    exported = (tmp_path / "release/components/extract/component.yaml").read_text()
    assert f"# cauce-version: {__version__}" in exported and "cauce-base@sha256:" in exported

    result = run("upload", tag_build)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(kfp_registry.tags["cauce-training"]) == {__version__, "latest", "abc1234"}
    assert kfp_registry.content("cauce-training", "latest").decode() == training
    # A build of main publishes the same way under the branch's name: no version, no latest.
    result = run("upload", {"SHORT_SHA": "def5678", "BRANCH_NAME": "main"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(kfp_registry.tags["cauce-training"]) == {__version__, "latest", "abc1234", "main", "def5678"}

    result = run("submit-training", tag_build)  # off unless asked for
    assert result.returncode == 0 and "not submitting" in result.stdout and not vertex_server.pipeline_jobs
    query = "SELECT * FROM `acme-ml.trips.taxi` WHERE company = \"Flash Cab\""
    result = run("submit-training", tag_build, {"_SUBMIT_TRAINING": "true", "_TRAINING_SOURCE": query})
    assert result.returncode == 0, result.stdout + result.stderr
    [job] = vertex_server.pipeline_jobs.values()
    assert job["serviceAccount"] == "cauce-pipelines@acme-ml.iam.gserviceaccount.com"
    assert job["runtimeConfig"]["parameterValues"]["source"] == query
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://acme-ml-cauce/pipeline-root"
    submitted_images = {e["container"]["image"] for e in job["pipelineSpec"]["deploymentSpec"]["executors"].values()}
    assert submitted_images == digests  # the very spec that was uploaded

    result = run("check-version", {"SHORT_SHA": "def5678", "TAG_NAME": "v9.9.9"})
    assert result.returncode == 1 and f"does not match cauce's version {__version__}" in result.stderr


def test_release_compile_needs_every_pushed_digest(release):
    run, tmp_path = release
    result = run("compile", {"SHORT_SHA": "abc1234"})  # no image step ran: no digests
    assert result.returncode != 0 and "images/base.env" in result.stderr
