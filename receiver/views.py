"""HTTP endpoints: ``POST /`` (intake), ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from pull_events.landing import LandingStore
from receiver.auth import body_digest
from receiver.batcher import Batcher
from receiver.errors import Rejection, error_response
from receiver.events import request_headers
from receiver.intake import Intake
from receiver.logs import get_logger
from receiver.metrics import ReceiverMetrics
from receiver.readiness import Readiness

EXTENSION = "pull_events_receiver"
# Set by the front (receiver.front) in the WSGI environ of a request it has already authenticated from its
# headers and whose body it hashed while reading it; a client cannot set environ keys without an HTTP_ prefix.
VERIFIED_TOKEN = "pull_events.verified_token"
BODY_SHA256 = "pull_events.body_sha256"
bp = Blueprint("receiver", __name__)
# The acknowledgement as jsonify writes it (sorted keys, compact, ASCII), without its per-call set-up.
_ACK_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
log = get_logger("http")


@dataclass(frozen=True)
class ReceiverState:
    """What the endpoints need, kept in ``app.extensions[EXTENSION]``."""

    intake: Intake
    batcher: Batcher
    store: LandingStore
    metrics: ReceiverMetrics
    readiness: Readiness
    max_body_bytes: int


def receiver_state(app: Flask | None = None) -> ReceiverState:
    """The receiver state of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


@bp.post("/")
def receive() -> Response:
    state = receiver_state()
    started = time.perf_counter()
    try:
        headers = request_headers(request.environ)
        check_declared_length(state.max_body_bytes)
        token = request.environ.get(VERIFIED_TOKEN) or state.intake.authenticate(headers)
        body = read_body(state.max_body_bytes)
        digest = request.environ.get(BODY_SHA256) or body_digest(body)
        event, landed = state.intake.receive(headers, body, token, digest)
    except Rejection as rejection:
        state.metrics.count_rejected(rejection.error, rejection.status)
        log.warning("refused a delivery", extra={"fields": rejection.log_fields(request.remote_addr)})
        return rejection.response()
    finally:
        state.metrics.request_seconds.observe(time.perf_counter() - started)
    state.metrics.count_accepted(event.type)
    acknowledgement = {
        "status": "landed",
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "object": landed.key,
        "line": landed.line,
    }
    return Response(_ACK_JSON.encode(acknowledgement) + "\n", status=202, mimetype="application/json")


def check_declared_length(limit: int) -> None:
    """A 413 ``Rejection`` if the request declares a body over ``limit`` bytes: refused before anything else."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> Rejection:
    return Rejection("body_too_large", f"the request body is over the limit of {limit} bytes", status=413)


def read_body(limit: int) -> bytes:
    """The request body, or a 413 ``Rejection`` if it is over ``limit`` bytes (with or without Content-Length)."""
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        body = None
    if body is None or len(body) > limit:
        raise _too_large(limit)
    return body


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="alive")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    try:
        receiver_state().readiness.check()
    except Rejection as not_ready:
        return not_ready.response()
    return jsonify(status="ready")


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = receiver_state().metrics.exposition()
    return Response(body, content_type=content_type)


def register_error_handlers(app: Flask) -> None:
    """Answer every error, including 404/405 and crashes, with the JSON error body."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def crash(exc: Exception) -> Response:
        log.exception("request failed", extra={"fields": {"path": request.path}})
        return error_response(500, "internal_error", "the receiver failed while handling the request")
