"""Submit a compiled pipeline to a Kubeflow Pipelines cluster (the KFP v2 API) with
``kfp.Client``: `cauce submit PIPELINE --kfp-host URL`.

The spec is the very one `cauce submit` gives Vertex AI: the same compiled YAML, with the
submit-time caching choice applied the way the Vertex SDK applies it (to the tasks of every
DAG; ``kfp.Client`` alone would only change the root DAG's). Parameters are the same typed
values. kfp.Client itself sends the run: it parses the YAML into the ``PipelineSpec`` proto
and posts it inside a ``V2beta1Run``.

Every failure becomes one line (``CauceError``): an unreachable host, an address that does
not serve the KFP API, a namespace that is malformed, refused or meaningless on a
single-user deployment, and what the server refuses, with its own message.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml

from cauce.artifacts import CauceError

# A Kubernetes namespace name (an RFC 1123 label): what a multi-user deployment's profiles are.
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# How a run ends (V2beta1RuntimeState), and whether that counts as success for `--wait`.
TERMINAL_STATES = {"SUCCEEDED": True, "SKIPPED": True, "FAILED": False, "CANCELED": False}
HEALTHZ_PATH = "/apis/v2beta1/healthz"


@dataclass
class Connection:
    client: Any  # kfp.Client
    host: str
    multi_user: bool | None  # None: the health check needed credentials only kfp.Client has


@dataclass
class SubmittedRun:
    run_id: str
    experiment_id: str
    url: str


def check_namespace(namespace: str) -> None:
    if namespace and not _NAMESPACE.fullmatch(namespace):
        raise CauceError(
            f"--namespace {namespace!r} is not a Kubernetes namespace name "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        )


def _message(error) -> str:
    """The server's own message from a kfp_server_api.ApiException (a google.rpc.Status body)."""
    body = error.body.decode(errors="replace") if isinstance(error.body, bytes) else (error.body or "")
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0][:300] if body.strip() else (error.reason or "")
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("error") or payload)
    return str(payload)


