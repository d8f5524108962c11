"""The images (no Docker engine runs here): one Dockerfile per dependency family,
lint-clean and correct by construction, each family's dependencies pinned and its
size estimated against a recorded budget; the build script that checks the real
image's size, run with a stand-in docker; the Makefile / CI contract."""

import os
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from cauce import families, images
from tests.fixtures.cloudbuild import fake_docker

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))
BOOTSTRAP = {"pip", "setuptools", "wheel"}  # come with the venv, not from the lock file


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[families._normalize(name)] = version.split(";")[0].strip()
    return pins


def _public(version: str) -> str:
    return version.split("+")[0]  # 2.13.0+cpu satisfies ==2.13.0


LOCK = _pins(ROOT / "requirements/lock.txt")
TORCH_LOCK = _pins(ROOT / "containers/torch.lock.txt")


def test_one_dockerfile_per_image_family():
    assert set(families.FAMILIES) == set(images.FAMILIES)
    assert {p.stem for p in DOCKERFILES} == set(images.FAMILIES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("family", images.FAMILIES)
def test_images_are_slim_non_root_pinned_and_checked_at_build_time(family):
    text = (ROOT / "containers" / f"{family}.Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # A slim, pinned base; a build stage; the final stage copies the venv and nothing else.
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-bookworm$", code, re.M)
    stages = re.split(r"^FROM ", code, flags=re.M)[1:]
    final = stages[-1]
    assert "AS build" in code and final.startswith("${PYTHON_IMAGE}\n")
    assert "pip install" not in final and "apt-get" not in code  # no build tools, nothing installed there
    assert "COPY --from=build /opt/cauce /opt/cauce" in final
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users == ["10001"] and "useradd --create-home --uid 10001" in final
    # Every install: wheels only (no compiler needed), versions from the lock file.
    installs = re.findall(r"pip install ([^&]*)", code.replace("\\\n", " "))
    assert installs
    for install in installs:
        assert "--only-binary=:all:" in install and "--no-cache-dir" in install
        assert "--constraint requirements/lock.txt" in install or install.rstrip().endswith("--no-deps .")
    # The family's extras, and the smoke check of what its steps import.
    family_def = families.FAMILIES[family]
    if family_def.extras:
        assert f'".[{",".join(family_def.extras)}]"' in code
    assert f"python -m cauce.families smoke {family}" in stages[-2]
    assert f'org.opencontainers.image.title="cauce-{family}"' in final
    for secret_like in ("PASSWORD", "SECRET", "TOKEN", "CREDENTIALS", "KEY.JSON"):
        assert secret_like not in code.upper()
    assert ("HEALTHCHECK" in final) == (family == "serving")  # only the image that serves


def test_serving_image_honours_the_vertex_contract_and_skips_pipeline_dependencies():
    text = (ROOT / "containers/serving.Dockerfile").read_text()
    for variable in ("AIP_HTTP_PORT=8080", "AIP_HEALTH_ROUTE=/health", "AIP_PREDICT_ROUTE=/predict", "CAUCE_SERVE_HOST=0.0.0.0"):
        assert variable in text
    assert 'ENTRYPOINT ["python", "-m", "cauce.serving"]' in text and "EXPOSE 8080" in text
    assert "--no-deps ." in text and "--requirement containers/serving.requirements.txt" in text
    closure = families.closure(families.get("serving").requirements())
    assert not {"kfp", "google-cloud-aiplatform", "google-cloud-bigquery", "tensorflow"} & set(closure)


def test_beam_image_carries_the_dataflow_worker_boot_of_the_locked_beam():
    text = (ROOT / "containers/beam.Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={LOCK['apache-beam']}" in text
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-sdk" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


def test_torch_image_takes_the_cpu_build_from_pytorchs_index():
    text = (ROOT / "containers/torch.Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r'--no-deps \\\s+--index-url "\$\{TORCH_INDEX_URL\}"', text)
    assert "--constraint containers/torch.lock.txt" in text


@pytest.mark.parametrize("family", images.FAMILIES)
def test_every_dependency_of_a_family_is_pinned_to_what_the_tests_ran(family):
    try:
        closure = families.closure(families.get(family).requirements())
    except families.CauceError as error:
        pytest.skip(str(error))
    pins = {**LOCK, **TORCH_LOCK} if family in ("torch", "serving") else LOCK  # both install torch
    unpinned = sorted(name for name in set(closure) - BOOTSTRAP if name not in pins)
    assert not unpinned, f"{family}: not pinned by the lock file(s): {unpinned}"
    differing = {n: (pins[n], d.version) for n, d in closure.items() if n in pins and pins[n] != _public(d.version)}
    assert not differing, f"{family}: lock pins differ from the installed versions: {differing}"


def test_the_torch_lock_only_adds_to_the_main_lock():
    assert TORCH_LOCK and not set(TORCH_LOCK) & set(LOCK)


# --------------------------------------------------------------------------- size budgets
BUDGETS = families.budgets()


def _recorded() -> dict[str, tuple[int, int]]:
    rows = {}
    for line in families.BUDGETS_FILE.read_text().splitlines():
        fields = line.split("#")[0].split()
        if fields:
            rows[fields[0]] = (int(fields[2]), int(fields[3]))  # estimate, measured
    return rows


def test_every_family_has_a_budget_with_headroom_over_its_recorded_figures():
    assert set(BUDGETS) == set(images.FAMILIES)
    for family, (estimate, measured) in _recorded().items():
        assert max(estimate, measured) < BUDGETS[family] <= 1.25 * estimate, family


@pytest.mark.parametrize("family", images.FAMILIES)
def test_estimated_image_size_is_within_budget(family):
    try:
        result = families.estimate(family)
    except families.CauceError as error:  # a family whose dependencies this env lacks
        pytest.skip(str(error))
    problem = families.over_budget(result, BUDGETS[family])
    assert not problem, problem
    recorded, _ = _recorded()[family]
    assert abs(result.mib - recorded) <= 0.1 * recorded, (
        f"{family}: estimated {result.mib} MiB now, {recorded} MiB recorded in containers/size-budgets.txt: "
        "update the figures (and the budget if need be)"
    )


def test_over_budget_names_the_largest_packages():
    result = families.SizeEstimate("tf", 4000, {"tensorflow": 1820, "pyarrow": 154})
    assert families.over_budget(result, 3650).startswith("the tf image is estimated at 4000 MiB, over its budget of 3650")
    assert "tensorflow 1820 MiB" in families.over_budget(result, 3650)
    assert families.over_budget(result, 4000) == ""


def test_smoke_check_imports_what_the_family_runs():
    # The Dockerfiles run it in their build stage; the serving image's is cheap enough here
    # (the others import TensorFlow, Beam, MLflow: checked on fresh installs, see README).
    assert families.smoke("serving") == list(families.get("serving").libraries)
    assert "cauce.components.extract.executor" in families.executors_for("base")
    assert families.executors_for("beam") == [
        "cauce.components.batch_predict.executor",
        "cauce.components.transform.executor",
    ]
    with pytest.raises(families.CauceError, match="unknown image family 'gpu'"):
        families.smoke("gpu")


def test_component_images_cover_every_component():
    from cauce import catalogue

    assert {catalogue.family_of(entry.image) for entry in catalogue.discover()} <= set(images.FAMILIES)


# --------------------------------------------------------------------------- build-image.sh
@pytest.fixture
def build_image(tmp_path):
    fake_docker(tmp_path / "bin")
    log = tmp_path / "docker.log"

    def run(*arguments, size_mib=100, family="base"):
        env = dict(
            os.environ,
            PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
            FAKE_DOCKER_LOG=str(log),
            **{f"FAKE_DOCKER_SIZE_{family.upper()}": str(size_mib * 1024 * 1024)},
        )
        result = subprocess.run(
            ["bash", str(ROOT / "containers/build-image.sh"), *arguments], env=env, capture_output=True, text=True
        )
        return result, (log.read_text().splitlines() if log.exists() else [])

    return run


def test_build_image_checks_the_budget_then_pushes_and_records_the_digest(build_image, tmp_path):
    result, calls = build_image("base", "eu-docker.pkg.dev/p/r", str(tmp_path / "out"), "abc1234", "v1.2.3", size_mib=BUDGETS["base"])
    assert result.returncode == 0, result.stderr
    assert calls[0].startswith(f"build --file {ROOT}/containers/base.Dockerfile --tag eu-docker.pkg.dev/p/r/cauce-base:abc1234")
    assert "--tag eu-docker.pkg.dev/p/r/cauce-base:1.2.3" in calls[0]
    assert calls[-3:-1] == ["push eu-docker.pkg.dev/p/r/cauce-base:abc1234", "push eu-docker.pkg.dev/p/r/cauce-base:1.2.3"]
    recorded = (tmp_path / "out/base.env").read_text()
    assert re.fullmatch(r"export CAUCE_IMAGE_BASE=eu-docker\.pkg\.dev/p/r/cauce-base@sha256:[0-9a-f]{64}\n", recorded)


def test_build_image_refuses_to_push_an_image_over_budget(build_image, tmp_path):
    result, calls = build_image("tf", "r", str(tmp_path / "out"), "abc1234", family="tf", size_mib=BUDGETS["tf"] + 1)
    assert result.returncode == 1
    assert f"cauce-tf is {BUDGETS['tf'] + 1} MiB, over its budget of {BUDGETS['tf']} MiB" in result.stderr
    assert not any(call.startswith("push") for call in calls) and not (tmp_path / "out").exists()


def test_build_image_rejects_bad_arguments(build_image, tmp_path):
    assert build_image("gpu", "r", str(tmp_path), "abc1234")[0].returncode == 2  # no such family
    result, _ = build_image("base", "r", str(tmp_path), "abc1234", "release-1")
    assert result.returncode == 2 and "not vMAJOR.MINOR.PATCH" in result.stderr


# --------------------------------------------------------------------------- Makefile / CI
def test_makefile_is_self_documenting_and_ci_calls_the_readme_test_command():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z]+):.*## ", makefile, re.M)
    assert {"help", "setup", "run", "test", "lint", "compile", "export", "images", "bench"} <= set(targets)
    assert "$(BIN)/hadolint containers/*.Dockerfile" in makefile
    assert "--index-url $(TORCH_INDEX_URL)" in makefile  # CI gets torch's CPU build, not CUDA's
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_the_lock_pins_the_installed_torch():
    installed = metadata.version("torch")
    assert LOCK["torch"] == _public(installed)
