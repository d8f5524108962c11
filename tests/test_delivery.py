"""The install paths and the images' definitions: one lock closing over every install
path (the dev venv holds exactly it; each image family's pinned file is derived from
it); one Dockerfile per dependency family, lint-clean and installing only pinned
packages; size estimates against the budgets; the Makefile / CI contract. The images
themselves are built and run in tests/test_containers.py."""

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from cauce import families, images

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "containers").glob("*.Dockerfile"))
LOCK = families.read_pins(families.LOCK_FILE)


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
    assert "pip install" not in final  # no build tools there
    # The one system package: LightGBM's OpenMP runtime, pinned, lists removed.
    for apt in re.findall(r"apt-get install ([^&]*)", code.replace("\\\n", " ")):
        assert apt.split() == ["-y", "--no-install-recommends", "libgomp1=12.2.0-14+deb12u1"], apt
    assert "COPY --from=build /opt/cauce /opt/cauce" in final
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users == ["10001"] and "useradd --create-home --uid 10001" in final
    # Every install: exact pins with --no-deps (nothing unpinned gets in), wheels only (the
    # pinned files say so themselves) but for the source-only packages, built with the pinned
    # build tools.
    installs = re.findall(r"pip install ([^&]*)", code.replace("\\\n", " "))
    assert installs
    for install in installs:
        assert "--no-cache-dir" in install and "--no-deps" in install, install
        assert "--only-binary=:all:" in install or "requirements/image-" in install or install.rstrip().endswith(" ."), install
        assert "--no-binary" not in install
    pinned = families.family_requirements_file(family).read_text().splitlines()
    assert "--only-binary :all:" in pinned
    assert all(line.startswith("--no-binary ") for line in pinned if "no-binary" in line)
    assert "--requirement requirements/build.txt" in installs[0]
    assert any(f"--requirement requirements/image-{family}.txt" in install for install in installs)
    assert "--no-build-isolation ." in code  # cauce itself, with the pinned setuptools
    # The family's extras, and the smoke check of what its steps import.
    assert f"python -m cauce.families smoke {family} --lock requirements/lock.txt" in stages[-2]
    assert f'org.opencontainers.image.title="cauce-{family}"' in final
    for secret_like in ("PASSWORD", "SECRET", "TOKEN", "CREDENTIALS", "KEY.JSON"):
        assert secret_like not in code.upper()
    assert ("HEALTHCHECK" in final) == (family == "serving")  # only the image that serves


def test_serving_image_honours_the_vertex_contract_and_skips_pipeline_dependencies():
    text = (ROOT / "containers/serving.Dockerfile").read_text()
    for variable in ("AIP_HTTP_PORT=8080", "AIP_HEALTH_ROUTE=/health", "AIP_PREDICT_ROUTE=/predict", "CAUCE_SERVE_HOST=0.0.0.0"):
        assert variable in text
    assert 'ENTRYPOINT ["python", "-m", "cauce.serving"]' in text and "EXPOSE 8080" in text
    assert "--requirement requirements/image-serving.txt" in text and "kfp" not in families.read_pins(
        families.family_requirements_file("serving")
    )
    closure = families.closure(families.get("serving").requirements())
    assert not {"kfp", "google-cloud-aiplatform", "google-cloud-bigquery", "tensorflow"} & set(closure)
    # Every framework's model is served from its model.onnx: no training framework in the image.
    assert "onnxruntime" in closure
    assert not {"torch", "keras", "scikit-learn", "scipy", "lightgbm", "joblib"} & set(closure)
    assert "torch" not in text and "KERAS_BACKEND" not in text


def test_beam_image_carries_the_dataflow_worker_boot_of_the_locked_beam():
    text = (ROOT / "containers/beam.Dockerfile").read_text()
    assert f"ARG BEAM_VERSION={LOCK['apache-beam']}" in text
    # A build argument names the SDK image, so local builds (no registry) can leave it out.
    assert "ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:${BEAM_VERSION}" in text
    assert "FROM ${BEAM_SDK_IMAGE} AS beam-sdk" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


