"""Start the prediction server, configured the way Vertex configures a custom
serving container (AIP_* environment variables), or by explicit arguments.

Binds to 127.0.0.1 unless told otherwise: the serving image sets
CAUCE_SERVE_HOST=0.0.0.0 because inside a container that is the only way in.
"""

from __future__ import annotations

import logging
import os

from cauce import model as model_bundle
from cauce.serving.app import PredictionApp, RequestLog

log = logging.getLogger(__name__)


def build_app(
    model_dir: str,
    model_name: str = "model",
    request_log_dir: str = "",
    endpoint: str = "local",
    deployed_model_id: str = "",
) -> PredictionApp:
    loaded = model_bundle.load(model_bundle.fetch_model_dir(model_dir))
    request_log = RequestLog(request_log_dir, endpoint, deployed_model_id) if request_log_dir else None
    return PredictionApp(
        loaded,
        model_name=model_name,
        health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
        predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
        request_log=request_log,
        deployed_model_id=deployed_model_id or os.environ.get("AIP_DEPLOYED_MODEL_ID", ""),
    )


def serve(
    model_dir: str = "",
    host: str = "",
    port: int = 0,
    model_name: str = "model",
    request_log_dir: str = "",
    endpoint: str = "local",
    deployed_model_id: str = "",
) -> None:
    import socket

    import uvicorn

    model_dir = model_dir or os.environ.get("AIP_STORAGE_URI", "")
    if not model_dir:
        raise SystemExit("no model: pass --model-dir or set AIP_STORAGE_URI")
    host = host or os.environ.get("CAUCE_SERVE_HOST", "127.0.0.1")
    port = port or int(os.environ.get("AIP_HTTP_PORT", "8080"))
    request_log_dir = request_log_dir or os.environ.get("CAUCE_REQUEST_LOG_DIR", "")
    app = build_app(model_dir, model_name, request_log_dir, endpoint, deployed_model_id)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # Set TCP_NODELAY ourselves: without it keep-alive responses can wait ~40 ms
    # for a delayed ACK (GUIDE §4, uvicorn#3149).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    log.warning("serving %s on http://%s:%d%s", model_dir, host, port, app.predict_route)
    server.run(sockets=[sock])
