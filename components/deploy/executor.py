"""Deploy executor, local side: run the model in our serving process on a local
port, health-check and smoke-test it before reporting success; a later version
goes into the same process as a canary (two versions side by side, traffic
split, promotion or rollback), the way vertex.py does it on a Vertex endpoint.

The serving process is the same program the serving image runs on Vertex
(``python -m cauce.serving``), started as a process in its own session, or as the
serving image in a container of the local Docker engine (runtimes.py), so that it
outlives the pipeline step that launched it, with its admin routes enabled (loopback
only, behind a random token). Its state (pid or container, port, log folder,
deployments, traffic split, token) is kept in ``$CAUCE_HOME/serving/<endpoint>/state.json`` (mode
0600) so a later deploy of the same endpoint finds it and ``cauce stop`` can end it.

The Vertex side lives in vertex.py.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from cauce import data
from cauce.artifacts import CauceError, atomic_file
from cauce.components.deploy import runtimes
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


def run_deploy_local(
    model_dir: str,
    smoke_dataset_dir: str,
    endpoint_name: str,
    port: int = 8080,
    request_log_dir: str = "",
    canary_traffic_percentage: int = 100,
    smoke_split: str = "eval",
    smoke_rows: int = 5,
    set_champion: bool = False,
    registered: dict | None = None,
    mlflow_tracking_uri: str = "",
) -> dict:
    """What the ``deploy`` component does: smoke-test rows from ``smoke_dataset_dir``,
    then :func:`deploy_local` with promotion (a canary is promoted or rolled back).

    With ``set_champion``, once the version serves, the MLflow registry's ``champion``
    alias moves to it (``registered``: the register step's metadata, model_name and
    version): see :func:`make_champion`."""
    champion = _registered_version(registered) if set_champion else None  # checked before anything changes
    registry = None
    if champion:
        # Opening the registry is mostly MLflow's import (~1.5 s): on a thread, while the
        # serving process starts and answers its smoke test. An error surfaces at .result().
        from concurrent.futures import ThreadPoolExecutor

        from cauce.model_registry import LocalRegistry

        opening = ThreadPoolExecutor(1, thread_name_prefix="open-registry")
        registry = opening.submit(LocalRegistry, mlflow_tracking_uri)
        opening.shutdown(wait=False)
    instances = smoke_instances_from(smoke_dataset_dir, smoke_split, model_dir, smoke_rows)
    result = deploy_local(
        model_dir=model_dir,
        endpoint_name=endpoint_name,
        port=port,
        request_log_dir=request_log_dir,
        smoke_instances=instances,
        traffic_percentage=canary_traffic_percentage,
        promote=True,
    )
    if champion:
        result["champion"] = make_champion(registry.result(), *champion, result["predict_url"])
    return result


def _registered_version(registered: dict | None) -> tuple[str, str]:
    registered = registered or {}
    name, version = str(registered.get("model_name") or ""), str(registered.get("version") or "")
    if not name or not version:
        raise CauceError(
            f"set_champion needs the registered model's model_name and version (the register step's metadata), got {registered}"
        )
    return name, version


def make_champion(registry, model_name: str, version: str, serving: str, attempts: int = 3) -> str:
    """Point the registry's ``champion`` alias at ``model_name``/``version``, which a deploy
    has just put in service at ``serving`` (the last step of a promotion, so the alias
    never names a version nothing serves; until then the version is ``pending``).
    Retried; if the registry still refuses, the error says the version serves and how
    to finish (``cauce models approve``, whose deploy then changes nothing)."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            registry.make_champion(model_name, version)
            return version
        except Exception as error:  # noqa: BLE001 - retried, then reported with the way out
            last = error
            time.sleep(attempt + 1)
    raise CauceError(
        f"{model_name}/{version} serves {serving}, but the registry's champion alias could not be moved to it "
        f"({last}); it stays 'pending': `cauce models approve {model_name}/{version}` makes it champion"
    )


