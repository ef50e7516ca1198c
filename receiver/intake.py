"""The intake of one delivery, in the order the checks must run: parse, authenticate, land.

Body size (413) is enforced while reading the body, before this runs. Then: unsupported content type
(415) and not a valid CloudEvent (400), as Chainguard's receiver does, before the token (401/403);
the token's digest covers the raw body in either content mode. Only a request that passed every check
is handed to the batcher, which refuses (413) a record whose landed line would be too long before queueing
it, so a refused request lands nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pull_events.landing import utc_now
from receiver.auth import ChainguardVerifier, body_digest
from receiver.batcher import Batcher, Landed
from receiver.events import ReceivedEvent, encode_record, parse_event


@dataclass(frozen=True)
class Intake:
    """Turns deliveries into landed records. ``verifier`` is ``None`` when auth is off."""

    batcher: Batcher
    verifier: ChainguardVerifier | None
    instance: str

    def receive(self, headers: Mapping[str, str], body: bytes) -> tuple[ReceivedEvent, Landed]:
        """Check and land one delivery (``headers`` by lower-case name, see ``events.request_headers``);
        raises a ``Rejection`` naming the first failed check."""
        received_at = utc_now()
        event = parse_event(headers, body)
        # Computed once: the token must sign it, and the record keeps it.
        body_sha256 = body_digest(body)
        if self.verifier is not None:
            self.verifier.verify(headers.get("authorization"), body_sha256)
        record = encode_record(event, received_at, self.instance, body_sha256)
        return event, self.batcher.submit(event.type, record)
