"""Run a compiled pipeline spec locally with kfp.local, and read back what each
task produced.

The spec that runs is the YAML file the compiler wrote, loaded back from disk:
the same file `cauce submit` sends to Vertex. Two runners:

* ``subprocess`` (the default): every step's body runs in this virtualenv, which has
  what the images have;
* ``docker``: every step runs in the image its component names (kfp.local's
  DockerRunner), as on Vertex. The local platform around the steps is shared through
  ``$CAUCE_HOME``, mounted at the same path in every container (the local BigQuery
  engine's file, the MLflow registry, endpoint state, the pipeline root), and through the
  host's loopback network (steps run with host networking). The deploy step starts the
  serving image in a container of the same engine, so steps also get the engine's socket:
  locally the Docker engine plays the part Vertex endpoints play on Google Cloud.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.paths import cauce_home

# kfp.local colours task names: "Executing task \x1b[96m'extract'\x1b[0m".
_ANSI = re.compile(r"\x1b\[\d+m")
_TASK_START = re.compile(r"Executing task '([\w.-]+)'")
_TASK_END = re.compile(r"Task '([\w.-]+)' finished with status (\w+)")


@dataclass
class TaskResult:
    name: str
    parameters: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)  # output name -> {"uri", "metadata"}


@dataclass
class LocalRun:
    pipeline: str
    run_dir: Path
    log_file: Path
    seconds: float
    task_seconds: dict[str, float]
    tasks: dict[str, TaskResult]

    def task(self, prefix: str) -> TaskResult | None:
        """The task whose name is ``prefix`` or ``prefix-N`` (KFP de-duplicates names)."""
        for name, task in self.tasks.items():
            if name == prefix or re.fullmatch(rf"{re.escape(prefix)}-\d+", name):
                return task
        return None


class _LogTee(io.TextIOBase):
    """Stdout replacement: everything goes to the log file; task start/end lines
    are reported to ``on_event`` so the CLI can show progress."""

    def __init__(self, log_handle, on_event: Callable[[str, str], None] | None, echo):
        self.log_handle = log_handle
        self.on_event = on_event
        self.echo = echo
        self._pending = ""

    def write(self, text: str) -> int:
        self.log_handle.write(text)
        if self.echo is not None:
            self.echo.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._scan(line)
        return len(text)

    def _scan(self, line: str) -> None:
        if self.on_event is None:
            return
        line = _ANSI.sub("", line)
        if match := _TASK_END.search(line):
            self.on_event(match.group(1), match.group(2))
        elif match := _TASK_START.search(line):
            self.on_event(match.group(1), "RUNNING")

    def flush(self) -> None:
        self.log_handle.flush()


RUNNERS = ("subprocess", "docker")
IMAGE_UID = 10001  # the user every cauce image runs as (containers/*.Dockerfile)


def spec_images(spec_path: str | Path) -> list[str]:
    """The images a compiled spec's steps run in."""
    import yaml

    executors = yaml.safe_load(Path(spec_path).read_text())["deploymentSpec"]["executors"]
    return sorted({e["container"]["image"] for e in executors.values() if "container" in e})


def docker_runner(spec_path: str | Path, home: Path):
    """kfp.local's DockerRunner set up for cauce's images (see the module docstring).

    Raises CauceError, before anything runs, when no engine answers or an image the spec
    names is not in the engine (and says how to get it)."""
    from docker.types import Mount
    from kfp import local

    from cauce.components.deploy.runtimes import SERVING_IMAGE_ENV, SERVING_RUNTIME_ENV, engine_client
    from cauce.images import image_for

    client = engine_client()
    needed = [*spec_images(spec_path), image_for("serving")]
    present = {tag for image in client.images.list() for tag in image.tags + image.attrs.get("RepoDigests", [])}
    missing = [image for image in needed if image not in present and f"{image}:latest" not in present]
    for image in list(missing):  # by digest from a registry (the release rehearsal): pull it
        if "@sha256:" in image:
            try:
                client.images.pull(image)
                missing.remove(image)
            except Exception:  # noqa: S110 - reported below with the others
                pass
    if missing:
        raise CauceError(
            f"the Docker engine has no image {', '.join(missing)}: build the images with `make images` "
            "(or set CAUCE_IMAGE_<FAMILY> at compile time to images it has)"
        )
    home = home.resolve()
    docker_host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    socket_path = docker_host.removeprefix("unix://")
    if not docker_host.startswith("unix://") or not Path(socket_path).exists():
        raise CauceError(f"--runner docker hands the engine's unix socket to the steps; DOCKER_HOST={docker_host} is not one")
    environment = {
        "CAUCE_HOME": str(home),
        SERVING_RUNTIME_ENV: "container",
        SERVING_IMAGE_ENV: image_for("serving"),
    }
    user = {}
    if os.getuid() == 0:
        # The images' own non-root user owns the state the steps write; root here can
        # still read and change all of it.
        _chown_tree(home, IMAGE_UID, IMAGE_UID)
    else:  # run as the caller, so their files stay theirs (still not root)
        user = {"user": f"{os.getuid()}:{os.getgid()}"}
        environment["HOME"] = "/tmp"
    return local.DockerRunner(
        # The spec's command replaces the image's entrypoint, as Kubernetes and Vertex run
        # it (the beam image's entrypoint is Beam's worker boot, for Dataflow only).
        entrypoint="",
        network_mode="host",
        environment=environment,
        mounts=[
            Mount(target=str(home), source=str(home), type="bind"),
            Mount(target="/var/run/docker.sock", source=socket_path, type="bind"),
        ],
        group_add=[str(Path(socket_path).stat().st_gid)],
        **user,
    )


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for directory, folders, files in os.walk(root):
        for name in [directory, *(os.path.join(directory, f) for f in folders + files)]:
            try:
                if os.lstat(name).st_uid != uid:
                    os.lchown(name, uid, gid)
            except FileNotFoundError:
                pass