@pytest.mark.parametrize("family", ["torch"])
def test_torch_comes_alone_from_pytorchs_cpu_index_at_the_locked_version(family):
    text = (ROOT / f"containers/{family}.Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r'--no-deps --only-binary=:all: --index-url "\$\{TORCH_INDEX_URL\}" \\\s+"torch==\$\(sed', text)
    assert "torch" not in families.read_pins(families.family_requirements_file(family))


# --------------------------------------------------------------------------- the lock
def test_the_installed_environment_is_exactly_the_lock():
    # `make setup` installs the lock with --no-deps: what is installed is what is pinned,
    # nothing more (a transitive dependency the lock forgot would be missing, and
    # `pip check` in make setup fails), nothing else (an upstream release changes nothing).
    problems = families.lock_differences(families.installed_distributions(), LOCK)
    assert not problems, "\n".join(problems) + "\n(make lock, after installing what you added)"


def test_build_tools_are_pinned_the_same_in_both_files():
    tools = families.read_pins(families.BUILD_TOOLS_FILE)
    assert set(tools) == set(families.BUILD_TOOLS)
    assert {name: LOCK[name] for name in tools} == tools


@pytest.mark.parametrize("family", images.FAMILIES)
def test_each_image_file_is_the_familys_closure_pinned_by_the_lock(family):
    written = families.family_requirements_file(family).read_text()
    assert written == families.render_family_requirements(family), (
        f"requirements/image-{family}.txt is stale: run `make lock`"
    )


def test_a_lock_departure_is_named():
    problems = families.lock_differences({"numpy": "2.0.0", "leftpad": "1.0", "torch": "2.13.0+cpu"}, {"numpy": "2.4.6", "torch": "2.13.0", "six": "1.17.0"})
    assert problems == [
        "numpy 2.0.0 is installed but the lock pins 2.4.6",
        "leftpad 1.0 is installed but not in the lock",
        "six==1.17.0 is pinned but not installed",
    ]
    assert families.lock_differences({"torch": "2.13.0+cpu"}, {"torch": "2.13.0", "six": "1"}, subset=True) == []


# --------------------------------------------------------------------------- size budgets
BUDGETS = families.budgets()


def _recorded() -> dict[str, tuple[int, int]]:
    rows = {}
    for line in families.BUDGETS_FILE.read_text().splitlines():
        fields = line.split("#")[0].split()
        if fields:
            rows[fields[0]] = (int(fields[2]), int(fields[3]))  # estimate, built
    return rows


def test_every_family_has_a_budget_with_headroom_over_its_recorded_figures():
    assert set(BUDGETS) == set(images.FAMILIES)
    for family, (estimate, built) in _recorded().items():
        assert max(estimate, built) < BUDGETS[family] <= 1.25 * max(estimate, built), family


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
        "cauce.components.monitor.executor",
        "cauce.components.transform.executor",
        "cauce.components.validate.executor",
    ]
    with pytest.raises(families.CauceError, match="unknown image family 'gpu'"):
        families.smoke("gpu")


def test_component_images_cover_every_component():
    from cauce import catalogue

    assert {catalogue.family_of(entry.image) for entry in catalogue.discover()} <= set(images.FAMILIES)


# --------------------------------------------------------------------------- build-image.sh
def test_build_image_rejects_bad_arguments_before_building(tmp_path):
    def run(*arguments):
        return subprocess.run(["bash", str(ROOT / "containers/build-image.sh"), *arguments], capture_output=True, text=True)

    result = run("gpu", "r", str(tmp_path), "abc1234")
    assert result.returncode == 2 and "no Dockerfile for image family 'gpu'" in result.stderr
    result = run("base", "r", str(tmp_path), "abc1234", "release-1")
    assert result.returncode == 2 and "not vMAJOR.MINOR.PATCH" in result.stderr
    assert run("base", "r").returncode == 2


# --------------------------------------------------------------------------- Makefile / CI
def test_makefile_is_self_documenting_and_ci_calls_the_readme_test_command():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z-]+):.*## ", makefile, re.M)
    assert {"help", "setup", "run", "test", "lint", "compile", "export", "engine", "images", "bench", "lock"} <= set(targets)
    assert "$(BIN)/hadolint containers/*.Dockerfile" in makefile
    assert "--index-url $(TORCH_INDEX_URL)" in makefile  # CI gets torch's CPU build, not CUDA's
    assert "--no-deps --no-build-isolation -r requirements/lock.txt" in makefile and "$(BIN)/pip check" in makefile
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_the_lock_pins_the_installed_torch():
    assert LOCK["torch"] == families.public_version(metadata.version("torch"))


def test_every_python_package_of_the_tree_is_in_the_distribution():
    # pyproject lists the packages by name (three roots map into one namespace), and an
    # editable install finds a missing one anyway: only the images, which install the
    # wheel, would notice. (A new components/ folder was missed that way once.)
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"src/cauce": "cauce", "components": "cauce.components", "pipelines": "cauce.pipelines"}
    found = {
        ".".join([package, *init.parent.relative_to(ROOT / root).parts])
        for root, package in roots.items()
        for init in (ROOT / root).rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject.toml's [tool.setuptools] packages: {sorted(found - listed)}"

