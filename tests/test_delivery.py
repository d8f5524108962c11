"""Delivery files that cannot run here (no Docker engine, no Cloud Build):
keep them correct by construction and lint them."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cauce import images

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(__file__).resolve().parents[1] / ".venv/bin/hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_from_a_slim_pinned_base(dockerfile):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim", text)
    assert "--constraint requirements/lock.txt" in text  # versions pinned by the lock file
    for secret_like in ("PASSWORD", "SECRET", "TOKEN", "CREDENTIALS"):
        assert secret_like not in text.upper()


def test_serving_image_honours_the_vertex_contract():
    text = (ROOT / "containers/serving.Dockerfile").read_text()
    for variable in ("AIP_HTTP_PORT=8080", "AIP_HEALTH_ROUTE=/health", "AIP_PREDICT_ROUTE=/predict"):
        assert variable in text
    assert "HEALTHCHECK" in text and 'ENTRYPOINT ["python", "-m", "cauce.serving"]' in text


def test_cloudbuild_steps_order_images_and_substitutions():
    config = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = config["steps"]
    assert [step["id"] for step in steps] == ["test", "images", "compile"]
    assert steps[0]["args"] == ["test"] and steps[0]["entrypoint"] == "make"  # the same command CI runs
    assert steps[1]["name"] == "gcr.io/cloud-builders/docker"
    build_script = steps[1]["args"][-1]
    built = set(re.findall(r"^\s*build (\w+) ", build_script, re.M))
    assert built == set(images.FAMILIES) - {"torch"}  # torch arrives with the PyTorch trainer
    for dockerfile in re.findall(r"build \w+ (\S+)", build_script):
        assert (ROOT / "containers" / dockerfile).exists()
    assert "CAUCE_IMAGE_$${family^^}" in build_script  # digests feed the compile step
    assert "source /workspace/image-digests.env" in steps[2]["args"][-1]
    text = (ROOT / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{(_[A-Z_]+)\}", text))
    assert used <= set(config["substitutions"]), used - set(config["substitutions"])
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for secret_like in ("password", "secret", "token", "key.json"):
        assert secret_like not in code.lower()


def test_makefile_is_self_documenting_and_ci_calls_the_readme_test_command():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z]+):.*## ", makefile, re.M)
    assert {"help", "setup", "run", "test", "lint", "compile", "bench"} <= set(targets)
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci/run").read_text()
