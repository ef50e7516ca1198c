"""One token, one delivery: the first event attributes seen with a token bind it for the token's lifetime.

A delivery token's ``webhook.digest`` covers the body only, so a captured token and body could otherwise be
sent again with a new ``Ce-Id``, ``Ce-Type`` or ``Ce-Source`` and land as a new event. Here the first
``(id, type, source)`` seen with a token (by the token's SHA-256) binds it until the token expires; the same
token with other attributes is refused, a genuine retry (same attributes) is not.

This holds within one receiver process. Across processes and instances the landed line carries
``token_sha256``, so the load can quarantine a second event carrying the same token.
"""

from __future__ import annotations

import heapq
import threading
import time
from dataclasses import dataclass

from receiver.errors import Rejection

# Entries live until their token expires (minutes for Chainguard's tokens); this caps memory against a
# flood of valid tokens with absurd lifetimes anyway. Past it the oldest-expiring bindings go first, and the
# warehouse's token_sha256 rule still catches a replay.
DEFAULT_MAX_BINDINGS = 1_000_000


class TokenReplayed(Rejection):
    """The token already authorized a delivery with other attributes (403)."""

    status = 403

    def __init__(self, detail: str) -> None:
        super().__init__("token_replayed", detail)


@dataclass(frozen=True)
class Binding:
    id: str
    type: str
    source: str


class TokenBindings:
    """Token hash -> the attributes it first authorized, until the token expires. Thread-safe."""

    def __init__(self, max_bindings: int = DEFAULT_MAX_BINDINGS) -> None:
        self.max_bindings = max_bindings
        self._bindings: dict[str, tuple[Binding, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._bindings)

    def bind(self, token_sha256: str, binding: Binding, expires_at: float) -> None:
        """Bind the token to ``binding``, or raise ``TokenReplayed`` if it is bound to other attributes."""
        with self._lock:
            self._forget_expired(time.time())
            held = self._bindings.get(token_sha256)
            if held is not None:
                if held[0] != binding:
                    raise TokenReplayed(
                        "this token already authorized a delivery with another id, type or source: a token"
                        " authorizes one delivery"
                    )
                return
            while len(self._bindings) >= self.max_bindings:
                self._forget_one()
            self._bindings[token_sha256] = (binding, expires_at)
            heapq.heappush(self._expiries, (expires_at, token_sha256))

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            self._forget_one()

    def _forget_one(self) -> None:
        _expires_at, token_sha256 = heapq.heappop(self._expiries)
        self._bindings.pop(token_sha256, None)
