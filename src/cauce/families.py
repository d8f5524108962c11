"""Image families: what each cauce image installs, what it must be able to import,
and how big it may get.

One image per dependency family instead of one giant image (TFX's is 12 GB):

* **base**: kfp + cauce core + scikit-learn + MLflow: extract, train (scikit-learn),
  register, deploy, monitor, champion;
* **beam**: + Apache Beam[gcp]: transform (also Dataflow's worker image);
* **tf**: + TensorFlow, TFMA: evaluate, Keras training;
* **torch**: + PyTorch (CPU build): PyTorch training;
* **serving**: only what the prediction server needs (no kfp, no Google Cloud
  SDKs but Cloud Storage, no training framework: ONNX Runtime serves every
  framework's model), for Vertex endpoints.

Used three ways:

* in each Dockerfile's build stage, ``python -m cauce.families smoke <family>``
  imports the family's libraries and the executors of the components that name
  the family's image, so an image that cannot run its steps fails to build;
* ``cauce images --sizes`` (and the tests) estimate each image's size from the
  installed size of the family's dependency closure in the current environment
  and compare it with the budget in ``containers/size-budgets.txt``;
* ``containers/build-image.sh`` checks the real built image against the same budget.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cauce.artifacts import CauceError

# Uncompressed python:3.11.7-slim-bookworm: Debian bookworm-slim (about 75 MiB) plus
# CPython 3.11 with pip (about 55 MiB). Not measurable here (no Docker engine): an
# assumption, checked for real by containers/build-image.sh against the built image.
PYTHON_SLIM_MIB = 130

ROOT = Path(__file__).resolve().parents[2]  # the repository, when cauce runs from a checkout
BUDGETS_FILE = ROOT / "containers" / "size-budgets.txt"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Family:
    name: str
    purpose: str
    # What the image installs: cauce with these extras (and its core dependencies) ...
    extras: tuple[str, ...] = ()
    # ... or, when set, cauce without dependencies plus only these requirements.
    requirements_file: str = ""
    # Libraries the family's steps import at run time (often lazily, inside a function).
    libraries: tuple[str, ...] = field(default_factory=tuple)
    # What the image holds besides Python packages, MiB (estimated, see its comment).
    other_mib: int = 0
    # Whether the image's venv keeps its installer (pip, setuptools, wheel) after the build.
    keeps_installer: bool = True

    @property
    def dockerfile(self) -> Path:
        return ROOT / "containers" / f"{self.name}.Dockerfile"

    def requirements(self) -> list[str]:
        """Top-level requirements of the family's environment (besides pip and setuptools)."""
        if self.requirements_file:
            lines = (ROOT / self.requirements_file).read_text().splitlines()
            return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
        return _cauce_requirements(self.extras)


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "base",
            "extract, validate, train (scikit-learn), register, deploy, monitor, champion",
            extras=("sklearn", "mlflow"),
            libraries=(
                "kfp",
                "google.cloud.bigquery",
                "google.cloud.bigquery_storage",
                "google.cloud.aiplatform",
                "duckdb",
                "sklearn",
                "lightgbm",
                "joblib",
                "mlflow",
                "tensorflow_metadata.proto.v0.statistics_pb2",
                "docker",  # the deploy step starts the serving container locally
                "cauce.reports",  # validate's and monitor's HTML (Jinja2 templates, package data)
                "cauce.components.extract.bigquery_backend",
                "cauce.components.validate.executor",
            ),
        ),
        Family(
            "beam",
            "transform and batch prediction (Apache Beam; also Dataflow's worker image)",
            # scikit-learn: batch prediction loads the model bundles (Keras / PyTorch
            # bundles are batch-scored in the tf / torch images)
            extras=("beam", "sklearn"),
            libraries=(
                "kfp", "apache_beam", "apache_beam.io.gcp.gcsio", "apache_beam.runners.dataflow", "sklearn", "lightgbm",
                # validate's statistics and monitor's histograms as Beam combiners
                "cauce.components.validate.beam_statistics",
                "cauce.components.monitor.beam_histograms",
                "cauce.reports",
            ),
            # /opt/apache/beam from Beam's SDK image (the worker boot program and its
            # licence files): not measurable without Docker, assumed at most 100 MiB.
            other_mib=100,
        ),
        Family(
            "tf",
            "evaluate (TensorFlow Model Analysis), Keras training",
            extras=("tf", "sklearn"),
            libraries=(
                "kfp",
                "tensorflow",
                "keras",
                "tensorflow_model_analysis",
                "tfx_bsl",
                "apache_beam",
                "sklearn",
                "lightgbm",  # evaluate scores the default models
                "cauce.reports",  # evaluate's HTML
                "cauce.components.evaluate.dataflow",  # TFMA on Dataflow
                # the train component runs here (as a CustomJob) for framework "keras"
                "cauce.components.train.executor",
                "cauce.components.train.keras_trainer",
            ),
        ),
        Family(
            "torch",
            "PyTorch training (CPU build of torch)",
            extras=("torch", "sklearn"),
            libraries=(
                "kfp",
                "torch",
                "sklearn",
                # the train component runs here (as a CustomJob) for framework "torch"
                "cauce.components.train.executor",
                "cauce.components.train.torch_trainer",
            ),
        ),
        Family(
            "serving",
            "Vertex AI endpoints: the prediction server",
            requirements_file="containers/serving.requirements.txt",
            # every framework's bundles through their model.onnx: no scikit-learn, LightGBM,
            # torch or Keras in this image
            libraries=("uvicorn", "httptools", "uvloop", "orjson", "onnxruntime", "google.cloud.storage", "cauce.serving.server"),
            # the Dockerfile uninstalls pip, setuptools and wheel after its smoke check: a
            # server installs nothing (18 MiB)
            keeps_installer=False,
        ),
    )
}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise CauceError(f"unknown image family {name!r}; families: {sorted(FAMILIES)}")
    return FAMILIES[name]


