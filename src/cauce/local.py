"""Run a compiled pipeline spec locally with kfp.local, and read back what each
task produced.

The spec that runs is the YAML file the compiler wrote, loaded back from disk:
the same file `cauce submit` sends to Vertex.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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


def run_spec(
    spec_path: str | Path,
    arguments: dict,
    pipeline_root: str | Path | None = None,
    on_event: Callable[[str, str], None] | None = None,
    verbose: bool = False,
) -> LocalRun:
    """Run the compiled spec at ``spec_path`` under kfp.local (SubprocessRunner in this venv)."""
    from kfp import components, local

    root = Path(pipeline_root or cauce_home() / "runs")
    root.mkdir(parents=True, exist_ok=True)
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

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    # kfp.local warns that our base images are "non-Python": by design (GUIDE §2) the
    # body runs in this virtualenv, which has what the image has.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    started = time.monotonic()
    with open(log_file, "w") as handle:
        tee = _LogTee(handle, track, sys.__stdout__ if verbose else None)
        with contextlib.redirect_stdout(tee):
            try:
                pipeline(**arguments)
            except Exception as error:
                raise PipelineFailed(name, log_file, _last_error(log_file)) from error
    seconds = time.monotonic() - started
    run_dirs = sorted((p for p in root.iterdir() if p not in before and p.is_dir()), key=lambda p: p.stat().st_mtime)
    run_dir = run_dirs[-1] if run_dirs else root
    return LocalRun(name, run_dir, log_file, seconds, task_seconds, read_task_results(run_dir))


class PipelineFailed(RuntimeError):
    def __init__(self, pipeline: str, log_file: Path, detail: str):
        super().__init__(f"pipeline {pipeline!r} failed: {detail}\n(full log: {log_file})")
        self.log_file = log_file
        self.detail = detail


def _last_error(log_file: Path) -> str:
    """The most useful line of a failed run's log: our CauceError message if there is one."""
    lines = log_file.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if "CauceError:" in line:
            return line.split("CauceError:", 1)[1].strip()
    for line in reversed(lines):
        if re.search(r"\w+(Error|Exception):", line):
            return line.strip()
    return "see the log"


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