def run_spec(
    spec_path: str | Path,
    arguments: dict,
    pipeline_root: str | Path | None = None,
    on_event: Callable[[str, str], None] | None = None,
    verbose: bool = False,
    runner: str = "subprocess",
) -> LocalRun:
    """Run the compiled spec at ``spec_path`` under kfp.local with ``runner``
    (``subprocess``: in this virtualenv; ``docker``: each step in its image)."""
    from kfp import components, local

    if runner not in RUNNERS:
        raise CauceError(f"runner must be one of {RUNNERS}, got {runner!r}")
    root = Path(pipeline_root or cauce_home() / "runs")
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        home = cauce_home().resolve()
        if not root.resolve().is_relative_to(home):
            raise CauceError(f"with --runner docker the pipeline root must be inside CAUCE_HOME ({home}), got {root}")
        kfp_runner = docker_runner(spec_path, home)
    else:
        kfp_runner = local.SubprocessRunner(use_venv=False)
    # A spec whose DAG outputs use dsl.OneOf over artifacts (the training pipeline's model,
    # from the train task of the chosen framework) needs this in kfp.local 2.17.
    from cauce.kfp_local_compat import allow_oneof_artifacts

    allow_oneof_artifacts()
    pipeline = components.load_component_from_file(str(spec_path))
    name = pipeline.component_spec.name
    log_file = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    before = set(root.iterdir())
    starts: dict[str, float] = {}
    task_seconds: dict[str, float] = {}

    def track(task: str, status: str) -> None:
        if status == "RUNNING":
            starts[task] = time.monotonic()
        elif task in starts:
            task_seconds[task] = time.monotonic() - starts[task]
        if on_event is not None:
            on_event(task, status)

    local.init(runner=kfp_runner, pipeline_root=str(root.resolve()), raise_on_error=True)
    # kfp.local warns that our base images are "non-Python": with the subprocess runner
    # the body runs in this virtualenv by design, which has what the image has.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    started = time.monotonic()
    with open(log_file, "w") as handle:
        tee = _LogTee(handle, track, sys.__stdout__ if verbose else None)
        with contextlib.redirect_stdout(tee):
            try:
                pipeline(**arguments)
            except Exception as error:
                raise PipelineFailed(name, log_file, _last_error(log_file, error)) from error
    seconds = time.monotonic() - started
    run_dirs = sorted((p for p in root.iterdir() if p not in before and p.is_dir()), key=lambda p: p.stat().st_mtime)
    run_dir = run_dirs[-1] if run_dirs else root
    return LocalRun(name, run_dir, log_file, seconds, task_seconds, read_task_results(run_dir))


class PipelineFailed(RuntimeError):
    def __init__(self, pipeline: str, log_file: Path, detail: str):
        super().__init__(f"pipeline {pipeline!r} failed: {detail}\n(full log: {log_file})")
        self.log_file = log_file
        self.detail = detail


def _last_error(log_file: Path, error: BaseException | None = None) -> str:
    """The most useful line of a failed run's log: our CauceError message if there is
    one, else the last exception line; with neither (kfp.local failed before any step
    wrote its log, e.g. on a parameter of the wrong type), the exception kfp.local raised."""
    lines = log_file.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "CauceError:" in line:
            return line.split("CauceError:", 1)[1].strip()
    for line in reversed(lines):
        if re.search(r"\w+(Error|Exception):", line):
            return line.strip()
    if error is not None:
        return f"{type(error).__name__}: {error}".strip()
    return "no step reported an error; see the log"


def read_task_results(run_dir: Path) -> dict[str, TaskResult]:
    results = {}
    for output_file in sorted(Path(run_dir).glob("*/executor_output.json")):
        payload = json.loads(output_file.read_text())
        task = TaskResult(name=output_file.parent.name, parameters=payload.get("parameterValues", {}))
        for output_name, entry in payload.get("artifacts", {}).items():
            artifact = (entry.get("artifacts") or [{}])[0]
            task.artifacts[output_name] = {"uri": artifact.get("uri", ""), "metadata": artifact.get("metadata", {})}
        results[task.name] = task
    return results