# --------------------------------------------------------------------------- smoke check
def executors_for(name: str) -> list[str]:
    """Executor modules of the components whose image belongs to family ``name``."""
    from cauce import catalogue

    return sorted(
        {f"cauce.components.{e.phase}.executor" for e in catalogue.discover() if catalogue.family_of(e.image) == name}
    )


def smoke(name: str) -> list[str]:
    """Import everything family ``name``'s steps need; raise naming what is missing."""
    family = get(name)
    modules = list(family.libraries)
    if "kfp" in family.libraries:  # the component images: also their components' executors
        modules += executors_for(name)
    failures = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as error:  # an image that cannot import a step's module is broken
            failures.append(f"{module}: {type(error).__name__}: {error}")
    if failures:
        raise CauceError(f"the {name} image cannot import:\n  " + "\n  ".join(failures))
    return modules


# --------------------------------------------------------------------------- size estimate
def _cauce_requirements(extras: tuple[str, ...]) -> list[str]:
    """cauce's core dependencies plus those of ``extras``, read from pyproject.toml
    (the source of truth; an editable install's metadata can lag behind it)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    requirements = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise CauceError(f"pyproject.toml has no extra {extra!r}; extras: {sorted(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            nested = re.fullmatch(r"cauce\[([\w,\s-]+)\]", requirement.strip())
            if nested:  # an extra made of other extras, e.g. serving = ["cauce[sklearn]", ...]
                pending += [e.strip() for e in nested[1].split(",")]
            else:
                requirements.append(requirement)
    return requirements


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> dict[str, object]:
    """The installed distributions ``requirements`` pull in (transitively), by normalized name.

    Raises CauceError naming the distributions that are not installed here.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    found: dict[str, object] = {}
    missing: set[str] = set()
    visited: set[tuple[str, frozenset]] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        key, extras = _normalize(requirement.name), frozenset(requirement.extras)
        if (key, extras) in visited:
            continue
        visited.add((key, extras))
        try:
            found[key] = found.get(key) or metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            missing.add(requirement.name)
            continue
        for raw in found[key].requires or []:
            dependency = Requirement(raw)
            # A dependency with a marker counts when the marker holds for this platform and
            # for one of the extras asked for (or for none: plain platform markers).
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras | {""}):
                pending.append(dependency)
    if missing:
        raise CauceError(
            f"not installed in this environment: {sorted(missing)}; install the family's "
            "dependencies (make setup) to estimate its image"
        )
    return found


