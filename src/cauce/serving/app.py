"""The prediction server: a plain ASGI app honouring the Vertex AI custom-container
contract and KServe's V1 protocol.

* ``GET  AIP_HEALTH_ROUTE`` (default ``/health``) -> 200 once the model is loaded.
* ``POST AIP_PREDICT_ROUTE`` (default ``/predict``) and ``POST /v1/models/<name>:predict``:
  ``{"instances": [...], "parameters": {...}}`` -> ``{"predictions": [...]}``.
* Bodies over 1.5 MB (Vertex's online-prediction limit) get 413; malformed JSON,
  a missing ``instances`` list, a missing field or a wrong type get 400 with a
  message that names the problem.
* Every answered request is appended to a JSON Lines log in the shape Vertex
  request-response logging writes to BigQuery, which the monitor reads.

No web framework: per request we only parse JSON, encode with the fitted
transform in numpy and call the estimator (GUIDE §4: the per-request pandas
DataFrame is what makes other servers slow). Linear scikit-learn models skip
the estimator's per-call input validation (``accelerate``), which costs far
more than their math; bench/bench_serving.py measures the whole path.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import threading
from pathlib import Path

from cauce.artifacts import CauceError
from cauce.model import LoadedModel
from cauce.serving.fast import accelerate

MAX_BODY_BYTES = 1_572_864  # 1.5 MB, Vertex's online prediction request limit

# One encoder built once: json.dumps(..., separators=...) builds a new JSONEncoder
# per call, and a 32-instance request logs 64 payload strings. Same output.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class RequestLog:
    """Append-only JSONL log, one line per request (Vertex request-response logging shape)."""

    def __init__(self, directory: str | os.PathLike, endpoint: str, deployed_model_id: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.path = self.directory / f"requests-{stamp}-{os.getpid()}.jsonl"
        self.endpoint = endpoint
        self.deployed_model_id = deployed_model_id
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", buffering=1)  # line-buffered: each request is one whole line

    def write(self, instances: list, predictions: list) -> None:
        record = {
            "endpoint": self.endpoint,
            "deployed_model_id": self.deployed_model_id,
            "logging_time": dt.datetime.now(dt.timezone.utc).isoformat(),
            "request_id": f"{os.getpid()}-{next(self._ids)}",
            "request_payload": [_encode(instance) for instance in instances],
            "response_payload": [_encode(prediction) for prediction in predictions],
        }
        line = _encode(record) + "\n"
        with self._lock:
            self._handle.write(line)

    def close(self) -> None:
        self._handle.close()


def _json_response(status: int, payload: dict) -> tuple[int, bytes]:
    return status, _encode(payload).encode()


class PredictionApp:
    def __init__(
        self,
        model: LoadedModel,
        model_name: str = "model",
        health_route: str = "/health",
        predict_route: str = "/predict",
        request_log: RequestLog | None = None,
        deployed_model_id: str = "",
    ):
        self.model = accelerate(model)
        self.model_name = model_name
        self.health_route = health_route
        self.predict_route = predict_route
        self.kserve_predict = f"/v1/models/{model_name}:predict"
        self.kserve_ready = f"/v1/models/{model_name}"
        self.request_log = request_log
        self.deployed_model_id = deployed_model_id

    # The whole request -> response path, without ASGI, so tests can call it directly.
    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path in (self.health_route, self.kserve_ready) and method == "GET":
            return _json_response(200, {"name": self.model_name, "ready": True})
        if path in (self.predict_route, self.kserve_predict):
            if method != "POST":
                return _json_response(405, {"error": f"use POST for {path}"})
            return self.predict(body)
        return _json_response(404, {"error": f"no route {method} {path}; predictions at POST {self.predict_route}"})

    def predict(self, body: bytes) -> tuple[int, bytes]:
        if len(body) > MAX_BODY_BYTES:
            return _json_response(413, {"error": f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}"})
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return _json_response(400, {"error": f"request body is not valid JSON: {error}"})
        if not isinstance(request, dict) or not isinstance(request.get("instances"), list):
            return _json_response(400, {"error": 'request must be a JSON object {"instances": [...]} with a list of instances'})
        instances = request["instances"]
        if not instances:
            return _json_response(400, {"error": "instances is empty: send at least one instance"})
        try:
            predictions = self.model.predict_instances(instances)
        except CauceError as error:
            return _json_response(400, {"error": str(error)})
        if self.request_log is not None:
            self.request_log.write(instances, predictions)
        return _json_response(200, {"predictions": predictions, "deployed_model_id": self.deployed_model_id})

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.request_log is not None:
                        self.request_log.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_BODY_BYTES:  # past the limit, stop buffering: the answer is 413 anyway
                chunks.append(chunk)
            more = message.get("more_body", False)
        if size > MAX_BODY_BYTES:
            status, payload = _json_response(413, {"error": f"request body is {size} bytes; the limit is {MAX_BODY_BYTES}"})
        else:
            status, payload = self.handle(scope["method"], scope["path"], b"".join(chunks))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})
