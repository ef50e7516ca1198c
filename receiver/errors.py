"""Why a request was refused, and the JSON answer that says so.

Every refusal is a ``Rejection``: an HTTP status, a short machine-readable code, a human detail, and
for retryable refusals a ``Retry-After``. The answer body is always ``{"error": code, "detail": detail}``.
"""

from __future__ import annotations

from flask import Response, jsonify


class Rejection(Exception):
    """A request the receiver refuses; nothing of it is landed."""

    status: int = 400

    def __init__(
        self,
        error: str,
        detail: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def log_fields(self, remote_addr: str | None) -> dict[str, object]:
        """What the receiver logs of this refusal, wherever it is answered (the front or the app)."""
        return {"status": self.status, "error": self.error, "detail": self.detail, "remote_addr": remote_addr}

    def response(self) -> Response:
        """The JSON error answer for this refusal."""
        return error_response(self.status, self.error, self.detail, self.retry_after, self.headers)


class BadEvent(Rejection):
    """Not a CloudEvent, or one with missing or invalid attributes or data (400)."""

    status = 400


class UnsupportedContent(Rejection):
    """A content type the receiver does not take (415)."""

    status = 415


class MissingToken(Rejection):
    """No usable ``Authorization: Bearer`` header (401)."""

    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__("missing_token", detail, headers={"WWW-Authenticate": 'Bearer realm="pull-events"'})


class TokenRejected(Rejection):
    """The bearer token failed a check (403)."""

    status = 403

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_token", detail)


class Unavailable(Rejection):
    """A transient failure: the sender should retry after ``Retry-After`` seconds (503)."""

    status = 503

    def __init__(self, error: str, detail: str, retry_after: int = 1) -> None:
        super().__init__(error, detail, retry_after=retry_after)


def error_response(
    status: int, error: str, detail: str, retry_after: int | None = None, headers: dict[str, str] | None = None
) -> Response:
    """A JSON ``{"error", "detail"}`` answer with ``status`` and any extra headers."""
    response = jsonify(error=error, detail=detail)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
