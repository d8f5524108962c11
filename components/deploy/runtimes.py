"""Where a local endpoint's serving program runs: a process on this machine, or the
serving image in a container of the local Docker engine.

Both run the same program (``python -m cauce.serving``) with the same arguments, on
loopback, and are driven the same way afterwards (health, admin routes, smoke tests over
HTTP); only starting, watching and stopping differ. Which one a new server gets is the
local platform's choice, not a pipeline parameter: ``CAUCE_LOCAL_SERVING=container``
(set by ``cauce run --runner docker`` for every step) picks the container, with the
serving image named in ``CAUCE_SERVING_IMAGE``. On Vertex the endpoint runs the same
image under the same contract.

Stopping verifies identity first: a process is signalled only while its start time and
command line are those recorded when it was started, a container only while it carries
the endpoint's label. A stale or edited state file cannot make us stop anything else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cauce.artifacts import CauceError

SERVING_RUNTIME_ENV = "CAUCE_LOCAL_SERVING"
SERVING_IMAGE_ENV = "CAUCE_SERVING_IMAGE"
ENDPOINT_LABEL = "io.cauce.endpoint"


def serving_command(model_dir: str, host: str, port: int, request_log_dir: str, endpoint: str, deployed_model_id: str) -> list[str]:
    """The serving program's arguments after ``python -m cauce.serving``."""
    return [
        "--model-dir", model_dir, "--host", host, "--port", str(port),
        "--request-log-dir", request_log_dir, "--endpoint", endpoint,
        "--deployed-model-id", deployed_model_id, "--admin",
    ]  # fmt: skip


# --------------------------------------------------------------------------- processes
def _process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22),
    which together with the pid names one process for the machine's uptime."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _process_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


class ProcessRuntime:
    """The serving program as a process of this machine, in its own session so that it
    outlives the pipeline step that started it."""

    kind = "process"

    def start(self, arguments: list[str], environment: dict[str, str], log_file: Path, endpoint: str) -> dict:
        command = [sys.executable, "-m", "cauce.serving", *arguments]
        with open(log_file, "ab") as log_handle:
            process = subprocess.Popen(  # noqa: S603 - our own module, no shell
                command,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=dict(os.environ, **environment),
            )
        self._child = process
        return {
            "runtime": self.kind,
            "pid": process.pid,
            "pid_start_ticks": _process_start_ticks(process.pid),
            "command": command,
            "server_log": str(log_file),
        }

    def exited(self, state: dict) -> str | None:
        """Why the server is gone ("exited with code N"), or None while it runs."""
        child = getattr(self, "_child", None)
        if child is not None and child.pid == state["pid"]:
            code = child.poll()
            return None if code is None else f"exited with code {code}"
        return None if self.owns(state) else "is no longer running"

    def log_tail(self, state: dict, characters: int = 2000) -> str:
        try:
            return Path(state["server_log"]).read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def owns(self, state: dict) -> bool:
        """True while ``state``'s pid is still the serving process it recorded."""
        pid = state.get("pid")
        if not isinstance(pid, int) or pid <= 1:
            return False
        recorded = state.get("pid_start_ticks")
        if recorded is None or _process_start_ticks(pid) != recorded:
            return False
        cmdline = _process_cmdline(pid)
        return cmdline[:3] == state.get("command", [])[:3] and "cauce.serving" in cmdline

    def stop(self, state: dict, timeout: float) -> bool:
        """SIGTERM the server's process group, SIGKILL after ``timeout``; True if it ran."""
        if not self.owns(state):
            return False
        pid = state["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                _reap(pid)
                if not self.owns(state):
                    return True
                time.sleep(0.05)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (a zombie would
    otherwise look alive); elsewhere it was re-parented and this is a no-op."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------------- containers
def engine_client():
    """A docker-py client of the local engine, or CauceError saying how to get one."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as error:  # docker raises several types for "no engine here"
        raise CauceError(
            f"no Docker engine answers ({error}); start one (`make engine`) or serve as a local "
            f"process (unset {SERVING_RUNTIME_ENV})"
        ) from None
    return client


class ContainerRuntime:
    """The serving image in a container on the host's network, listening on loopback
    only, reading the model from and logging requests to $CAUCE_HOME, which it mounts
    at the same path (so every path in the state means the same inside and out)."""

    kind = "container"

    def __init__(self, image: str):
        if not image:
            raise CauceError(f"{SERVING_RUNTIME_ENV}=container needs the serving image in ${SERVING_IMAGE_ENV}")
        self.image = image

    def start(self, arguments: list[str], environment: dict[str, str], log_file: Path, endpoint: str) -> dict:
        from docker.types import Mount

        from cauce.paths import cauce_home

        client = engine_client()
        # Named by port too: a redeploy to another port starts its container while the
        # previous one (same endpoint) still serves, and stops that one only afterwards.
        port = arguments[arguments.index("--port") + 1] if "--port" in arguments else ""
        name = f"cauce-serving-{endpoint}-{port}" if port else f"cauce-serving-{endpoint}"
        try:  # a container left by a crashed step: ours by name and label, never anyone else's
            stale = client.containers.get(name)
            if stale.labels.get(ENDPOINT_LABEL) == endpoint:
                stale.remove(force=True)
        except Exception:  # noqa: S110 - none there
            pass
        home = str(cauce_home().resolve())
        try:
            container = client.containers.run(
                self.image,
                command=arguments,
                name=name,
                detach=True,
                network_mode="host",
                user=f"{os.getuid()}:{os.getgid()}",
                environment={"CAUCE_HOME": home, "HOME": "/tmp", **environment},
                mounts=[Mount(target=home, source=home, type="bind")],
                labels={ENDPOINT_LABEL: endpoint},
            )
        except Exception as error:
            raise CauceError(f"could not start the serving image {self.image} for endpoint {endpoint!r}: {error}") from None
        return {"runtime": self.kind, "container_id": container.id, "container_name": name, "image": self.image,
                "server_log": f"docker logs {name}"}  # fmt: skip

    def _container(self, state: dict):
        import docker

        try:
            container = engine_client().containers.get(state.get("container_id", ""))
        except docker.errors.NotFound:
            return None
        if container.labels.get(ENDPOINT_LABEL) != state.get("endpoint"):
            return None
        return container

    def exited(self, state: dict) -> str | None:
        container = self._container(state)
        if container is None:
            return "is no longer running"
        if container.status in ("exited", "dead"):
            return f"exited with code {container.attrs['State'].get('ExitCode')}"
        return None

    def log_tail(self, state: dict, characters: int = 2000) -> str:
        container = self._container(state)
        return container.logs().decode(errors="replace")[-characters:] if container is not None else ""

    def owns(self, state: dict) -> bool:
        container = self._container(state)
        return container is not None and container.status == "running"

    def stop(self, state: dict, timeout: float) -> bool:
        container = self._container(state)
        if container is None:
            return False
        running = container.status == "running"
        container.stop(timeout=max(1, int(timeout)))
        container.remove(force=True)
        return running


def for_new_server():
    """The runtime a new serving program gets on this machine."""
    choice = os.environ.get(SERVING_RUNTIME_ENV, "process")
    if choice == "process":
        return ProcessRuntime()
    if choice == "container":
        return ContainerRuntime(os.environ.get(SERVING_IMAGE_ENV, ""))
    raise CauceError(f"{SERVING_RUNTIME_ENV} must be 'process' or 'container', got {choice!r}")


def of(state: dict):
    """The runtime that started the server ``state`` describes."""
    if state.get("runtime") == "container":
        return ContainerRuntime(state.get("image", "unknown"))
    return ProcessRuntime()