_MEASURED: dict[tuple[str, str], int] = {}  # families share most packages: measure each once


def distribution_bytes(dist) -> int:
    """Bytes on disk of the files a distribution installed (its RECORD, including .pyc)."""
    key = (_normalize(dist.metadata["Name"]), dist.version)
    if key not in _MEASURED:
        total = 0
        for file in dist.files or []:
            path = Path(dist.locate_file(file))
            if path.is_file():
                total += path.stat().st_size
        _MEASURED[key] = total
    return _MEASURED[key]


@dataclass
class SizeEstimate:
    family: str
    mib: int  # estimated uncompressed image size
    packages: dict[str, int]  # distribution -> MiB, largest first


def estimate(name: str) -> SizeEstimate:
    """Estimated uncompressed size of family ``name``'s image: the Python slim base,
    plus the installed size of the family's dependency closure (and the venv's pip
    and setuptools, where the image keeps them) measured in the current environment,
    plus what else it copies in.

    Checked against fresh installs: within 2 % of the apparent size of a throwaway
    venv built from the lock file for each family (containers/README.md)."""
    family = get(name)
    dists = closure(family.requirements() + (["pip", "setuptools"] if family.keeps_installer else []))
    sizes = {key: distribution_bytes(dist) for key, dist in dists.items()}
    packages = {key: round(size / MIB) for key, size in sorted(sizes.items(), key=lambda kv: -kv[1])}
    return SizeEstimate(name, PYTHON_SLIM_MIB + family.other_mib + round(sum(sizes.values()) / MIB), packages)


def budgets(path: Path = BUDGETS_FILE) -> dict[str, int]:
    """Family -> budget in MiB, from ``containers/size-budgets.txt`` (``family budget ...`` lines)."""
    result = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#")[0].split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[1].isdigit():
            raise CauceError(f"{path}:{number}: expected 'family budget_mib ...', got {line!r}")
        result[fields[0]] = int(fields[1])
    return result


def over_budget(result: SizeEstimate, budget: int) -> str:
    """An explanation when ``result`` exceeds ``budget``, else an empty string."""
    if result.mib <= budget:
        return ""
    largest = ", ".join(f"{name} {mib} MiB" for name, mib in list(result.packages.items())[:5])
    return (
        f"the {result.family} image is estimated at {result.mib} MiB, over its budget of {budget} MiB "
        f"({BUDGETS_FILE.relative_to(ROOT)}); largest packages: {largest}"
    )


# --------------------------------------------------------------------------- the lock
LOCK_FILE = ROOT / "requirements" / "lock.txt"
BUILD_TOOLS_FILE = ROOT / "requirements" / "build.txt"
# What every virtualenv (the dev one and each image's) installs first, pinned in
# requirements/build.txt: the installer and the build backend that builds cauce and the
# one dependency PyPI ships only as source (kfp-server-api).
BUILD_TOOLS = ("pip", "setuptools", "wheel")
# The locked packages PyPI publishes only as source distributions (no wheel of the locked
# version): pure Python, built with the pinned setuptools. Every other package must come
# as a wheel, so an image build never needs a compiler; a new source-only dependency fails
# the build until it is named here.
SOURCE_ONLY = ("google-apitools", "kfp-server-api", "rouge-score")
# The CPU build of torch comes from PyTorch's own index, installed on its own before the
# rest (PyPI's Linux wheel is the CUDA build); the family files leave it out.
SEPARATE_INSTALLS = ("torch",)


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalized name."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line or line.startswith("--"):  # pip options (--only-binary ...)
            continue
        if "==" not in line:
            raise CauceError(f"{path}:{number}: expected an exact pin 'name==version', got {line!r}")
        name, version = line.split("==", 1)
        pins[_normalize(name)] = version.split(";")[0].strip()
    return pins


