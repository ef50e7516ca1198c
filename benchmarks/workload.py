"""The benchmark's deliveries, built and signed before anything is timed.

Each delivery is the fixture pull event as Chainguard sends it (binary mode) with its own ``id`` and a
body that differs from every other (the pulled digest and client address vary), signed by the local
issuer with its own RS256 token bound to that body. Each is turned into the exact bytes of an HTTP/1.1
request once, so sending one costs the load generator a single socket write.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from tests.receiver.deliveries import binary_delivery, compact_json, new_id, pull_event
from tests.receiver.oidc import LocalIssuer

# Chainguard's tokens live 5 minutes; the benchmark's live longer so none expires during a long run.
TOKEN_LIFETIME_SECONDS = 3600


@dataclass(frozen=True)
class Delivery:
    """One signed delivery: its event id and the raw HTTP/1.1 request carrying it."""

    event_id: str
    request: bytes


def build_deliveries(issuer: LocalIssuer, count: int) -> list[Delivery]:
    """``count`` distinct pull-event deliveries, each with its own body and its own token."""
    expires = int(time.time()) + TOKEN_LIFETIME_SECONDS
    deliveries = []
    for index in range(count):
        attributes, data = pull_event(id=new_id())
        data["body"]["digest"] = "sha256:" + hashlib.sha256(b"bench-%d" % index).hexdigest()
        data["body"]["remote_address"] = f"198.51.100.{index % 250 + 1}"
        body = compact_json(data)
        headers = binary_delivery(attributes, body, token=issuer.token(body, exp=expires))
        deliveries.append(Delivery(attributes["id"], raw_request(headers, body)))
    return deliveries


def raw_request(headers: dict[str, str], body: bytes) -> bytes:
    """``POST /`` as HTTP/1.1 bytes (keep-alive, Content-Length framing)."""
    lines = ["POST / HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
