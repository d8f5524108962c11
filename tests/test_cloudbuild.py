"""The Cloud Build configs: their shape (images, args, order, substitutions, no secrets),
and their steps run here for real (tests/fixtures/cloudbuild.py): the PR checks'
compile and catalogue steps. The release flow is rehearsed with the real Docker engine
and a local registry in tests/test_release_rehearsal.py.
"""

import json
import re

import pytest
import yaml

from cauce import images
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