@contextlib.contextmanager
def _api_errors(host: str, doing: str) -> Iterator[None]:
    """Turn what kfp.Client raises into one line naming the host and what was refused."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as error:
        status = error.status
        name = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        raise CauceError(f"Kubeflow Pipelines at {host} refused {doing} ({status} {name}): {_message(error)}") from None
    except urllib3.exceptions.HTTPError as error:
        reason = getattr(error, "reason", None) or error  # MaxRetryError wraps the cause
        # urllib3 starts the message with the connection object: keep the words after it.
        reason = re.sub(r"^(<[^>]*>|\w+\([^)]*\)): ", "", str(reason))
        raise CauceError(f"cannot reach Kubeflow Pipelines at {host}: {reason}") from None
    except (ValueError, TimeoutError) as error:  # kfp.Client's own checks (experiment lookup, health retries)
        raise CauceError(f"Kubeflow Pipelines at {host}: {doing} failed: {error}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp.Client prints links with print(), warns that it needs KFP >= 2.0.0-beta.2 and logs
    failed health checks with tracebacks: cauce prints its own lines instead."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", FutureWarning)
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _health(host: str, timeout: float) -> tuple[int, Any]:
    """One GET of the health route with the generated client, no retries: (status, response).

    kfp.Client's own check retries five times, five seconds apart, on any answer that is not
    200; a wrong address deserves one clear line at once."""
    import kfp_server_api

    config = kfp_server_api.Configuration(host=host)
    config.retries = False  # urllib3: no retries, and a redirect (to a sign-in page) is an answer
    api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(config))
    try:
        # A (connect, read) pair: the generated client ignores a plain float timeout.
        return 200, api.healthz_service_get_healthz(_request_timeout=(timeout, timeout))
    except kfp_server_api.ApiException as error:
        return error.status, error


def connect(host: str, namespace: str = "", timeout: float = 30) -> Connection:
    """A kfp.Client for ``host`` after checking that it answers as Kubeflow Pipelines and
    that ``namespace`` fits the deployment (required on multi-user, meaningless otherwise)."""
    check_namespace(namespace)
    if not host.startswith(("http://", "https://")):
        raise CauceError(f"--kfp-host must be an http:// or https:// URL, got {host!r}")
    host = host.rstrip("/")
    with _api_errors(host, "the health check"):
        status, health = _health(host, timeout)
    multi_user = None
    if status == 200:
        multi_user = bool(health.multi_user)
    elif status == 404:
        raise CauceError(
            f"{host} does not serve the Kubeflow Pipelines API (GET {HEALTHZ_PATH} answered 404): "
            "give the API's address, e.g. http://localhost:8888 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8888:80`"
        )
    # Otherwise (401/403/redirect to a sign-in page) kfp.Client may hold the credentials:
    # a *.pipelines.googleusercontent.com host's Google token, or the cookie/header of its
    # context file. It checks health itself when it does not know the namespace.
    if multi_user is True and not namespace:
        raise CauceError(
            f"Kubeflow Pipelines at {host} is a multi-user deployment: give --namespace (your profile's namespace)"
        )
    if multi_user is False and namespace:
        raise CauceError(
            f"Kubeflow Pipelines at {host} is a single-user deployment and has no namespaces: leave out --namespace"
        )
    import kfp

    with _quiet(), _api_errors(host, "the connection"):
        # kfp.Client's default namespace "kubeflow" means "not given" to it.
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
    return Connection(client=client, host=host, multi_user=multi_user)


def set_caching(spec: dict, enable_caching: bool) -> None:
    """Caching on every task of every DAG, exactly as the Vertex SDK sets it on submit
    (aiplatform.pipeline_jobs._set_enable_caching_value), so both targets get one spec."""
    for component in [spec["root"], *spec.get("components", {}).values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": enable_caching}


def prepare_spec(spec_path: str | Path, enable_caching: bool, directory: str | Path) -> Path:
    """The compiled spec with the submit-time caching applied, written under ``directory``."""
    spec = yaml.safe_load(Path(spec_path).read_text())
    set_caching(spec, enable_caching)
    path = Path(directory) / f"{Path(spec_path).stem}.kubeflow.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_url(host: str, run_id: str) -> str:
    return f"{host}/#/runs/details/{run_id}"


def submit(
    connection: Connection,
    spec_path: str | Path,
    values: dict,
    *,
    run_name: str,
    experiment: str = "",
    namespace: str = "",
    pipeline_root: str = "",
    service_account: str = "",
) -> SubmittedRun:
    """Create the run with kfp.Client.create_run_from_pipeline_package: the experiment is
    looked up by name (and created when missing) in ``namespace``; caching is already in
    the spec (prepare_spec), so kfp.Client is told not to override it."""
    with _quiet(), _api_errors(connection.host, f"the run (namespace {namespace!r})" if namespace else "the run"):
        result = connection.client.create_run_from_pipeline_package(
            str(spec_path),
            arguments=values,
            run_name=run_name,
            experiment_name=experiment or None,
            namespace=namespace or None,
            pipeline_root=pipeline_root or None,
            enable_caching=None,
            service_account=service_account or None,
        )
    run = result.run_info
    return SubmittedRun(run_id=run.run_id, experiment_id=run.experiment_id or "", url=run_url(connection.host, run.run_id))


def wait(
    connection: Connection,
    run_id: str,
    *,
    timeout: float = 0,
    poll_interval: float = 10,
    on_state: Callable[[str], None] | None = None,
) -> Any:
    """Poll the run until it ends (SUCCEEDED, SKIPPED, FAILED or CANCELED) and return it
    (a V2beta1Run). ``on_state`` hears each new state. kfp.Client's own wait polls every 5 s
    and does not count CANCELED as an end."""
    deadline = time.monotonic() + timeout if timeout else None
    last = None
    while True:
        with _quiet(), _api_errors(connection.host, f"the status of run {run_id}"):
            run = connection.client.get_run(run_id)
        state = (run.state or "RUNTIME_STATE_UNSPECIFIED").upper()
        if state != last and on_state:
            on_state(state)
        last = state
        if state in TERMINAL_STATES:
            return run
        if deadline is not None and time.monotonic() >= deadline:
            raise CauceError(
                f"run {run_id} is still {state} after {timeout:g} s; it goes on: {run_url(connection.host, run_id)}"
            )
        time.sleep(poll_interval)


def run_error(run: Any) -> str:
    """The reason a run failed, as the server reports it."""
    error = getattr(run, "error", None)
    return (getattr(error, "message", None) or "") if error else ""
