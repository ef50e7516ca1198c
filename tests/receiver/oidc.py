"""A local OIDC issuer for tests and benchmarks, signing tokens the way Chainguard signs webhook deliveries.

The issuer itself (discovery and JWKS over real HTTP on loopback, real RSA-2048 keys, RS256 tokens bound to a
body) is ``devstack.oidc.OidcIssuer``, shared with the local stack's development issuer. What only tests
need is here: a fresh key per issuer, key rotation, and tokens no honest issuer would mint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from devstack.oidc import DEFAULT_GROUP, OMIT, OidcIssuer, SigningKey, body_digest

__all__ = ["DEFAULT_GROUP", "OMIT", "LocalIssuer", "SigningKey", "body_digest", "hmac_token", "unsigned_token"]


class LocalIssuer(OidcIssuer):
    """An OIDC issuer on ``http://127.0.0.1:<free port>`` with a new key; use as a context manager.

    ``issuer.token(body)`` mints a valid token for ``body``; keyword overrides replace claims
    (``OMIT`` removes one). ``rotate()`` publishes a new key. ``available = False`` makes discovery and
    JWKS answer 503.
    """

    def __init__(self, kid: str | None = "test-key-1") -> None:
        super().__init__(SigningKey.generate(kid))

    def rotate(self, kid: str | None = "test-key-2", keep_old: bool = False) -> SigningKey:
        """Sign with a new key from now on and publish it (with the old one too if ``keep_old``)."""
        new_key = SigningKey.generate(kid)
        self.publish([*self.published, new_key] if keep_old else [new_key], new_key)
        return new_key


def unsigned_token(claims: dict[str, Any], kid: str | None = None) -> str:
    """A token with ``alg: none`` and an empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def hmac_token(claims: dict[str, Any], secret: bytes, kid: str | None = None) -> str:
    """A token with ``alg: HS256`` signed with ``secret`` (e.g. the issuer's public key PEM: key confusion)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
