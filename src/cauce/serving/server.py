"""Start the prediction server, configured the way Vertex configures a custom
serving container (AIP_* environment variables), or by explicit arguments.

Binds to 127.0.0.1 unless told otherwise: the serving image sets
CAUCE_SERVE_HOST=0.0.0.0 because inside a container that is the only way in.
"""

from __future__ import annotations

import gc
import logging
import os

from cauce import model as model_bundle
from cauce.serving import ADMIN_TOKEN_ENV
from cauce.serving.app import PredictionApp, RequestLog

log = logging.getLogger(__name__)



def build_app(
    model_dir: str,
    model_name: str = "model",
    request_log_dir: str = "",
    endpoint: str = "local",
    deployed_model_id: str = "",
    admin_token: str = "",
) -> PredictionApp:
    deployed_model_id = deployed_model_id or os.environ.get("AIP_DEPLOYED_MODEL_ID", "")
    return PredictionApp(
        model_bundle.load(model_bundle.fetch_model_dir(model_dir), serving=True),
        model_name=model_name,
        health_route=os.environ.get("AIP_HEALTH_ROUTE", "/health"),
        predict_route=os.environ.get("AIP_PREDICT_ROUTE", "/predict"),
        request_log=RequestLog(request_log_dir, endpoint) if request_log_dir else None,
        deployed_model_id=deployed_model_id,
        model_dir=model_dir,
        admin_token=admin_token,
    )


# Request headers must be complete this long after a request's first byte (or after
# the connection opens): uvicorn bounds idle keep-alive connections but not a client
# that sends its headers a byte at a time (docs/serving.md "Limits").
HEADER_TIMEOUT_S = float(os.environ.get("CAUCE_SERVE_HEADER_TIMEOUT_S", "10"))


def _header_timeout_protocol():
    """uvicorn's httptools protocol with a deadline on each request's headers.

    No timer per request: a connection notes when it began waiting for headers (the
    event loop's cached clock, no system call) and one sweep per server, every quarter
    of the timeout (at most 1 s), closes the connections waiting past it. A timer armed
    and cancelled per request (call_later + cancel) cost ~1-2 us of a request's CPU; a
    connection is now cut off between the timeout and 1.25 x it (at most 1 s later)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _waiting_since: float | None = None  # loop time this connection began waiting for headers
        _sweeps: dict = {}  # event loop -> the connections it sweeps (one server per loop)

        def _watch(self) -> None:
            loop = self.loop
            watched = self._sweeps.get(loop)
            if watched is None:
                watched = self._sweeps[loop] = set()
                interval = min(1.0, HEADER_TIMEOUT_S / 4)

                def sweep() -> None:
                    now = loop.time()
                    for protocol in [p for p in watched if p._waiting_since is not None and now - p._waiting_since > HEADER_TIMEOUT_S]:
                        protocol._waiting_since = None
                        if not protocol.transport.is_closing():
                            protocol.transport.close()
                    loop.call_later(interval, sweep)

                loop.call_later(interval, sweep)
            watched.add(self)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._waiting_since = self.loop.time()  # a connection that sends nothing at all
            self._watch()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._waiting_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._waiting_since = None
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._waiting_since = None
            self._sweeps.get(self.loop, set()).discard(self)
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def _cause(error: BaseException) -> str:
    """``Type: message`` of ``error``; a CauceError's message alone (it already names the cause)."""
    from cauce.artifacts import CauceError

    return str(error) if isinstance(error, CauceError) else f"{type(error).__name__}: {error}"


def serve(
    model_dir: str = "",
    host: str = "",
    port: int = 0,
    model_name: str = "model",
    request_log_dir: str = "",
    endpoint: str = "local",
    deployed_model_id: str = "",
    admin: bool = False,
) -> None:
    """Serve until stopped. With ``admin``, the admin routes (local canary roll-outs)
    are enabled for loopback clients holding the token in $CAUCE_SERVING_ADMIN_TOKEN."""
    import socket

    import uvicorn

    model_dir = model_dir or os.environ.get("AIP_STORAGE_URI", "")
    if not model_dir:
        raise SystemExit("no model: pass --model-dir or set AIP_STORAGE_URI")
    admin_token = os.environ.get(ADMIN_TOKEN_ENV, "") if admin else ""
    if admin and len(admin_token) < 16:
        raise SystemExit(f"--admin needs a token of at least 16 characters in ${ADMIN_TOKEN_ENV}")
    host = host or os.environ.get("CAUCE_SERVE_HOST", "127.0.0.1")
    port = port or int(os.environ.get("AIP_HTTP_PORT", "8080"))
    request_log_dir = request_log_dir or os.environ.get("CAUCE_REQUEST_LOG_DIR", "")
    try:
        app = build_app(model_dir, model_name, request_log_dir, endpoint, deployed_model_id, admin_token)
    except Exception as error:  # noqa: BLE001 - any failure to load is the operator's one-line answer
        raise SystemExit(f"error: model {model_dir} did not load: {_cause(error)}") from None
    # Everything loaded so far (libraries, the model: ~130 k objects) lives as long
    # as the process; out of the collector's reach, a full collection no longer
    # walks it (~40 ms each on the development machine, a p99 stall).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="on", http=_header_timeout_protocol()
    )
    server = uvicorn.Server(config)
    app.in_flight = server.server_state.tasks  # one request-log write per turn of the event loop (PredictionApp)
    # Set TCP_NODELAY ourselves: without it keep-alive responses can wait ~40 ms
    # for a delayed ACK (uvicorn#3149; docs/architecture.md, "Measured facts").
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port}: {error.strerror or error}") from None
    log.warning("serving %s on http://%s:%d%s", model_dir, host, port, app.predict_route)
    server.run(sockets=[sock])
