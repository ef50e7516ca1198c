"""A CloudEvent as an HTTP delivery the way Chainguard sends it: binary content mode, ``Ce-*`` headers, the data
as the body, and (auth on) a token bound to that body."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from devstack.oidc import Signer

# CloudEvents HTTP binding 3.1.3.2: printable ASCII except space, '"' and '%' travels as is; the rest is %-encoded.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
STRUCTURED_MEDIA_TYPE = "application/cloudevents+json"
# What a real delivery carries besides the event (the spec's "headers seen on a real pull delivery").
SENDER_AGENT = "Chainguard Enforce 3b1f0c2d9e8a7f6b5c4d3e2f1a0b9c8d7e6f5a4b"


def compact_json(value: Any) -> bytes:
    """JSON the way Go's encoding/json writes it: compact, one line."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Event:
    """One CloudEvent: its attributes (``datacontenttype`` among them) and its data (``None``: no data)."""

    attributes: dict[str, Any]
    data: Any = None

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    def body(self) -> bytes:
        return b"" if self.data is None else compact_json(self.data)


@dataclass(frozen=True)
class Request:
    """The headers and body of one ``POST``."""

    headers: dict[str, str]
    body: bytes


def binary_headers(attributes: dict[str, Any]) -> dict[str, str]:
    """``Ce-*`` headers (percent-encoded) for ``attributes``, ``datacontenttype`` as ``Content-Type``."""
    headers = {
        f"Ce-{name.capitalize()}": quote(str(value), safe=_HEADER_SAFE)
        for name, value in attributes.items()
        if name != "datacontenttype"
    }
    if "datacontenttype" in attributes:
        headers["Content-Type"] = str(attributes["datacontenttype"])
    return headers


def delivery(event: Event, signer: Signer | None) -> Request:
    """``event`` as Chainguard delivers it: binary mode, signed by ``signer`` (unsigned without one).

    An event binary mode cannot carry as it is (an attribute that is not a string, or data without a content
    type) goes in structured mode, which keeps it exactly.
    """
    if all(isinstance(value, str) for value in event.attributes.values()) and (
        event.data is None or "datacontenttype" in event.attributes
    ):
        headers, body = binary_headers(event.attributes), event.body()
    else:
        document = dict(event.attributes) if event.data is None else {**event.attributes, "data": event.data}
        headers, body = {"Content-Type": STRUCTURED_MEDIA_TYPE}, compact_json(document)
    headers["Traceparent"] = _traceparent(event.id)
    headers["User-Agent"] = SENDER_AGENT
    if signer is not None:
        headers["Authorization"] = f"Bearer {signer.token(body)}"
    return Request(headers, body)


def _traceparent(event_id: str) -> str:
    """A W3C trace context derived from the event id, so a seeded run sends the same headers."""
    digest = hashlib.sha256(event_id.encode()).hexdigest()
    return f"00-{digest[:32]}-{digest[32:48]}-01"
