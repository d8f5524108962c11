"""The prediction server: a plain ASGI app honouring the Vertex AI custom-container
contract and KServe's V1 protocol.

* ``GET  AIP_HEALTH_ROUTE`` (default ``/health``) -> 200 once a model is loaded.
* ``POST AIP_PREDICT_ROUTE`` (default ``/predict``) and ``POST /v1/models/<name>:predict``:
  ``{"instances": [...], "parameters": {...}}`` -> ``{"predictions": [...],
  "deployed_model_id": ...}``, answered by one of the deployments the traffic split
  names.
* ``POST /v1/deployments/<deployed_model_id>:predict``: the same, answered by that
  deployment whatever its traffic share (the way Vertex lets a caller address one
  deployed model); the deploy step smoke-tests a canary here before it gets traffic.
* Bodies over 1.5 MB (Vertex's online-prediction limit) get 413; malformed JSON,
  a missing ``instances`` list, a missing field or a wrong type get 400 with a
  message that names the problem.
* Every answered request is appended to a JSON Lines log in the shape Vertex
  request-response logging writes to BigQuery, which the monitor reads, with the
  ``deployed_model_id`` that answered it.

Like a Vertex endpoint, one process can hold several deployments (model versions)
and split traffic between them. The split is changed through admin routes
(``/admin/...``, see :meth:`PredictionApp.admin`) that the local deploy step uses for
canary roll-outs. They exist only when the process is started with an admin token
(``python -m cauce.serving --admin``, token in ``CAUCE_SERVING_ADMIN_TOKEN``), answer
loopback clients only, and require the token: loading a model bundle unpickles it,
so no one else may choose what gets loaded. The serving image never enables them;
on Vertex the endpoint itself splits traffic between containers.

No web framework: per request we only parse JSON, encode with the fitted
transform in numpy and call the estimator (the per-request pandas DataFrame
is what makes other servers slow: docs/architecture.md, "Measured facts"). JSON goes through orjson, which
parses and writes the request, the response and the request-log line several
times faster than the standard library. bench/bench_serving.py measures the
whole path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import ipaddress
import itertools
import logging
import os
import time
from pathlib import Path

import orjson

from cauce import model as model_bundle
from cauce.artifacts import CauceError
from cauce.model import LoadedModel

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_572_864  # 1.5 MB, Vertex's online prediction request limit
# Slow clients (docs/serving.md "Limits"): a body must arrive within BODY_TIMEOUT_S of
# its headers, and at most MAX_BUFFERING bodies that did not arrive in one piece are
# buffered at once (each up to MAX_BODY_BYTES): 200 slow uploaders can hold neither the
# server's memory nor its good clients' latency. The header timeout is the protocol's
# (server.py).
BODY_TIMEOUT_S = float(os.environ.get("CAUCE_SERVE_BODY_TIMEOUT_S", "10"))
MAX_BUFFERING = int(os.environ.get("CAUCE_SERVE_MAX_BUFFERING", "64"))
DEPLOYMENT_ROUTE = "/v1/deployments/"  # + <deployed_model_id>:predict
ADMIN_PREFIX = "/admin/"
# Request-log durability: a request's line is written to the log file (one write(2) on
# an O_APPEND descriptor, into the kernel's page cache) before its response is sent.
# A SIGKILLed or crashed server therefore loses no acknowledged request; only a crash
# of the machine itself can lose lines the kernel had not written to disk yet (no
# fsync). bench/bench_request_log.py measures the cost (bench/README.md). Requests in
# flight together (their bodies came in the same turn of the event loop) share that
# write: each holds its line for one turn, then one write(2) logs every held line,
# still before any of them is answered (PredictionApp.__call__). In the server a
# write(2) to a file costs ~6-8 us of CPU, a seventh of a one-instance request at c=8.
LOG_DURABILITY = "zero acknowledged requests lost on SIGKILL (written before the response; no fsync)"
_JSON = [(b"content-type", b"application/json")]


class RequestLog:
    """Append-only JSONL log, one line per request: the row Vertex request-response logging
    writes to BigQuery (``cauce.request_logs``), logging_time as ISO-8601 text.

    Each line is written with one ``write(2)`` on an ``O_APPEND`` descriptor before
    the request is answered (see LOG_DURABILITY): the line is then the kernel's, so
    killing the server, even with SIGKILL, loses no answered request, and lines of
    concurrent writers never interleave. It costs about a microsecond more per
    request than the 0.2 s buffered flushing it replaced (bench/README.md), which
    lost up to 0.2 s of answered requests on SIGKILL. Requests answered together may
    share one write (``hold=True``, then :meth:`write_held`).
    """

    def __init__(self, directory: str | os.PathLike, endpoint: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.path = self.directory / f"requests-{stamp}-{os.getpid()}.jsonl"
        self.endpoint = endpoint
        # request_id is a number, as in Vertex's table (NUMERIC): a random 31-bit prefix per
        # log and a counter below it, within the 64-bit integers JSON encoders write.
        self._request_ids = itertools.count((int.from_bytes(os.urandom(4), "big") >> 1) << 32 | 1)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._second, self._second_text = -1, ""
        self._held: list[bytes] = []  # lines of requests not answered yet (write(..., hold=True))

    def _logging_time(self) -> str:
        """ISO 8601 UTC time with microseconds, as ``datetime.isoformat`` writes it; the
        date-and-second part is formatted once per second (``isoformat`` per request
        was a tenth of a one-instance request's own Python time)."""
        now = time.time_ns() // 1000  # integer microseconds: no float rounding to undo
        second, micros = divmod(now, 1_000_000)
        if second != self._second:
            self._second_text = dt.datetime.fromtimestamp(second, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{micros:06d}+00:00"

    def write(
        self, deployed_model_id: str, instances: list, predictions: list, response_payload: list | None = None, hold: bool = False
    ) -> None:
        """Log one request. ``response_payload``, the predictions already serialized one
        string each, saves serializing them a second time. ``hold``: keep the line until
        :meth:`write_held`, which the caller must call before it answers the request."""
        dumps = orjson.dumps
        record = {
            "endpoint": self.endpoint,
            "deployed_model_id": deployed_model_id,
            "logging_time": self._logging_time(),
            "request_id": next(self._request_ids),
            "request_payload": [dumps(instances[0]).decode()]
            if len(instances) == 1
            else [dumps(instance).decode() for instance in instances],
            "response_payload": response_payload
            if response_payload is not None
            else [dumps(prediction).decode() for prediction in predictions],
        }
        line = dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if hold:
            self._held.append(line)
        else:
            self._write(line)

    def write_held(self) -> None:
        """Write every held line (this request's, and those of the requests that came in
        the same turn of the event loop) with one ``write(2)``; nothing if another request
        already did. The lines stay held until they are written: a request whose line a
        failed write left behind writes it (or fails) itself before it answers."""
        if self._held:
            self._write(b"".join(self._held) if len(self._held) > 1 else self._held[0])
            self._held.clear()

    def _write(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        while written < len(data):  # a short write (a signal, a nearly full disk): finish the line
            written += os.write(self._fd, data[written:])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Deployment:
    """One model version behind the endpoint (a Vertex DeployedModel)."""

    __slots__ = ("deployed_model_id", "model", "model_dir", "numeric_predictions", "_id_json")

    def __init__(self, deployed_model_id: str, model: LoadedModel, model_dir: str = ""):
        self.deployed_model_id = deployed_model_id
        self.model = model
        self.model_dir = model_dir
        # Binary and regression predictions hold numbers only ({"label": 0|1, "score": p},
        # {"value": x}): their serialized list splits exactly at "},{".
        self.numeric_predictions = self.model.task in ("binary", "regression")
        self._id_json = orjson.dumps(deployed_model_id)

    def response(self, predictions: list) -> tuple[bytes, list | None]:
        """The response body, and for numeric predictions each one's JSON text for the
        request log, cut from the same serialization (one orjson call, not one each)."""
        if not self.numeric_predictions:
            return orjson.dumps({"predictions": predictions, "deployed_model_id": self.deployed_model_id}), None
        serialized = orjson.dumps(predictions)
        body = b'{"predictions":' + serialized + b',"deployed_model_id":' + self._id_json + b"}"
        if len(predictions) == 1:
            return body, [serialized[1:-1].decode()]
        return body, serialized[1:-1].decode().replace("},{", "}\0{").split("\0")


def load_deployment(deployed_model_id: str, model_dir: str) -> Deployment:
    """Load a model bundle (local folder or gs:// URI) as a deployment."""
    return Deployment(deployed_model_id, model_bundle.load(model_bundle.fetch_model_dir(model_dir), serving=True), model_dir)


def weighted_round_robin(traffic_split: dict[str, int]) -> list[str]:
    """A 100-slot schedule holding each id exactly its share of slots, spread evenly
    (nginx's smooth weighted round robin): every 100 consecutive requests follow the
    split exactly, and a 10 % canary answers every tenth request, not ten in a row."""
    current = dict.fromkeys(traffic_split, 0)
    schedule = []
    for _ in range(100):
        for deployed_model_id, share in traffic_split.items():
            current[deployed_model_id] += share
        chosen = max(current, key=current.__getitem__)
        current[chosen] -= 100
        schedule.append(chosen)
    return schedule


def _json_response(status: int, payload: dict) -> tuple[int, bytes]:
    return status, orjson.dumps(payload)


def _is_loopback(client) -> bool:
    try:
        return ipaddress.ip_address(client[0]).is_loopback
    except (TypeError, IndexError, ValueError):  # no client (unix socket) or not an IP address
        return False


class PredictionApp:
    def __init__(
        self,
        model: LoadedModel,
        model_name: str = "model",
        health_route: str = "/health",
        predict_route: str = "/predict",
        request_log: RequestLog | None = None,
        deployed_model_id: str = "",
        model_dir: str = "",
        admin_token: str = "",
    ):
        self.model_name = model_name
        self.health_route = health_route
        self.predict_route = predict_route
        self.kserve_predict = f"/v1/models/{model_name}:predict"
        self.kserve_ready = f"/v1/models/{model_name}"
        self.request_log = request_log
        self.admin_token = admin_token
        self.deployments: dict[str, Deployment] = {}
        self.body_timeout_s = BODY_TIMEOUT_S
        self.max_buffering = MAX_BUFFERING
        self.buffering = 0  # bodies being gathered from several chunks right now
        self.traffic_split: dict[str, int] = {}
        # The server's set of requests in flight (uvicorn's server_state.tasks; set by
        # cauce.serving.server): with others in flight, request-log writes are batched.
        self.in_flight: set | None = None
        self._schedule: list[Deployment] = []
        self._turns = itertools.count()
        self.add_deployment(Deployment(deployed_model_id, model, model_dir))
        self.set_traffic_split({deployed_model_id: 100})

    # ---- deployments and traffic (what the admin routes call) ----------------------

    @property
    def model(self) -> LoadedModel:
        """The model taking the largest share of the traffic."""
        return self.deployments[max(self.traffic_split, key=self.traffic_split.__getitem__)].model

    def add_deployment(self, deployment: Deployment) -> None:
        """Serve ``deployment`` next to the others, with no traffic until the split gives it some."""
        if deployment.deployed_model_id in self.deployments:
            raise CauceError(f"deployed_model_id {deployment.deployed_model_id!r} is already deployed")
        self.deployments[deployment.deployed_model_id] = deployment

    def set_traffic_split(self, traffic_split: dict) -> None:
        """Route predictions by ``{deployed_model_id: percent}`` (integers summing to 100,
        as Vertex requires); deployments left out get no traffic."""
        if not isinstance(traffic_split, dict) or not traffic_split:
            raise CauceError('traffic_split must be a JSON object {"<deployed_model_id>": percent, ...}')
        for deployed_model_id, share in traffic_split.items():
            if deployed_model_id not in self.deployments:
                raise CauceError(
                    f"traffic_split names deployed_model_id {deployed_model_id!r}, which is not deployed; "
                    f"deployed: {sorted(self.deployments)}"
                )
            if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
                raise CauceError(f"traffic_split[{deployed_model_id!r}] must be an integer percent 0..100, got {share!r}")
        if sum(traffic_split.values()) != 100:
            raise CauceError(f"traffic_split percentages must sum to 100, got {sum(traffic_split.values())}: {traffic_split}")
        shares = {deployed_model_id: share for deployed_model_id, share in traffic_split.items() if share}
        self._schedule = [self.deployments[d] for d in weighted_round_robin(shares)]
        self.traffic_split = shares

    def remove_deployment(self, deployed_model_id: str) -> None:
        if deployed_model_id not in self.deployments:
            raise CauceError(f"deployed_model_id {deployed_model_id!r} is not deployed; deployed: {sorted(self.deployments)}")
        if self.traffic_split.get(deployed_model_id):
            raise CauceError(
                f"deployment {deployed_model_id!r} still takes {self.traffic_split[deployed_model_id]} % of the "
                "traffic: move it elsewhere with the traffic split first"
            )
        del self.deployments[deployed_model_id]

    def describe(self) -> dict:
        return {
            "deployments": {d.deployed_model_id: {"model_dir": d.model_dir} for d in self.deployments.values()},
            "traffic_split": self.traffic_split,
        }

    # ---- predictions ---------------------------------------------------------------

    # The whole request -> response path for the public routes, without ASGI, so tests can call it directly.
    def handle(self, method: str, path: str, body: bytes, hold_log: bool = False) -> tuple[int, bytes]:
        """``hold_log``: the request-log line is held (``RequestLog.write_held`` writes it)."""
        if path == self.predict_route or path == self.kserve_predict:
            if method != "POST":
                return _json_response(405, {"error": f"use POST for {path}"})
            return self.predict(body, self._schedule[next(self._turns) % 100], hold_log)
        if path in (self.health_route, self.kserve_ready) and method == "GET":
            return _json_response(200, {"name": self.model_name, "ready": True})
        if path.startswith(DEPLOYMENT_ROUTE) and path.endswith(":predict"):
            deployed_model_id = path[len(DEPLOYMENT_ROUTE) : -len(":predict")]
            deployment = self.deployments.get(deployed_model_id)
            if deployment is None:
                return _json_response(404, {"error": f"no deployment {deployed_model_id!r}; deployed: {sorted(self.deployments)}"})
            if method != "POST":
                return _json_response(405, {"error": f"use POST for {path}"})
            return self.predict(body, deployment, hold_log)
        return _json_response(404, {"error": f"no route {method} {path}; predictions at POST {self.predict_route}"})

    def predict(self, body: bytes, deployment: Deployment, hold_log: bool = False) -> tuple[int, bytes]:
        if len(body) > MAX_BODY_BYTES:
            return _json_response(413, {"error": f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}"})
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            return _json_response(400, {"error": f"request body is not valid JSON: {error}"})
        instances = request.get("instances") if type(request) is dict else None
        if type(instances) is not list:
            return _json_response(400, {"error": 'request must be a JSON object {"instances": [...]} with a list of instances'})
        if not instances:
            return _json_response(400, {"error": "instances is empty: send at least one instance"})
        try:
            # JSON booleans are refused for numbers and categories (docs/serving.md); a body
            # without the words true/false cannot hold one, and skips the scan for them.
            predictions = deployment.model.predict_instances(instances, b"true" in body or b"false" in body)
            payload, response_payload = deployment.response(predictions)
        except CauceError as error:
            return _json_response(400, {"error": str(error)})
        except Exception as error:  # a broken model version: answer JSON, name the version, keep serving
            log.exception("deployment %s failed to predict", deployment.deployed_model_id)
            message = f"deployment {deployment.deployed_model_id!r} failed to predict: {type(error).__name__}: {error}"
            return _json_response(500, {"error": message})
        if self.request_log is not None:
            self.request_log.write(deployment.deployed_model_id, instances, predictions, response_payload, hold_log)
        return 200, payload

    # ---- admin ---------------------------------------------------------------------

    async def admin(self, scope, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Deployments and traffic split of a local endpoint (the local deploy step's canary):

        * ``GET    /admin/deployments`` -> ``{"deployments": {id: {"model_dir"}}, "traffic_split": {id: percent}}``
        * ``POST   /admin/deployments`` ``{"deployed_model_id", "model_dir"}``: load a model
          version next to the others, with no traffic; 400 (and nothing changed) if it
          does not load.
        * ``PUT    /admin/traffic`` ``{"traffic_split": {id: percent}}``
        * ``DELETE /admin/deployments/<id>``: undeploy a version that takes no traffic.

        Refused unless the process was started with an admin token (403), the client
        is on loopback (403) and sends ``Authorization: Bearer <token>`` (401).
        """
        if not self.admin_token:
            return _json_response(403, {"error": "admin routes are disabled: start the server with --admin"})
        if not _is_loopback(scope.get("client")):
            return _json_response(403, {"error": "admin routes answer loopback clients only"})
        authorization = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(authorization, b"Bearer " + self.admin_token.encode()):
            return _json_response(401, {"error": "admin routes need the header Authorization: Bearer <admin token>"})
        try:
            if path == "/admin/deployments" and method == "GET":
                return _json_response(200, self.describe())
            if path == "/admin/deployments" and method == "POST":
                request = self._admin_request(body, ("deployed_model_id", "model_dir"))
                deployed_model_id, model_dir = str(request["deployed_model_id"]), str(request["model_dir"])
                if deployed_model_id in self.deployments:
                    raise CauceError(f"deployed_model_id {deployed_model_id!r} is already deployed")
                # Loading takes a while (unpickling, imports): off the event loop, so the
                # deployments already serving keep answering meanwhile.
                loop = asyncio.get_running_loop()
                try:
                    deployment = await loop.run_in_executor(None, load_deployment, deployed_model_id, model_dir)
                except Exception as error:  # any failure to load leaves the running deployments as they were
                    raise CauceError(f"model {model_dir} did not load: {type(error).__name__}: {error}") from None
                self.add_deployment(deployment)
                return _json_response(200, self.describe())
            if path == "/admin/traffic" and method == "PUT":
                self.set_traffic_split(self._admin_request(body, ("traffic_split",))["traffic_split"])
                return _json_response(200, self.describe())
            if path.startswith("/admin/deployments/") and method == "DELETE":
                self.remove_deployment(path[len("/admin/deployments/") :])
                return _json_response(200, self.describe())
        except CauceError as error:
            return _json_response(400, {"error": str(error)})
        return _json_response(404, {"error": f"no admin route {method} {path}"})

    @staticmethod
    def _admin_request(body: bytes, fields: tuple[str, ...]) -> dict:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise CauceError(f"admin request body is not valid JSON: {error}") from None
        missing = [field for field in fields if not isinstance(request, dict) or field not in request]
        if missing:
            raise CauceError(f"admin request must be a JSON object with {', '.join(fields)}; missing {', '.join(missing)}")
        return request

    # ---- ASGI ----------------------------------------------------------------------

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.request_log is not None:
                    self.request_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        try:
            if _arrived(receive):  # the body came with the headers: nothing to time
                deadline = 0.0
                message = await receive()
            else:
                # The event loop's clock, not time.monotonic(): what wait_for uses.
                deadline = asyncio.get_running_loop().time() + self.body_timeout_s
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            body = message.get("body", b"")
            if message.get("more_body", False):
                if not deadline:  # the first part came with the headers: the body's time runs from now
                    deadline = asyncio.get_running_loop().time() + self.body_timeout_s
                if self.buffering >= self.max_buffering:
                    await _answer(send, 503, {"error": f"the server is buffering {self.buffering} request bodies, "
                                                       "its limit; retry shortly"})  # fmt: skip
                    return
                self.buffering += 1
                try:
                    chunks, size, more = [body], len(body), True
                    while more:
                        remaining = deadline - asyncio.get_running_loop().time()
                        message = await asyncio.wait_for(receive(), max(remaining, 0.0))
                        chunk = message.get("body", b"")
                        size += len(chunk)
                        if size <= MAX_BODY_BYTES:  # past the limit, stop buffering: the answer is 413 anyway
                            chunks.append(chunk)
                        more = message.get("more_body", False)
                finally:
                    self.buffering -= 1
                body = b"".join(chunks)
            else:
                size = len(body)
        except asyncio.TimeoutError:
            await _answer(send, 408, {"error": f"the request body did not arrive within {self.body_timeout_s:g} s"})
            return
        path, method = scope["path"], scope["method"]
        if size > MAX_BODY_BYTES:
            status, payload = _json_response(413, {"error": f"request body is {size} bytes; the limit is {MAX_BODY_BYTES}"})
        elif path.startswith(ADMIN_PREFIX):
            status, payload = await self.admin(scope, method, path, body)
        elif self.in_flight is not None and len(self.in_flight) > 1 and self.request_log is not None:
            # Other requests are in flight: those whose bodies came in this turn of the
            # event loop run right after this one. Hold this request's log line, let them
            # run (one turn), then one write(2) logs them all, before any is answered.
            status, payload = self.handle(method, path, body, hold_log=True)
            await asyncio.sleep(0)
            self.request_log.write_held()
        else:
            status, payload = self.handle(method, path, body)
        await send({"type": "http.response.start", "status": status, "headers": _JSON + [(b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})


def _arrived(receive) -> bool:
    """Whether ``receive()`` returns at once: uvicorn's request cycle already holds the
    next message (its event is set), as it does when the body came with the headers.
    Then no timer is needed, and ``asyncio.wait_for`` (a task and an extra turn of the
    event loop, ≈ 15 µs, a fifth of a one-instance request) is skipped. Any other server,
    or a body still on its way, takes the timed path."""
    event = getattr(getattr(receive, "__self__", None), "message_event", None)
    return event is not None and event.is_set()


async def _answer(send, status: int, payload: dict) -> None:
    """Answer before the body was read, and close the connection (its unread rest)."""
    body = orjson.dumps(payload)
    headers = _JSON + [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
