"""A local OIDC issuer for tests and benchmarks, signing tokens the way Chainguard signs webhook deliveries.

It serves ``/.well-known/openid-configuration`` and a JWKS over real HTTP on loopback, holds real RSA-2048
keys, and mints RS256 tokens ``{iss, iat, exp, sub: "webhook:<group>", aud: ["customer"], webhook: {digest}}``
bound to a request body, as Chainguard's SDK tests do. Keys can be rotated, published without ``kid``, and
the issuer can be made unavailable; it counts the requests it serves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

DEFAULT_GROUP = "45a0c61ea6fd977f050c5fb9ac06a69eed764595"
OMIT = object()
"""Pass as a claim override to leave that claim out of the token."""


@dataclass(frozen=True)
class SigningKey:
    """An RSA-2048 key pair and the ``kid`` it is published under (``None``: no kid at all)."""

    private_key: rsa.RSAPrivateKey
    kid: str | None

    @classmethod
    def generate(cls, kid: str | None) -> SigningKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), kid)

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK, with ``kid`` only if it has one."""
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(use="sig", alg="RS256")
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def body_digest(body: bytes) -> str:
    """The ``webhook.digest`` claim for ``body``."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


class LocalIssuer:
    """An OIDC issuer on ``http://127.0.0.1:<port>``; use as a context manager.

    ``issuer.token(body)`` mints a valid token for ``body``; keyword overrides replace claims
    (``OMIT`` removes one). ``rotate()`` publishes a new key. ``available = False`` makes discovery and
    JWKS answer 503.
    """

    def __init__(self, kid: str | None = "test-key-1") -> None:
        self.signing_key = SigningKey.generate(kid)
        self.published: list[SigningKey] = [self.signing_key]
        self.available = True
        self.discovery_requests = 0
        self.jwks_requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The issuer URL (the ``iss`` of its tokens and ``CHAINGUARD_ISSUER`` for the receiver)."""
        assert self._server is not None, "issuer not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalIssuer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="local-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rotate(self, kid: str | None = "test-key-2", keep_old: bool = False) -> SigningKey:
        """Sign with a new key from now on and publish it (with the old one too if ``keep_old``)."""
        new_key = SigningKey.generate(kid)
        with self._lock:
            self.published = [*self.published, new_key] if keep_old else [new_key]
            self.signing_key = new_key
        return new_key

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk() for key in self.published]}

    def claims(self, body: bytes, group: str = DEFAULT_GROUP, **overrides: Any) -> dict[str, Any]:
        """The claims Chainguard puts in a delivery token for ``body``, with ``overrides`` applied."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "iat": now,
            "exp": now + 300,
            "sub": f"webhook:{group}",
            "aud": ["customer"],
            "webhook": {"digest": body_digest(body)},
            # Each delivery attempt gets its own token, even for equal bodies in the same second: the receiver
            # binds a token to the first event it authorized.
            "jti": uuid.uuid4().hex,
        }
        for name, value in overrides.items():
            if value is OMIT:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def token(
        self,
        body: bytes,
        group: str = DEFAULT_GROUP,
        *,
        key: SigningKey | None = None,
        headers: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> str:
        """An RS256 token for ``body`` signed with the current key (or ``key``)."""
        key = key or self.signing_key
        jws_headers = {"kid": key.kid} if key.kid is not None else {}
        jws_headers.update(headers or {})
        return jwt.encode(
            self.claims(body, group, **overrides), key.private_key, algorithm="RS256", headers=jws_headers
        )


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


def _handler_for(issuer: LocalIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/.well-known/openid-configuration":
                issuer.discovery_requests += 1
                document: dict[str, Any] = {
                    "issuer": issuer.url,
                    "jwks_uri": f"{issuer.url}/jwks",
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            elif self.path == "/jwks":
                issuer.jwks_requests += 1
                document = issuer.jwks()
            else:
                self.send_error(404)
                return
            if not issuer.available:
                self.send_error(503)
                return
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