def public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a local build label satisfies the plain pin."""
    return version.split("+")[0]


def family_requirements_file(name: str) -> Path:
    return ROOT / "requirements" / f"image-{name}.txt"


def locked_family_requirements(name: str, lock: dict[str, str] | None = None) -> list[str]:
    """The exact pins family ``name``'s image installs (``--no-deps``): the closure of
    its requirements in this environment, each pinned to the lock's version."""
    lock = read_pins(LOCK_FILE) if lock is None else lock
    names = sorted(set(closure(get(name).requirements())) - set(BUILD_TOOLS) - set(SEPARATE_INSTALLS) - {"cauce"})
    unpinned = [n for n in names if n not in lock]
    if unpinned:
        raise CauceError(f"the {name} image needs packages {LOCK_FILE.name} does not pin: {unpinned} (make lock)")
    return [f"{n}=={lock[n]}" for n in names]


def render_family_requirements(name: str) -> str:
    family = get(name)
    how = (
        "cauce itself is installed --no-deps after these" if not family.requirements_file
        else f"with cauce --no-deps; the top-level list is {family.requirements_file}"
    )
    separate = [n for n in SEPARATE_INSTALLS if n in set(closure(family.requirements()))]
    lines = [
        f"# The {name} image's Python packages, exact versions from requirements/lock.txt:",
        "# the closure of what the family installs (src/cauce/families.py), resolved once in the",
        f"# dev environment. Generated by `make lock`; installed with pip --no-deps ({how}).",
    ]
    if separate:
        lines.append(f"# Installed on their own before these: {', '.join(separate)} (see the Dockerfile).")
    pins = locked_family_requirements(name)
    lines.append("--only-binary :all:")
    from_source = [n for n in SOURCE_ONLY if any(pin.startswith(f"{n}==") for pin in pins)]
    if from_source:
        lines.append(f"--no-binary {','.join(from_source)}")
    return "\n".join(lines + pins) + "\n"


def lock_differences(installed: dict[str, str], lock: dict[str, str], subset: bool = False) -> list[str]:
    """How an installed set (name -> version) departs from the lock: packages installed
    but not pinned or pinned to another version, and (unless ``subset``: an image holds
    part of the lock) pins that are not installed."""
    problems = [
        f"{name} {version} is installed but the lock pins {lock[name]}"
        for name, version in sorted(installed.items())
        if name in lock and public_version(version) != lock[name]
    ]
    problems += [f"{name} {installed[name]} is installed but not in the lock" for name in sorted(set(installed) - set(lock))]
    if not subset:
        problems += [f"{name}=={lock[name]} is pinned but not installed" for name in sorted(set(lock) - set(installed))]
    return problems


def installed_distributions() -> dict[str, str]:
    """This environment's distributions (name -> version), cauce itself left out."""
    from importlib import metadata

    found = {_normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    found.pop("cauce", None)
    return found


def main(argv: list[str]) -> int:
    """``python -m cauce.families smoke FAMILY [--lock LOCK]``: the Dockerfiles' build-stage
    check (what the family's steps import; with ``--lock``, that every installed package is
    pinned there at the installed version). ``python -m cauce.families lock``: write
    ``requirements/image-<family>.txt`` (``make lock``)."""
    if argv == ["lock"]:  # `make lock`: the image files from the lock and this environment
        for name in FAMILIES:
            family_requirements_file(name).write_text(render_family_requirements(name))
            print(f"wrote {family_requirements_file(name).relative_to(ROOT)}")
        return 0
    if len(argv) not in (2, 4) or argv[0] != "smoke" or (len(argv) == 4 and argv[2] != "--lock"):
        print("usage: python -m cauce.families smoke FAMILY [--lock LOCK_FILE] | lock", file=sys.stderr)
        return 2
    try:
        modules = smoke(argv[1])
        if len(argv) == 4:
            problems = lock_differences(installed_distributions(), read_pins(Path(argv[3])), subset=True)
            if problems:
                raise CauceError(f"the {argv[1]} image departs from {argv[3]}:\n  " + "\n  ".join(problems))
    except CauceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{argv[1]} image imports: {', '.join(modules)}" + ("; every package is pinned by the lock" if len(argv) == 4 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
