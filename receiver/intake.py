"""The intake of one delivery, in the order the checks must run: authenticate, read, parse, bind, land.

A request must be cheap to refuse. Its declared size (413) and its token (401 missing, 403 invalid: signature
and every claim but the digest) are checked from the headers alone, before the body is read. Once the body
is read (and hashed as it streams in, by the front), the token's digest must match it (403); only then is
the body parsed: unsupported content type (415), not a valid CloudEvent (400). The token is then bound to
the event's id, type and source (403 if it already authorized another event), and the record is handed to
the batcher, which refuses (413) a record whose landed line would be too long before queueing it, so a
refused request lands nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pull_events.landing import utc_now
from receiver.auth import ChainguardVerifier, VerifiedToken, check_digest
from receiver.batcher import Batcher, Landed
from receiver.events import ReceivedEvent, encode_record, parse_event
from receiver.replay import Binding, TokenBindings


@dataclass(frozen=True)
class Intake:
    """Turns deliveries into landed records. ``verifier`` is ``None`` when auth is off."""

    batcher: Batcher
    verifier: ChainguardVerifier | None
    instance: str
    bindings: TokenBindings

    def authenticate(self, headers: Mapping[str, str], allow_fetch: bool = True) -> VerifiedToken | None:
        """The checks the headers alone allow (``None`` when auth is off); raises ``MissingToken`` (401),
        ``TokenRejected`` (403) or ``Unavailable`` (503), and with ``allow_fetch=False`` ``auth.FetchNeeded``
        rather than fetch the issuer's keys."""
        if self.verifier is None:
            return None
        return self.verifier.verify_token(headers.get("authorization"), allow_fetch)

    def receive(
        self, headers: Mapping[str, str], body: bytes, token: VerifiedToken | None, body_sha256: str
    ) -> tuple[ReceivedEvent, Landed]:
        """Check and land one delivery authenticated as ``token`` (``headers`` by lower-case name, see
        ``events.request_headers``; ``body_sha256`` is ``auth.body_digest(body)``); raises a ``Rejection``
        naming the first failed check."""
        received_at = utc_now()
        if token is not None:
            check_digest(token, body_sha256)
        event = parse_event(headers, body)
        if token is not None:
            self.bindings.bind(token.token_sha256, Binding(event.id, event.type, event.source), token.expires_at)
        record = encode_record(
            event, received_at, self.instance, body_sha256, token.token_sha256 if token is not None else None
        )
        return event, self.batcher.submit(event.type, record)