def endpoint_metadata(result: dict) -> dict:
    """The scalar and mapping fields of a deploy result: what an endpoint artifact records."""
    return {key: value for key, value in result.items() if isinstance(value, (str, int, float, dict))}


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
    """Stop the local server of ``endpoint_name``; True if one was running. Only a server
    that is still the one the endpoint's state recorded is stopped (see runtimes.py)."""
    state = local_endpoint(endpoint_name)
    if state is None:
        return False
    stopped = runtimes.of(state).stop(state, timeout)
    (endpoint_dir(endpoint_name) / "state.json").unlink(missing_ok=True)
    return stopped


def local_endpoint(endpoint_name: str) -> dict | None:
    """The endpoint's recorded state, or None when it has none. A state file that is
    not a JSON object (edited, truncated by a full disk) is an error naming it: it is
    never guessed at, since stopping acts on what it names."""
    state_file = endpoint_dir(endpoint_name) / "state.json"
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text())
    except (ValueError, OSError) as error:
        raise CauceError(f"endpoint {endpoint_name!r} has an unreadable state file {state_file}: {error}") from None
    if not isinstance(state, dict):
        raise CauceError(f"endpoint {endpoint_name!r} has a state file {state_file} that is not a JSON object")
    return state


def _write_state(endpoint_name: str, state: dict) -> None:
    # mkstemp makes the file 0600: it holds the admin token of the serving process.
    with atomic_file(endpoint_dir(endpoint_name) / "state.json") as handle:
        json.dump(state, handle, indent=2)


def _public(state: dict) -> dict:
    """The state without its secret: what the step reports."""
    return {key: value for key, value in state.items() if key != "admin_token"}


