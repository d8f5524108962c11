"""Deploy executor, local side: run the model in our serving process on a local
port, health-check and smoke-test it before reporting success.

The serving process is the same program the serving image runs on Vertex
(``python -m cauce.serving``), started in its own session so it outlives the
pipeline step that launched it. Its state (pid, port, log folder) is kept in
``$CAUCE_HOME/serving/<endpoint>/state.json`` so a later deploy of the same
endpoint replaces it and ``cauce stop`` can end it.

The Vertex side lives in vertex.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cauce import data
from cauce.artifacts import CauceError
from cauce.model import METADATA_FILE
from cauce.paths import cauce_home


def endpoint_dir(endpoint_name: str) -> Path:
    if not endpoint_name or not all(c.isalnum() or c in "-_" for c in endpoint_name):
        raise CauceError(f"endpoint_name {endpoint_name!r} must be non-empty letters, digits, '-' or '_'")
    return cauce_home() / "serving" / endpoint_name


def smoke_instances_from(dataset_dir: str, split: str, model_dir: str, rows: int = 5) -> list[dict]:
    """A few raw rows of ``split`` holding exactly the model's input features."""
    features = json.loads((Path(model_dir) / METADATA_FILE).read_text())["features"]
    table = data.read_split(dataset_dir, split, columns=features).slice(0, rows)
    instances = table.to_pylist()
    for instance in instances:  # JSON has no NaN: a missing number is null
        for key, value in instance.items():
            if isinstance(value, float) and math.isnan(value):
                instance[key] = None
    return instances


def post_json(url: str, payload: dict, timeout: float = 10.0) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def stop_local(endpoint_name: str, timeout: float = 10.0) -> bool:
    """Stop the local server of ``endpoint_name``; True if one was running."""
    state_file = endpoint_dir(endpoint_name) / "state.json"
    if not state_file.exists():
        return False
    state = json.loads(state_file.read_text())
    stopped = False
    try:
        os.killpg(state["pid"], signal.SIGTERM)
        stopped = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(state["pid"])
            os.killpg(state["pid"], 0)
            time.sleep(0.05)
        os.killpg(state["pid"], signal.SIGKILL)
    except ProcessLookupError:
        pass
    state_file.unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child (a zombie would
    otherwise look alive); elsewhere it was re-parented and this is a no-op."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def local_endpoint(endpoint_name: str) -> dict | None:
    state_file = endpoint_dir(endpoint_name) / "state.json"
    return json.loads(state_file.read_text()) if state_file.exists() else None


def deploy_local(
    model_dir: str,
    endpoint_name: str,
    port: int = 8080,
    host: str = "127.0.0.1",
    request_log_dir: str = "",
    smoke_instances: list[dict] | None = None,
    startup_timeout: float = 60.0,
) -> dict:
    """Serve ``model_dir`` on ``host:port``; return the endpoint's URLs once it answers."""
    if not (Path(model_dir) / METADATA_FILE).exists():
        raise CauceError(f"{model_dir} is not a cauce model directory ({METADATA_FILE} missing)")
    state_dir = endpoint_dir(endpoint_name)
    state_dir.mkdir(parents=True, exist_ok=True)
    stop_local(endpoint_name)
    if not _port_free(host, port):
        raise CauceError(f"port {port} on {host} is in use by another process; pass a free port")
    request_log_dir = request_log_dir or str(state_dir / "requests")
    server_log = state_dir / "server.log"
    command = [
        sys.executable, "-m", "cauce.serving",
        "--model-dir", model_dir, "--host", host, "--port", str(port),
        "--request-log-dir", request_log_dir, "--endpoint", endpoint_name,
    ]
    with open(server_log, "ab") as log_handle:
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            command, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    base = f"http://{host}:{port}"
    state = {
        "pid": process.pid, "port": port, "host": host, "model_dir": model_dir,
        "predict_url": f"{base}/predict", "health_url": f"{base}/health",
        "request_log_dir": request_log_dir, "server_log": str(server_log), "started_at": time.time(),
    }
    (state_dir / "state.json").write_text(json.dumps(state, indent=2))
    try:
        _wait_healthy(process, state["health_url"], server_log, startup_timeout)
        if smoke_instances:
            smoke_test(state["predict_url"], smoke_instances)
    except BaseException:
        stop_local(endpoint_name)
        raise
    return state


def _wait_healthy(process: subprocess.Popen, health_url: str, server_log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = server_log.read_text()[-2000:]
            raise CauceError(f"the serving process exited with code {process.returncode} before it was healthy:\n{tail}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise CauceError(f"the serving process did not answer {health_url} within {timeout:.0f} s (log: {server_log})")


def smoke_test(predict_url: str, instances: list[dict]) -> list[dict]:
    """Send real instances; fail unless every one gets a well-formed prediction."""
    status, body = post_json(predict_url, {"instances": instances})
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if status != 200 or not isinstance(predictions, list) or len(predictions) != len(instances):
        raise CauceError(f"smoke test of {predict_url} failed: HTTP {status}, body {str(body)[:500]}")
    for prediction in predictions:
        if not _well_formed(prediction):
            raise CauceError(f"smoke test of {predict_url} returned a malformed prediction {prediction}")
    return predictions


def _well_formed(prediction) -> bool:
    """binary {"label", "score" in [0, 1]}, multiclass {"label", "scores": probabilities}, regression {"value"}."""
    if not isinstance(prediction, dict):
        return False
    if "score" in prediction:
        score = prediction["score"]
        return isinstance(score, (int, float)) and 0.0 <= score <= 1.0
    if "scores" in prediction:
        scores = prediction["scores"]
        return isinstance(scores, list) and bool(scores) and all(
            isinstance(p, (int, float)) and 0.0 <= p <= 1.0 for p in scores
        )
    value = prediction.get("value")
    return isinstance(value, (int, float)) and math.isfinite(value)
