"""The ceiling: a bare Flask endpoint doing the least a webhook receiver can do.

``POST /`` reads the body and answers 202 with a small JSON, like the receiver's acknowledgement but
without parsing, verifying or landing anything. ``GET /readyz`` lets the benchmark wait for start-up.
Served by gunicorn with ``benchmarks.bare_gunicorn_conf`` (the receiver's own server settings).
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.post("/")
def receive() -> tuple[Response, int]:
    body = request.get_data(cache=False)
    return jsonify(status="accepted", bytes=len(body)), 202


@app.get("/readyz")
def readyz() -> Response:
    return jsonify(status="ready")