def _new_deployed_model_id() -> str:
    # Numeric like Vertex's ids, and unique across restarts, so that request logs of
    # different runs never attribute answers of two model versions to one id.
    return str(time.time_ns() // 1000)


def deploy_local(
    model_dir: str,
    endpoint_name: str,
    port: int = 8080,
    host: str = "127.0.0.1",
    request_log_dir: str = "",
    smoke_instances: list[dict] | None = None,
    startup_timeout: float = 60.0,
    traffic_percentage: int = 100,
    promote: bool = False,
) -> dict:
    """Serve ``model_dir`` behind the local endpoint ``endpoint_name`` on ``host:port``
    and return the endpoint's URLs, deployment ids and traffic split once it answers.

    The same flow as :func:`cauce.components.deploy.vertex.deploy_vertex`, against the
    local serving process. When a healthy serving process of this endpoint already
    runs on ``host:port``, the new version is loaded into it next to the serving one
    (a model that does not load changes nothing) and, with ``smoke_instances``,
    smoke-tested on its own route before it gets any traffic; then it takes
    ``traffic_percentage`` of the traffic (the others scaled down in proportion) and
    the endpoint route is smoke-tested until the new version has answered there too.
    If any of that fails, the new version is undeployed and the previous traffic split
    restored (the previous version serves throughout) and :class:`CauceError` says
    "rolled back". At 100 %, or with ``promote`` once the canary passed, the new
    version takes all the traffic and the others are undeployed.

    Otherwise (no server yet, or it runs on another port) a new serving process is
    started with the model at 100 % (``traffic_percentage`` < 100 is then an error, as
    on Vertex for an endpoint without deployments). The previous one keeps serving
    until the new one has answered its health check and smoke test, and only then is
    stopped; if the new one fails, it is stopped and the previous process, its traffic
    and its state file are left as they were. A server of this endpoint that holds
    ``host:port`` but cannot take the version in place (it logs elsewhere, or does not
    answer its admin routes) is never stopped to make room: that is an error, and
    nothing changes.
    """
    if not (Path(model_dir) / METADATA_FILE).exists():
        raise CauceError(f"{model_dir} is not a cauce model directory ({METADATA_FILE} missing)")
    if isinstance(traffic_percentage, bool) or not isinstance(traffic_percentage, int) or not 0 < traffic_percentage <= 100:
        raise CauceError(f"traffic_percentage must be an integer in 1..100, got {traffic_percentage!r}")
    state_dir = endpoint_dir(endpoint_name)
    state_dir.mkdir(parents=True, exist_ok=True)
    request_log_dir = request_log_dir or str(state_dir / "requests")
    previous = local_endpoint(endpoint_name)
    running = _reusable_server(previous, host, port, request_log_dir)
    if running is not None:
        unchanged = _already_serving(running, model_dir)
        if unchanged is not None:
            return unchanged
        return _roll_out(endpoint_name, running, model_dir, traffic_percentage, promote, smoke_instances, startup_timeout)
    if traffic_percentage < 100 and not promote:
        raise CauceError(
            f"traffic_percentage={traffic_percentage} but endpoint {endpoint_name!r} has no healthy serving process "
            f"on {host}:{port} (logging to {request_log_dir}) to put the canary next to: the first deployment "
            "must take 100 % of the traffic"
        )
    # With promote, a canary that has no serving version to protect simply starts at 100 %
    # (as on Vertex): a pipeline configured for canaries can make its first deployment.
    return _start_server(model_dir, endpoint_name, host, port, request_log_dir, smoke_instances, startup_timeout, previous)


def _already_serving(state: dict, model_dir: str) -> dict | None:
    """The endpoint as it is when the one version taking all its traffic is this model
    (the same directory, or the same files by the registry's content hash, which leaves
    out when the model was trained): deploying it again is a no-op, the same process
    and deployment keep serving (``rollout``: ``unchanged``). None otherwise."""
    split, current = state.get("traffic_split") or {}, state.get("model_dir")
    if not current or len(split) != 1 or list(split.values()) != [100]:
        return None
    from cauce.components.register.executor import content_hash

    try:
        same = Path(current).resolve() == Path(model_dir).resolve() or content_hash(current) == content_hash(model_dir)
    except OSError:  # the serving copy is gone: deploy as usual
        return None
    if not same:
        return None
    return {**_public(state), "rollout": "unchanged"}


def _serving(state: dict | None) -> bool:
    """Whether ``state`` names a server that still runs (identity checked, see runtimes.py)."""
    return state is not None and runtimes.of(state).owns(state)


def _start_server(
    model_dir: str,
    endpoint_name: str,
    host: str,
    port: int,
    request_log_dir: str,
    smoke_instances: list[dict] | None,
    startup_timeout: float,
    previous: dict | None = None,
) -> dict:
    """Start a new serving process of the endpoint serving ``model_dir`` alone; once it
    answers, stop the previous one (see :func:`deploy_local`)."""
    previous = previous if _serving(previous) else None
    keeps = (
        f"; nothing was changed: endpoint {endpoint_name!r} keeps serving {previous.get('traffic_split')} "
        f"at {previous.get('predict_url')}"
        if previous
        else ""
    )
    if previous and (previous.get("host"), previous.get("port")) == (host, port):
        raise CauceError(
            f"endpoint {endpoint_name!r} already serves on {host}:{port} but cannot load the new version in place "
            f"(it logs requests to {previous.get('request_log_dir')!r}, this deploy to {request_log_dir!r}, or its "
            f"admin routes do not answer){keeps}. Deploy with the same request_log_dir, to another port, "
            f"or stop it first (cauce stop {endpoint_name})"
        )
    if not _port_free(host, port):
        raise CauceError(f"port {port} on {host} is in use by another process; pass a free port{keeps}")
    from cauce.serving import ADMIN_TOKEN_ENV

    server_log = endpoint_dir(endpoint_name) / "server.log"
    deployed_model_id = _new_deployed_model_id()
    admin_token = secrets.token_urlsafe(32)
    runtime = runtimes.for_new_server()
    started = runtime.start(
        runtimes.serving_command(model_dir, host, port, request_log_dir, endpoint_name, deployed_model_id),
        {ADMIN_TOKEN_ENV: admin_token},
        server_log,
        endpoint_name,
    )
    base = f"http://{host}:{port}"
    state = {
        **started, "endpoint": endpoint_name, "port": port, "host": host, "model_dir": model_dir,
        "predict_url": f"{base}/predict", "health_url": f"{base}/health",
        "request_log_dir": request_log_dir, "started_at": time.time(),
        "deployed_model_id": deployed_model_id, "traffic_split": {deployed_model_id: 100},
        "deployments": {deployed_model_id: model_dir}, "rollout": "started", "admin_token": admin_token,
    }
    try:
        _wait_healthy(runtime, state, startup_timeout)
        if smoke_instances:
            smoke_test(state["predict_url"], smoke_instances)
    except BaseException as error:
        # Stop the new server by its own record: the state file still names the previous
        # one, which keeps serving untouched.
        runtime.stop(state, 10.0)
        if isinstance(error, CauceError):
            raise CauceError(f"{error}{keeps}") from None
        raise
    # The new server answers: from here on the state names it, and the previous one goes.
    _write_state(endpoint_name, state)
    if previous:
        runtimes.of(previous).stop(previous, 10.0)
    return _public(state)


def _reusable_server(state: dict | None, host: str, port: int, request_log_dir: str) -> dict | None:
    """The endpoint's state if its serving process runs at this address, logs where
    asked, and answers its admin routes; None otherwise."""
    if not state or not state.get("admin_token"):
        return None
    if (state.get("host"), state.get("port"), state.get("request_log_dir")) != (host, port, request_log_dir):
        return None
    try:
        _admin(state, "GET", "/admin/deployments", timeout=5.0)
    except (CauceError, OSError):
        return None
    return state


def _admin(state: dict, method: str, route: str, payload: dict | None = None, timeout: float = 60.0) -> dict:
    """Call an admin route of the endpoint's serving process (loopback, with its token)."""
    url = f"http://{state['host']}:{state['port']}{route}"
    request = urllib.request.Request(
        url,
        data=None if payload is None else json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {state['admin_token']}"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - our own loopback server
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", "")
        except ValueError:
            message = ""
        raise CauceError(f"the serving process refused {method} {route}: HTTP {error.code} {message}") from None


def _with_share(traffic_split: dict[str, int], deployed_model_id: str, share: int) -> dict[str, int]:
    """``deployed_model_id`` at ``share`` %, the others scaled down in proportion (what
    Vertex does to an endpoint's split when a model is deployed with a traffic
    percentage); largest remainders keep integer percentages summing to 100."""
    rest = 100 - share
    total = sum(traffic_split.values())
    exact = {other: percent * rest / total for other, percent in traffic_split.items()}
    scaled = {other: int(value) for other, value in exact.items()}
    by_remainder = sorted(exact, key=lambda other: exact[other] - scaled[other], reverse=True)
    for other in by_remainder[: rest - sum(scaled.values())]:
        scaled[other] += 1
    return {**scaled, deployed_model_id: share}


def _roll_out(
    endpoint_name: str,
    state: dict,
    model_dir: str,
    traffic_percentage: int,
    promote: bool,
    smoke_instances: list[dict] | None,
    load_timeout: float,
) -> dict:
    """Load ``model_dir`` into the running server next to the serving version(s), test
    it, give it its share; promote it or roll it back (see :func:`deploy_local`)."""
    deployed_model_id = _new_deployed_model_id()
    previous_split = _admin(state, "GET", "/admin/deployments")["traffic_split"]
    try:
        _admin(state, "POST", "/admin/deployments", {"deployed_model_id": deployed_model_id, "model_dir": model_dir}, load_timeout)
    except CauceError as error:
        raise CauceError(f"{error}; nothing was deployed, endpoint {endpoint_name!r} keeps serving {previous_split}") from None
    base = f"http://{state['host']}:{state['port']}"
    try:
        if smoke_instances:
            # On its own route first: no user request reaches a version that fails here.
            smoke_test(f"{base}/v1/deployments/{deployed_model_id}:predict", smoke_instances)
        _admin(state, "PUT", "/admin/traffic", {"traffic_split": _with_share(previous_split, deployed_model_id, traffic_percentage)})
        if smoke_instances:
            _smoke_test_through_endpoint(state["predict_url"], smoke_instances, deployed_model_id, traffic_percentage)
    except Exception as error:  # whatever failed, the previous version must keep all the traffic
        try:
            _admin(state, "PUT", "/admin/traffic", {"traffic_split": previous_split})
            _admin(state, "DELETE", f"/admin/deployments/{deployed_model_id}")
        except Exception as rollback_error:
            raise CauceError(
                f"{error}; rolling back deployment {deployed_model_id} failed too: {rollback_error}"
            ) from error
        raise CauceError(
            f"{error}; rolled back: deployment {deployed_model_id} undeployed, traffic split restored to {previous_split}"
        ) from error
    rollout = "replaced" if traffic_percentage == 100 else "canary"
    if promote and traffic_percentage < 100:
        _admin(state, "PUT", "/admin/traffic", {"traffic_split": {deployed_model_id: 100}})
        traffic_percentage, rollout = 100, "promoted"
    described = _admin(state, "GET", "/admin/deployments")
    if traffic_percentage == 100:
        for other in described["deployments"]:
            if other != deployed_model_id:
                described = _admin(state, "DELETE", f"/admin/deployments/{other}")
    state.update(
        model_dir=model_dir,
        deployed_model_id=deployed_model_id,
        traffic_split=described["traffic_split"],
        deployments={other: deployment["model_dir"] for other, deployment in described["deployments"].items()},
        rollout=rollout,
    )
    _write_state(endpoint_name, state)
    return _public(state)


def _smoke_test_through_endpoint(predict_url: str, instances: list[dict], deployed_model_id: str, share: int) -> None:
    """Smoke requests through the endpoint route until the new deployment answered one.
    The split is a deterministic round robin, so alone it answers within 100/share
    requests; five times that leaves room for other clients' requests in between."""
    attempts = 5 * math.ceil(100 / share)
    for _ in range(attempts):
        if _smoke_request(predict_url, instances).get("deployed_model_id") == deployed_model_id:
            return
    raise CauceError(
        f"smoke test of {predict_url} failed: deployment {deployed_model_id} answered none of {attempts} requests "
        f"although it should take {share} % of the traffic"
    )


def _wait_healthy(runtime, state: dict, timeout: float) -> None:
    health_url = state["health_url"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = runtime.exited(state)
        if gone is not None:
            raise CauceError(f"the serving {runtime.kind} {gone} before it was healthy:\n{runtime.log_tail(state)}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise CauceError(f"the serving {runtime.kind} did not answer {health_url} within {timeout:.0f} s (log: {state['server_log']})")


def smoke_test(predict_url: str, instances: list[dict]) -> list[dict]:
    """Send real instances; fail unless every one gets a well-formed prediction."""
    return _smoke_request(predict_url, instances)["predictions"]


def _smoke_request(predict_url: str, instances: list[dict]) -> dict:
    """One smoke request; its whole answer once every prediction in it is well formed."""
    status, body = post_json(predict_url, {"instances": instances})
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if status != 200 or not isinstance(predictions, list) or len(predictions) != len(instances):
        raise CauceError(f"smoke test of {predict_url} failed: HTTP {status}, body {str(body)[:500]}")
    for prediction in predictions:
        if not _well_formed(prediction):
            raise CauceError(f"smoke test of {predict_url} returned a malformed prediction {prediction}")
    return body


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
