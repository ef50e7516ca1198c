"""From an HTTP request to a CloudEvent, and from a CloudEvent to its landing record.

The ``cloudevents`` SDK parses and validates the attributes of both content modes. The receiver adds
what a faithful record needs and the SDK does not give:

- the attributes exactly as sent: the SDK fills in ``id`` and ``time`` when they are missing (so the
  required ones are checked here first), and turns ``time`` into a ``datetime``, which would cut
  Chainguard's nanoseconds, so the record keeps the original string;
- strict JSON data: the SDK quietly keeps invalid JSON as a string; here it is a 400, and so is JSON the
  warehouse cannot load faithfully (``pull_events.json_rules``: lone surrogates, duplicate keys, ...), in the
  data and in a structured-mode document alike, so an acknowledged event is always a loadable line.

A record is one line of JSON: every attribute and extension as a top-level key, ``data`` (the event
data as JSON), then ``received_at``, ``received_by``, ``body_sha256`` and (auth on) ``token_sha256``. The
committer later prefixes ``landing_object`` and ``landing_line`` (see ``pull_events.landing``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from cloudevents.core.bindings.http import HTTPMessage, from_binary, from_structured
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import REQUIRED_ATTRIBUTES, CloudEvent

from pull_events import json_rules
from receiver.errors import BadEvent, UnsupportedContent

STRUCTURED_MEDIA_TYPE = "application/cloudevents+json"
BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
_CE_PREFIX = "ce-"
_FORMAT = JSONFormat()
# Raw U+0085/U+2028/U+2029 are legal inside JSON strings but are line breaks to str.splitlines():
# escaping them keeps one record on one line for any reader, and changes no value.
_LINE_BREAKS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))
_WSGI_CONTENT_HEADERS = frozenset(("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"))
_SDK_ERRORS = (BaseCloudEventException, ValueError, TypeError, KeyError, AttributeError, OverflowError)
# Where binary-mode data sits in the landed line, for the JSON rules' nesting allowance and paths.
_DATA = ("data",)


@dataclass(frozen=True)
class ReceivedEvent:
    """One CloudEvent as it arrived: attributes as sent, and its data as one line of JSON text."""

    attributes: dict[str, Any]
    data: bytes | None
    mode: str

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def source(self) -> str:
        return self.attributes["source"]


def request_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request headers of a WSGI ``environ`` by lower-case name, as werkzeug's ``EnvironHeaders``
    reads them (``Ce-Id`` -> ``ce-id``), in one pass and without werkzeug's title-casing."""
    headers = {
        name[5:].replace("_", "-").lower(): value
        for name, value in environ.items()
        if name.startswith("HTTP_") and name not in _WSGI_CONTENT_HEADERS
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if value := environ.get(name):
            headers[name.replace("_", "-").lower()] = value
    return headers


def parse_event(headers: Mapping[str, str], body: bytes) -> ReceivedEvent:
    """Parse one CloudEvents 1.0 HTTP request (binary or structured JSON mode); ``headers`` by
    lower-case name (``request_headers``).

    Raises ``UnsupportedContent`` (415) for batches, non-JSON structured formats and non-JSON data in
    binary mode, and ``BadEvent`` (400) for anything that is not a valid CloudEvent with JSON data.
    """
    content_type = headers.get("content-type", "").strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == BATCH_MEDIA_TYPE:
        raise UnsupportedContent(
            "batch_not_supported", f"{BATCH_MEDIA_TYPE} is not accepted: send one event per request"
        )
    if media_type.startswith("application/cloudevents"):
        if media_type != STRUCTURED_MEDIA_TYPE:
            raise UnsupportedContent(
                "unsupported_format", f"structured format {media_type!r} is not supported: use {STRUCTURED_MEDIA_TYPE}"
            )
        _refuse_headers_beside_a_document(headers)
        return _parse_structured(body)
    return _parse_binary(headers, content_type, body)


def _refuse_headers_beside_a_document(headers: Mapping[str, str]) -> None:
    """A structured-mode event carries its attributes in the body: ``Ce-*`` headers beside it would be a second,
    possibly different, set of attributes (and not covered by the token's digest)."""
    competing = sorted(name for name in headers if name.startswith(_CE_PREFIX))
    if competing:
        raise BadEvent(
            "ambiguous_request",
            f"a structured-mode event carries its attributes in the body, not in headers: {', '.join(competing)}",
        )


def _parse_binary(headers: Mapping[str, str], content_type: str, body: bytes) -> ReceivedEvent:
    if content_type and not _FORMAT.JSON_CONTENT_TYPE_PATTERN.match(content_type):
        raise UnsupportedContent(
            "unsupported_media_type",
            f"Content-Type {content_type!r} is not supported: event data must be JSON (application/json)",
        )
    ce_headers = {name: _header_text(value) for name, value in headers.items() if name.startswith(_CE_PREFIX)}
    if not ce_headers:
        raise BadEvent(
            "not_a_cloudevent",
            f"no Ce-* headers (binary mode) and Content-Type is not {STRUCTURED_MEDIA_TYPE} (structured mode)",
        )
    sent = {name[len(_CE_PREFIX) :] for name in ce_headers}
    _require_attributes(sent)
    time_header = ce_headers.get("ce-time")
    declared = ce_headers.get("ce-datacontenttype")
    if declared is not None and content_type and declared.strip() != content_type:
        raise BadEvent(
            "ambiguous_request",
            f"Ce-Datacontenttype {declared!r} conflicts with Content-Type {content_type!r}: send the data's type once",
        )
    if content_type:
        ce_headers["content-type"] = content_type  # last, so it wins over a Ce-Datacontenttype header
    try:
        # Data is parsed strictly below; the SDK gets no body so it cannot fall back to a string.
        event = from_binary(HTTPMessage(headers=ce_headers, body=b""), _FORMAT, CloudEvent)
    except _SDK_ERRORS as exc:
        raise BadEvent("invalid_attribute", str(exc)) from None
    attributes = {name: value for name, value in event.get_attributes().items() if name in sent}
    if time_header is not None:
        attributes["time"] = unquote(time_header)
    if content_type:
        attributes["datacontenttype"] = content_type
    data = _json_line(body) if body else None
    return ReceivedEvent(attributes=attributes, data=data, mode="binary")


def _parse_structured(body: bytes) -> ReceivedEvent:
    # The document is the top level of the landed line: its attributes and data keep their places.
    document = _strict_json(body, (), "the body")
    if not isinstance(document, dict):
        raise BadEvent("not_a_cloudevent", "a structured CloudEvent must be a JSON object")
    _require_attributes(set(document))
    try:
        from_structured(HTTPMessage(headers={"content-type": STRUCTURED_MEDIA_TYPE}, body=body), _FORMAT, CloudEvent)
    except _SDK_ERRORS as exc:
        raise BadEvent("invalid_attribute", str(exc)) from None
    attributes = {name: value for name, value in document.items() if name != "data"}
    data = _dumps(document["data"]) if "data" in document else None
    return ReceivedEvent(attributes=attributes, data=data, mode="structured")


def encode_record(
    event: ReceivedEvent, received_at: datetime, received_by: str, body_sha256: str, token_sha256: str | None = None
) -> bytes:
    """One landing record (a JSON object on one line, without the newline) for ``event``; ``token_sha256``
    (the hash of the delivery token, none when auth is off) lets the load find a token used twice."""
    parts = [_dumps(event.attributes)[:-1]]
    if event.data is not None:
        parts += [b',"data":', event.data]
    stamp = received_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    parts.append(
        b',"received_at":"%s","received_by":%s,"body_sha256":%s'
        % (stamp.encode(), _dumps(received_by), _dumps(body_sha256))
    )
    parts.append(b',"token_sha256":%s}' % _dumps(token_sha256) if token_sha256 is not None else b"}")
    record = b"".join(parts)
    if not record.isascii():  # the line breaks below are all non-ASCII
        for raw, escaped in _LINE_BREAKS:
            if raw in record:
                record = record.replace(raw, escaped)
    return record


def _require_attributes(present: set[str]) -> None:
    missing = [name for name in REQUIRED_ATTRIBUTES if name not in present]
    if missing:
        raise BadEvent("missing_attribute", f"missing required CloudEvents attribute(s): {', '.join(missing)}")


def _json_line(body: bytes) -> bytes:
    """The data as one line of JSON: the body itself when it already is one, else re-encoded compactly."""
    value = _strict_json(body, _DATA)
    if b"\n" in body or b"\r" in body:
        return _dumps(value)
    return body


def _strict_json(raw: bytes, at: json_rules.Path, name: str | None = None) -> Any:
    """The value of ``raw`` (to sit at ``at`` in the landed line), or a 400 naming the rule it breaks."""
    try:
        return json_rules.loads(raw, at, name)
    except json_rules.JSONProblem as problem:
        raise BadEvent(problem.problem, problem.detail) from None


# Built once: json.dumps builds a new encoder on every call given options.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> bytes:
    try:
        return _COMPACT.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        # Only a lone surrogate cannot be UTF-8. The JSON rules refuse one in any body; escaping it instead
        # would land a line the warehouse cannot load.
        raise BadEvent(json_rules.LONE_SURROGATE, "an attribute holds a lone surrogate (not Unicode text)") from None


def _header_text(value: str) -> str:
    """WSGI hands headers over as latin-1; a sender that put raw UTF-8 in a header meant UTF-8."""
    if value.isascii():
        return value  # the same in both
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value
